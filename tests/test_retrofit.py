"""Retrofit (stage 1): trains only memory parameters, lowers held-out loss, is cached."""

from __future__ import annotations

import torch


def test_retrofit_lowers_heldout_loss_and_is_reused(tmp_path, monkeypatch, data_dir):
    from smfexp.memory import memory_blocks
    from smfexp.models.loading import ModelSpec, load_model
    from smfexp.stages.retrofit import ensure_retrofit
    from smfexp.utils.io import cache_root

    models = cache_root() / "models"
    monkeypatch.setenv("SMFEXP_CACHE", str(tmp_path))
    if models.exists():
        (tmp_path / "models").symlink_to(models)
    spec = {"name": "tiny", "source": "tiny"}
    memory = {"layers": [1, 2], "n_keys": 16, "knn": 4, "k_dim": 32, "heads": 2}
    retro = {"steps": 30, "lr": 1e-2, "batch_size": 4, "max_length": 64, "warmup_steps": 0,
             "parts": ["wiki"], "heldout_docs": 4, "heldout_batches": 2, "seed": 0,
             "precision": "32-true"}
    model, tok = load_model(ModelSpec(**spec))
    backbone = {n: p.detach().clone() for n, p in model.named_parameters()}
    directory, report = ensure_retrofit(model, tok, spec, memory, retro, data_dir=str(data_dir),
                                        progress=False)
    losses = report["heldout_loss"]
    # gate 0.01 x a random memory barely moves the model before training
    assert abs(losses["attached_untrained"] - losses["base_model"]) < 1e-2
    assert losses["retrofitted"] < losses["base_model"]
    for name, p in model.named_parameters():  # the backbone is frozen
        if ".memory." not in name and not name.endswith(".gate"):
            key = name.replace("mlp.mlp.", "mlp.")
            assert torch.equal(p, backbone[key]), name
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if ".memory." in n}

    again, _ = load_model(ModelSpec(**spec))
    directory2, report2 = ensure_retrofit(again, tok, spec, memory, retro,
                                          data_dir=str(data_dir), progress=False)
    assert directory2 == directory and report2 == report
    assert len(memory_blocks(again)) == 2
    for n, p in again.named_parameters():
        if n in trained:
            assert torch.equal(p, trained[n]), n
