"""``python -m smfexp.evaluate checkpoint=RUN_DIR``: base vs checkpoint on the same rows, one
failed probe never costs the others' scores, and what cannot run fails before any model loads.

The checkpoint is a real run: ``experiment=smoke method=smf`` (2 steps on the tiny model),
which saves the memory rows it changed under ``trained/`` on top of its cached retrofit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from smfexp.tasks import retention

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _compose(config: str, overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


@pytest.fixture(scope="module")
def smf_run(tmp_path_factory, data_dir) -> Path:
    """A finished SMF smoke run with trained/ and its .hydra/config.yaml (as the CLI leaves
    it); its retrofit goes to the session's test cache (test_train.py's)."""
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train
    from smfexp.utils.io import cache_root

    cache = tmp_path_factory.getbasetemp() / "smfexp-cache"
    cache.mkdir(exist_ok=True)
    if not (cache / "models").exists() and (cache_root() / "models").exists():
        (cache / "models").symlink_to(cache_root() / "models")
    run = tmp_path_factory.mktemp("smf-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMFEXP_CACHE", str(cache))
        cfg = _compose("train", ["experiment=smoke", "method=smf", "logger=csv",
                                 "eval.probes=[]", "data.eval_size=4", "eval.limit=2",
                                 f"paths.data_dir={data_dir}"])
        cfg.paths.output_dir = str(run)
        train(TrainConfig.from_hydra(cfg))
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    assert (run / "trained" / "memory" / "memory.safetensors").is_file()
    return run


def _eval_cfg(data_dir: Path, probes: str, *extra: str) -> Any:
    return _compose("evaluate", [
        "model=tiny", "eval=facts", f"eval.probes={probes}", "eval.limit=4",
        "eval.limits.wikitext=1", "eval.limits.retention=4", "eval.document_words=200",
        "eval.max_gen_toks=4", "eval.progress=false", f"eval.data_dir={data_dir}", *extra])


@pytest.fixture()
def scored(monkeypatch) -> list[tuple[str, Any]]:
    """Every (probe, model) the evaluation scores, in order (the real scorer still runs)."""
    import smfexp.evaluate as evaluate

    calls: list[tuple[str, Any]] = []
    real = evaluate.score_probe_samples

    def spy(probe: str, model: Any, *args: Any) -> Any:
        calls.append((probe, model))
        return real(probe, model, *args)

    monkeypatch.setattr(evaluate, "score_probe_samples", spy)
    return calls


# --------------------------------------------------------------------------- base vs checkpoint
def test_retention_rows_selected_on_base_and_scored_on_both(smf_run, data_dir, tmp_path,
                                                            monkeypatch, scored):
    """A random tiny model knows no word, so retention's selection is replaced by one that
    keeps every word start: what matters is on which model it runs and what is scored."""
    import smfexp.evaluate as evaluate

    selected_on: list[Any] = []

    def know_every_word(probe: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                        cfg: Any) -> list[dict[str, Any]]:
        selected_on.append(model)
        if probe != "retention":
            return rows
        inputs = retention._inputs(tokenizer, rows)
        return [{**row, "positions": [t for t in range(len(ids) - 1)
                                      if retention._word_start(tokenizer, ids[t + 1])]}
                for row, ids in zip(rows, inputs, strict=True)]

    monkeypatch.setattr(evaluate, "select_probe_rows", know_every_word)
    out = evaluate.run(_eval_cfg(data_dir, "[retention]", f"checkpoint={smf_run}"), tmp_path)

    (_, base), (_, trained) = scored
    assert [p for p, _ in scored] == ["retention", "retention"]
    assert selected_on == [base] and trained is not base  # rows chosen on the model before
    saved = json.loads((tmp_path / "eval.json").read_text())
    entry = saved["retention"]
    assert set(entry) == {"before", "after", "delta", "rel_delta_pct", "paired_ci"}
    assert entry["before"]["n"] == entry["after"]["n"] == 4  # the same paragraphs, both times
    assert entry["delta"]["logprob"] == pytest.approx(
        entry["after"]["logprob"] - entry["before"]["logprob"])
    assert entry["delta"]["logprob"] != 0  # the checkpoint's trained rows were applied
    ci = entry["paired_ci"]["logprob"]
    assert ci["n"] == 4 and ci["delta"][0] <= entry["delta"]["logprob"] <= ci["delta"][1]
    assert "rel_delta_pct" in ci and isinstance(ci["resolved"], bool)
    meta = saved["_meta"]
    results = json.loads((smf_run / "results.json").read_text())
    assert meta["checkpoint"] == str(smf_run) and meta["checkpoint_kind"] == "memory"
    assert meta["base_model"]["memory"] == results["retrofit"]["checkpoint"]  # its retrofit
    assert meta["status"] == "ok" and meta["failed"] == []
    assert meta["protocol"] == "harness" and "retention" in meta["data_source"]
    assert out["retention"]["after"] == pytest.approx(entry["after"], nan_ok=True)


def test_base_model_is_the_model_before_training(smf_run, data_dir, tmp_path):
    """The base copy holds the retrofit's memory values; the checkpoint only differs in the
    rows the run trained."""
    from smfexp.evaluate import inspect_checkpoint, load_base, load_for_eval
    from smfexp.memory import memory_blocks
    from smfexp.run_config import EvaluateConfig

    run = EvaluateConfig.from_hydra(_eval_cfg(data_dir, "[wikitext]", f"checkpoint={smf_run}"))
    checkpoint = inspect_checkpoint(run.checkpoint, run.model)
    assert checkpoint is not None and checkpoint.run_dir == smf_run
    base, _ = load_base(run.model, checkpoint)
    trained, _ = load_for_eval(run.model, run.checkpoint)
    changed = 0
    for b, t in zip(memory_blocks(base), memory_blocks(trained), strict=True):
        rows = (b.memory.values != t.memory.values).any(dim=1)
        changed += int(rows.sum())
        assert torch.equal(b.memory.keys, t.memory.keys)  # SMF trains only value rows
    assert 0 < changed < sum(b.memory.values.shape[0] for b in memory_blocks(base))


# --------------------------------------------------------------------------- failures
def test_failed_probe_keeps_the_others_and_exits_1(data_dir, tmp_path, monkeypatch, capsys):
    import smfexp.evaluate as evaluate

    real = evaluate.score_probe_samples

    def broken_wikitext(probe: str, *args: Any) -> Any:
        if probe == "wikitext":
            raise RuntimeError("out of memory in window 3")
        return real(probe, *args)

    monkeypatch.setattr(evaluate, "score_probe_samples", broken_wikitext)
    code = evaluate.cli(_eval_cfg(data_dir, "[triviaqa,wikitext,retention]"), tmp_path)

    assert code == 1
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["wikitext"] == {"error": "RuntimeError: out of memory in window 3"}
    assert saved["triviaqa"]["n"] == 4  # scored before the failure
    assert saved["retention"]["n"] == 0  # scored after it (selected on this model: none known)
    assert saved["_meta"]["status"] == "failed" and saved["_meta"]["failed"] == ["wikitext"]
    err = capsys.readouterr().err
    assert "error: probe(s) ['wikitext'] failed" in err and "out of memory" in err


def test_crash_keeps_the_probes_scored_so_far(data_dir, tmp_path, monkeypatch):
    import smfexp.evaluate as evaluate

    real = evaluate.score_probe_samples

    def killed_at_wikitext(probe: str, *args: Any) -> Any:
        if probe == "wikitext":
            raise KeyboardInterrupt  # not a probe failure: the run stops
        return real(probe, *args)

    monkeypatch.setattr(evaluate, "score_probe_samples", killed_at_wikitext)
    with pytest.raises(KeyboardInterrupt):
        evaluate.run(_eval_cfg(data_dir, "[triviaqa,wikitext]"), tmp_path)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["triviaqa"]["n"] == 4 and "wikitext" not in saved
    assert saved["_meta"]["status"] == "running"


@pytest.fixture()
def nothing_loads(monkeypatch) -> None:
    """A model load or a scoring pass is a test failure: the request had to fail first."""
    import smfexp.evaluate as evaluate

    def tripwire(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded or scored before the request was checked")

    for name in ("load_model", "score_probe_samples", "select_probe_rows"):
        monkeypatch.setattr(evaluate, name, tripwire)


def _run_without_trained(smf_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "results.json").write_text((smf_run / "results.json").read_text())
    (run / ".hydra" / "config.yaml").write_text((smf_run / ".hydra" / "config.yaml").read_text())
    return run


def _memory_from_a_deleted_retrofit(smf_run: Path, tmp_path: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = smf_run / "trained" / "memory" / "memory.safetensors"
    with safe_open(str(source), framework="pt") as fh:
        meta = json.loads(fh.metadata()["smfexp_memory"])
    meta["values"]["untouched_from"] = str(tmp_path / "deleted-retrofit")
    target = tmp_path / "moved" / "memory"
    target.mkdir(parents=True)
    save_file(load_file(str(source)), str(target / "memory.safetensors"),
              metadata={"smfexp_memory": json.dumps(meta)})
    return target


@pytest.mark.parametrize(("case", "extra", "message"), [
    ("no trained/", [], "is a run dir without trained/"),
    ("no artifact", [], "holds no trained artifact"),
    ("retrofit gone", [], "deleted-retrofit, which no longer exists"),
    ("other model", ["model.seed=1"], "was trained on model.seed=0"),
    ("unknown probe", ["eval.probes=[wikitext,retension]"], "unknown eval probe"),
    ("missing data", ["eval.data_dir={partial}"], "medmcqa"),  # the last probe's data
])
def test_impossible_request_fails_before_loading(case, extra, message, smf_run, data_dir,
                                                 tmp_path, nothing_loads):
    from smfexp.errors import USER_ERRORS
    from smfexp.evaluate import run

    checkpoint = {
        "no trained/": lambda: _run_without_trained(smf_run, tmp_path),
        "no artifact": lambda: tmp_path / "empty",
        "retrofit gone": lambda: _memory_from_a_deleted_retrofit(smf_run, tmp_path),
    }.get(case, lambda: smf_run)()
    (tmp_path / "empty").mkdir(exist_ok=True)
    partial = tmp_path / "partial"  # wikitext (and retention, its paragraphs) only
    partial.mkdir()
    (partial / "wikitext2").symlink_to(data_dir / "wikitext2")
    extra = [e.format(partial=partial) for e in extra]
    out = tmp_path / "out"
    cfg = _eval_cfg(data_dir, "[wikitext,retention,medmcqa]", f"checkpoint={checkpoint}", *extra)
    with pytest.raises(USER_ERRORS) as err:  # the CLI prints these in one line, exits 2
        run(cfg, out)
    text = str(err.value)
    assert message in text and "\n" not in text, text
    assert not (out / "eval.json").exists()
