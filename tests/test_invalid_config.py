"""Hostile config values fail in one line naming the key, before any model is loaded.

The full list runs in process (compose + ``runner.train`` with the model loader replaced by a
tripwire); a few representative cases run the real CLIs in a subprocess (exit code 2, one
``error:`` line, no traceback, no model loaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_train import CONF, ROOT, compose_train

from smfexp.data.sources import DataUnavailableError

# (overrides, text the one-line message must contain: the key to change)
TRAIN_CASES: list[tuple[list[str], str]] = [
    (["method.lr=0"], "method.lr"),
    (["method.lr=-1e-3"], "method.lr"),
    (["method.lr=fast"], "method.lr"),
    (["data.batch_size=0"], "data.batch_size"),
    (["method.grad_accum=0"], "method.grad_accum"),
    (["data.epochs=-1"], "data.epochs"),
    (["+method.lrr=1"], "method.lrr is not an argument of SparseMemoryFinetune; valid: background"),
    (["method=lora", "selector=kl"], "applies to method=smf only"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["checkpoint_every_minutes=-5"], "checkpoint_every_minutes"),
    (["checkpoint_every_n_steps=-2"], "checkpoint_every_n_steps"),
    (["method=smf", "method.log_selection_every=0"], "method.log_selection_every"),
    (["eval.limit=-1"], "eval.limit"),
    (["eval.limit=0"], "eval.limit"),
    (["eval.limit=lots"], "eval.limit"),
    (["eval.limits.wikitext=-5"], "eval.limits"),
    (["eval.batch_size=0"], "eval.batch_size"),
    (["eval.max_length=1"], "eval.max_length"),
    (["eval.protocol=nope"], "harness"),  # lists the valid choices
    (["eval.precision=fp8"], "bf16"),
    (["eval.probes=[medmcqa,nope]"], "valid: ['medmcqa'"),
    (["+eval.limt=3"], "eval.limt is not a field of EvalConfig; valid: batch_size,"),
    (["eval.probes=[triviaqa]", "eval.stream_probes=[retention]"], "add them there"),
    (["data.overlong=explode"], "data.overlong"),
    (["data.overlong=explode"], "truncate"),
    (["data.loss_on=nope"], "data.loss_on"),
    (["data.max_length=0"], "data.max_length"),
    (["data.max_bad_fraction=2"], "data.max_bad_fraction"),
    (["paths.data_dir=/nonexistent/smfexp-data"], "paths.data_dir"),
    (["model.source=nope"], "model.source"),
    (["method=smf", "method.top_t=0"], "method.top_t"),
    (["method=smf", "method.top_t=-8"], "method.top_t"),
    (["method=smf", "method.selector=nope"], "kl"),
    (["method=smf", "memory.knn=2000"], "memory.knn"),
    (["method=smf", "memory.n_keys=0"], "memory.n_keys"),
    (["method=smf", "memory.k_dim=33"], "memory.k_dim"),
    (["method=smf", "memory.mode=sideways"], "replacement"),
    (["method=smf", "memory.layers=[7]"], "memory.layers entry 7 is out of range for 4 blocks"),
    (["method=smf", "memory.layers=[-1]"], "memory.layers entry -1"),
    (["method=smf", "memory.layers=[1.5]"], "memory.layers entry 1.5"),
    (["method=smf", "memory.layers=[]"], "memory.layers"),
    (["method=smf", "+memory.n_key=8"], "memory.n_key is not a field of MemoryConfig; valid:"),
    (["+data.no_such_key=1"], "data.no_such_key is not an argument of MedMCQADataModule"),
    (["+retrofit.stepz=1"], "retrofit.stepz is not a field of RetrofitConfig; valid:"),
    (["+background.nn=1"], "background.nn is not a field of BackgroundConfig; valid:"),
    (["method=smf", "retrofit.steps=-1"], "retrofit.steps"),
    (["method=smf", "retrofit.lr=-1"], "retrofit.lr"),
    (["method=smf", "retrofit.parts=[wiki,nope]"], "retrofit.parts"),
    (["method=smf", "background.batch_size=0"], "background.batch_size"),
    (["method=smf", "background.unit=document"], "background.unit"),
    (["method=full", "method.replay_k=-1"], "method.replay_k"),
    (["method=lora", "method.replay_k=2", "method.replay_source=[wiki,nope]"],
     "method.replay_source"),
    (["method=smf", "method.replay_weight=-1"], "method.replay_weight"),
    (["method=full", "method.ewc=-1"], "method.ewc"),
    (["method=full", "method.ewc_batches=0"], "method.ewc_batches"),
    (["method=lora", "+method.ewc=1"], "method.ewc is not an argument of LoRAFinetune"),
    (["method=smf", "method.row_max_change=0"], "method.row_max_change"),
    (["method=smf", "method.count_tokens=subject"], "method.count_tokens"),
]


@pytest.fixture()
def no_model_load(monkeypatch):
    """Any model load is a test failure: validation must have stopped the run first."""

    def tripwire(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr("smfexp.runner.load_model", tripwire)
    monkeypatch.setattr("smfexp.evaluate.load_model", tripwire)
    monkeypatch.setattr("smfexp.models.loading.load_model", tripwire)


@pytest.mark.parametrize(
    ("overrides", "message"), TRAIN_CASES, ids=[f"{' '.join(o)}:{m}" for o, m in TRAIN_CASES]
)
def test_train_rejects_before_loading(overrides, message, tmp_path, data_dir, no_model_load):
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    cfg = compose_train(tmp_path, data_dir, overrides)
    with pytest.raises((ValueError, DataUnavailableError)) as err:
        train(TrainConfig.from_hydra(cfg))
    text = str(err.value)
    assert message in text and "\n" not in text
    assert not (tmp_path / "results.json").exists()


def test_valid_config_reaches_the_tripwire(tmp_path, data_dir, no_model_load):
    """Guards the harness: a config that passes validation does try to load the model."""
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    cfg = compose_train(
        tmp_path,
        data_dir,
        ["method=smf", "memory.layers=[1,3]", "memory.n_keys=16", "memory.knn=16"],
    )
    with pytest.raises(AssertionError, match="model was loaded"):
        train(TrainConfig.from_hydra(cfg))


def test_missing_data_dir_without_hub(tmp_path, data_dir, monkeypatch, no_model_load):
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    cfg = compose_train(tmp_path, data_dir, ["paths.data_dir=null"])
    monkeypatch.delenv("SMFEXP_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.setattr("smfexp.run_config.hub_reachable", lambda *a, **k: False)
    with pytest.raises(DataUnavailableError, match=r"paths\.data_dir") as err:
        train(TrainConfig.from_hydra(cfg))
    assert "\n" not in str(err.value)


# (overrides, the unknown key, a key the one-line message must offer instead)
UNKNOWN_KEYS = [
    (["data=triviaqa_facts", "+data.eval_size=8"], "data.eval_size", "n_facts"),
    (["data=facts", "+data.nfacts=8"], "data.nfacts", "n_facts"),
    (["data=medmcqa", "+data.n_facts=8"], "data.n_facts", "eval_size"),
    (["+memory.nkeys=8"], "memory.nkeys", "n_keys"),
    (["+retrofit.step=3"], "retrofit.step", "steps"),
    (["+background.units=batch"], "background.units", "unit"),
    (["+eval.probe=[triviaqa]"], "eval.probe", "probes"),
]


@pytest.mark.parametrize(("overrides", "key", "offered"), UNKNOWN_KEYS,
                         ids=[k for _, k, _ in UNKNOWN_KEYS])
def test_unknown_group_key_is_one_line_listing_valid_keys(overrides, key, offered, data_dir):
    """Any method: a typo in a class-backed group is named with what it could have been."""
    from smfexp.run_config import TrainConfig

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train",
                      overrides=["model=tiny", f"paths.data_dir={data_dir}", *overrides])
        cfg.paths.output_dir = "out"
    with pytest.raises(ValueError) as err:
        TrainConfig.from_hydra(cfg)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{key} is not")
    valid = text.split("valid: ")[1].split(", ")
    assert offered in valid and key.split(".")[1] not in valid


def test_shipped_configs_use_only_known_keys(data_dir):
    """Every option of every group, experiments and searches included, reads as its typed
    config (model included)."""
    from smfexp.run_config import EvaluateConfig, RetrofitRunConfig, TrainConfig

    groups = ["model", "data", "memory", "retrofit", "background", "eval", "method",
              "experiment", "hparams_search"]
    options = [f"{g}={p.stem}" for g in groups for p in sorted((CONF / g).glob("*.yaml"))]
    fixed = [f"paths.data_dir={data_dir}", "paths.output_dir=out"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in options:
            model = [] if option.startswith("model=") else ["model=tiny"]
            TrainConfig.from_hydra(compose(config_name="train",
                                           overrides=[option, *model, *fixed]))
        RetrofitRunConfig.from_hydra(compose(config_name="retrofit", overrides=[
            "model=tiny", f"paths.data_dir={data_dir}", "paths.output_dir=out"]))
        EvaluateConfig.from_hydra(compose(config_name="evaluate", overrides=[
            "model=tiny", f"eval.data_dir={data_dir}"]))


def _compose(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=["model=tiny", *overrides])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["memory.layers=[4]"], "memory.layers"),
        (["memory.knn=200"], "memory.knn"),
        (["retrofit.steps=-1"], "retrofit.steps"),
        (["retrofit.max_length=-1"], "retrofit.max_length"),
        (["retrofit.parts=[nope]"], "retrofit.parts"),
        (["+retrofit.stepz=3"], "retrofit.stepz is not a field of RetrofitConfig"),
        (["+memory.nkeys=8"], "memory.nkeys is not a field of MemoryConfig"),
        (["paths.data_dir=/nonexistent/smfexp-data"], "paths.data_dir"),
    ],
)
def test_retrofit_rejects_before_loading(overrides, message):
    from smfexp.run_config import RetrofitRunConfig

    with pytest.raises((ValueError, DataUnavailableError), match=message.replace(".", r"\.")):
        RetrofitRunConfig.from_hydra(_compose("retrofit", [*overrides, "paths.output_dir=out"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.limit=-1"], "eval.limit"),
        (["eval.protocol=nope"], "harness"),
        (["eval.probes=[nope]"], "unknown eval probe"),
        (["eval.data_dir=/nonexistent/smfexp-data"], "eval.data_dir"),
        (["+eval.limt=3"], "eval.limt is not a field of EvalConfig"),
        (["checkpoint=/nonexistent/run"], "checkpoint"),
    ],
)
def test_evaluate_rejects_before_loading(overrides, message, tmp_path, no_model_load):
    from smfexp.evaluate import run

    with pytest.raises((ValueError, DataUnavailableError, FileNotFoundError)) as err:
        run(_compose("evaluate", overrides), tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "eval.json").exists()


# --------------------------------------------------------------------------- real CLIs
def _cli(
    module: str,
    args: list[str],
    tmp_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python -m module`` with an empty cache: a model load would create ``models/``."""
    run_dir = tmp_path / "run"
    base = {k: v for k, v in os.environ.items() if k != "SMFEXP_DATA_DIR"}
    env = {
        **base,
        "SMFEXP_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT / "src"),
        **(env or {}),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=180,
    )
    return proc, time.perf_counter() - t0


# the tiny model's tokenizer comes from this package: were the model loaded, the run would fail
# with a different message naming it
TRIPWIRE = "model.tokenizer_from.package=smfexp_tripwire_not_installed"


def _assert_one_line_error(proc: subprocess.CompletedProcess, key: str, tmp_path: Path) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert key in errors[0] and "tripwire" not in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache" / "models").exists()  # nothing was converted or loaded
    return errors[0]


@pytest.mark.parametrize(("bad", "key"), [
    (["method=smf", "method.top_t=0"], "method.top_t"),
    (["+data.no_such_key=1"], "data.no_such_key is not an argument of FactsDataModule"),
])
def test_train_cli_exits_2_in_one_line(bad, key, tmp_path, data_dir):
    args = ["model=tiny", "logger=csv", TRIPWIRE, *bad]
    proc, seconds = _cli("smfexp.train", args, tmp_path, env={"SMFEXP_DATA_DIR": str(data_dir)})
    _assert_one_line_error(proc, key, tmp_path)
    assert seconds < 60
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and key in results["error"]


def test_train_cli_missing_data_dir_without_hub(tmp_path):
    elsewhere = tmp_path / "elsewhere"  # no ./data here, no $SMFEXP_DATA_DIR, hub offline
    elsewhere.mkdir()
    proc, seconds = _cli(
        "smfexp.train", ["model=tiny", "logger=csv", TRIPWIRE], tmp_path, cwd=elsewhere
    )
    line = _assert_one_line_error(proc, "paths.data_dir", tmp_path)
    assert "unreachable" in line and seconds < 60


@pytest.mark.parametrize(
    ("module", "bad", "named"),
    [
        ("smfexp.retrofit", "memory.layers=[9]", "memory.layers entry 9"),
        ("smfexp.evaluate", "eval.protocol=nope", "eval.protocol"),
    ],
)
def test_retrofit_and_evaluate_cli_exit_2_in_one_line(module, bad, named, tmp_path, data_dir):
    proc, seconds = _cli(
        module, ["model=tiny", TRIPWIRE, bad], tmp_path, env={"SMFEXP_DATA_DIR": str(data_dir)}
    )
    _assert_one_line_error(proc, named, tmp_path)
    assert seconds < 60


@pytest.mark.parametrize(
    ("module", "group", "valid"),
    [
        ("smfexp.train", "method", ["full", "lora", "smf"]),
        ("smfexp.train", "selector", ["all", "kl", "random", "tfidf"]),
        ("smfexp.train", "data", ["medmcqa", "triviaqa_facts"]),
        ("smfexp.train", "model", ["smollm2-135m", "tiny"]),
    ],
)
def test_unknown_group_choice_lists_valid_options(module, group, valid, tmp_path):
    proc, seconds = _cli(module, [f"{group}=nope"], tmp_path)
    assert proc.returncode != 0 and seconds < 30
    assert f"Could not find '{group}/nope'" in proc.stderr
    assert f"Available options in '{group}'" in proc.stderr
    listed = proc.stderr.split(f"Available options in '{group}'")[1]
    assert all(f"\t{option}\n" in listed for option in valid), proc.stderr
