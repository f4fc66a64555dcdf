"""SMF on the fact stream: exact top-t updates, the lr unit, and the selection diagnostics."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from tiny_smf import MEMORY, tiny_smf

from smfexp.memory import attach_memory, memory_modules
from smfexp.methods.smf import SparseMemoryFinetune
from smfexp.smf.diagnostics import (
    SelectionDiagnostics,
    jaccard,
    read_share,
    read_weighted_norm,
    weight_on_rows,
)
from smfexp.smf.selectors import tfidf_scores, top_t


def test_diagnostics_arithmetic_matches_a_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    reads = [torch.randint(0, 50, (40,), generator=gen) for _ in range(2)]
    steps = [(0, [torch.tensor([1, 2, 3]), torch.tensor([5])]),
             (0, [torch.tensor([3, 4]), torch.tensor([6])]),  # same fact, second step
             (1, [torch.tensor([2, 9]), torch.tensor([5, 6])]),
             (2, [torch.tensor([10, 11]), torch.tensor([7])])]
    diag = SelectionDiagnostics(2, reads)
    for unit, rows in steps:
        diag.step(unit)
        for layer, r in enumerate(rows):
            diag.add(layer, r, answer_weight=0.5 * layer)
    touched = [torch.zeros(40, dtype=torch.bool) for _ in range(2)]
    for _, rows in steps:
        for layer, r in enumerate(rows):
            touched[layer][r] = True
    summary = diag.summary(touched)
    facts = {0: [{1, 2, 3, 4}, {5, 6}], 1: [{2, 9}, {5, 6}], 2: [{10, 11}, {7}]}
    for layer in range(2):
        sets = [facts[f][layer] for f in (0, 1, 2)]
        overlaps = [len(a & b) / len(a | b) for a, b in zip(sets[1:], sets[:-1], strict=True)]
        r = reads[layer].numpy()
        shares = [r[sorted(s)].sum() / r.sum() for s in sets]
        assert summary[layer]["overlap"] == pytest.approx(np.mean(overlaps))
        assert summary[layer]["fact_background_share"] == pytest.approx(np.mean(shares))
        all_rows = sorted(set().union(*sets))
        assert summary[layer]["touched_background_share"] == pytest.approx(
            r[all_rows].sum() / r.sum())
        assert summary[layer]["answer_weight_on_selected"] == pytest.approx(0.5 * layer)
    assert jaccard(torch.tensor([1, 2]), torch.tensor([2, 3])) == pytest.approx(1 / 3)
    assert read_share(torch.tensor([1, 1, 2]), torch.tensor([2])) == pytest.approx(0.5)


def test_the_change_general_text_sees_weighs_row_norms_by_background_reads() -> None:
    reads = torch.tensor([1, 1, 2, 0])
    values = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [100.0, 0.0]])
    # reads share 1/4, 1/4, 1/2, 0 on norms 5, 0, 1, 100: a row nobody reads costs nothing
    assert read_weighted_norm(reads, values) == pytest.approx(0.25 * 5 + 0.5 * 1)
    # the same change on fewer rows that general text reads more is a larger change
    spread = torch.tensor([[1.0, 0.0]] * 4)
    piled = torch.tensor([[2.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])  # same total norm
    assert read_weighted_norm(reads, piled) > read_weighted_norm(reads, spread)
    assert read_weighted_norm(torch.zeros(4), values) == 0.0


def test_answer_weight_counts_only_the_given_positions() -> None:
    indices = torch.tensor([[[0, 1], [2, 3], [0, 3]]])  # [B=1, T=3, K=2]
    weights = torch.tensor([[[0.9, 0.1], [0.5, 0.5], [0.25, 0.75]]])
    positions = torch.tensor([[False, True, True]])
    # positions 1 and 2: weight on rows {3} = 0.5 + 0.75 of 2.0
    assert weight_on_rows(indices, weights, positions, torch.tensor([3])) == pytest.approx(0.625)


def _smf_on_facts(tokenizer, data_dir, lr_horizon=None, **smf):
    return tiny_smf(tokenizer, data_dir, {"lr_horizon": lr_horizon}, **smf)


def _one_step(module, data) -> list[torch.Tensor]:
    """Fit one optimizer step; return each layer's counts of that step (independent hook)."""
    batch = next(iter(data.train_dataloader()))
    counts = [torch.zeros(m.n_slots, dtype=torch.int64) for m in module.memories]
    hooks = []
    for layer, memory in enumerate(module.memories):
        def record(mod, args, out, layer=layer):
            mask = batch["attention_mask"].bool()
            counts[layer] += torch.bincount(mod.last_indices[mask].reshape(-1),
                                            minlength=mod.n_slots)
        hooks.append(memory.register_forward_hook(record))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    for h in hooks:
        h.remove()
    return counts


def test_tfidf_run_updates_exactly_the_top_t_rows_of_the_steps_counts(tokenizer, data_dir):
    module, data, stats = _smf_on_facts(tokenizer, data_dir, selector="tfidf", top_t=6, lr=5.0)
    before = [m.values.detach().clone() for m in module.memories]
    counts = _one_step(module, data)
    for layer, memory in enumerate(module.memories):
        changed = (memory.values.detach() != before[layer]).any(dim=1).nonzero().squeeze(1)
        expected = top_t(*tfidf_scores(counts[layer], stats.layer(layer)), 6).indices
        assert torch.equal(changed, expected), layer
    diagnostics = module.extra_results()["smf"]["diagnostics"]
    assert len(diagnostics) == 2
    assert all(0 <= d["touched_background_share"] <= 1 for d in diagnostics)


def test_row_rms_step_has_the_configured_size(tokenizer, data_dir):
    module, data, _ = _smf_on_facts(tokenizer, data_dir, selector="tfidf", top_t=6, lr=0.5,
                                    lr_unit="row_rms")
    before = [m.values.detach().clone() for m in module.memories]
    _one_step(module, data)
    for layer, memory in enumerate(module.memories):
        delta = memory.values.detach() - before[layer]
        moved = delta[(delta != 0).any(dim=1)]
        assert moved.shape[0] == 6
        assert moved.pow(2).mean().sqrt().item() == pytest.approx(0.5 * memory.v_dim ** -0.5,
                                                                  rel=1e-4)


def test_row_rms_needs_sgd(tiny_model, tokenizer):
    attach_memory(tiny_model, MEMORY)
    with pytest.raises(ValueError, match=r"lr_unit=row_rms needs method\.optimizer=sgd"):
        SparseMemoryFinetune(tiny_model, tokenizer, selector="random", lr_unit="row_rms",
                             optimizer="adam")


@pytest.mark.parametrize("value_init", ["normal", "zero"])
def test_saved_run_stores_only_the_changed_rows_and_reloads_exactly(tokenizer, data_dir,
                                                                    tmp_path, value_init):
    from safetensors import safe_open

    from smfexp.memory import save_memory
    from smfexp.models.loading import ModelSpec, load_model
    from smfexp.models.trained import load_trained

    module, data, _ = _smf_on_facts(tokenizer, data_dir, selector="tfidf", top_t=6, lr=5.0)
    if value_init == "zero":
        with torch.no_grad():
            for m in module.memories:
                m.values.zero_()
        module.model._smf_memory_config.value_init = "zero"
    else:  # the run started from a saved retrofit: the other rows come from there
        module.base_checkpoint = str(save_memory(module.model, tmp_path / "retrofit"))
    _one_step(module, data)
    saved = module.save_trained(tmp_path / "run" / "trained")
    with safe_open(str(saved / "memory.safetensors"), framework="pt") as fh:
        names = list(fh.keys())  # a safetensors handle, not a dict
        rows = {k: fh.get_tensor(k) for k in names if k.endswith("values.rows")}
        assert not [k for k in names if k.endswith("memory.values")]
    assert [int(r.numel()) for r in rows.values()] == [6, 6]
    base, _ = load_model(ModelSpec(name="tiny", source="tiny"))
    reloaded, kind = load_trained(base, tmp_path / "run")
    assert kind == "memory"
    for mine, theirs in zip(module.memories, memory_modules(reloaded), strict=True):
        assert torch.equal(mine.values, theirs.values)
        assert torch.equal(mine.query_proj.weight, theirs.query_proj.weight)


def test_smf_decays_its_lr_over_the_horizon_stream(tokenizer, data_dir):
    """A run of 3 facts of a stream whose lr decays over 12 spans 4x its steps: this one-step
    run (max_steps=1) decays over 4 steps, so after its step the lr is 3/4 of the peak."""
    module, data, _ = _smf_on_facts(tokenizer, data_dir, lr_horizon=12, selector="tfidf",
                                    top_t=6, lr=5.0, schedule="linear")
    _one_step(module, data)
    assert module.optimizers().param_groups[0]["lr"] == pytest.approx(5.0 * 3 / 4)
