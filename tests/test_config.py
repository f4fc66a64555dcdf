"""Config composition: every option of every group composes, and the values users sweep resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "data", "method", "selector", "memory", "eval", "trainer", "logger",
          "callbacks", "retrofit", "experiment", "hparams_search", "debug"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("group,option",
                         [(g, o) for g in GROUPS for o in _options(g)] or [("model", "tiny")])
def test_every_group_option_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    # resolve everything except hydra runtime interpolations (not set outside a run)
    cfg.paths.output_dir = "/tmp/x"
    for key in cfg:
        if key != "hydra" and OmegaConf.is_config(cfg[key]):
            OmegaConf.resolve(cfg[key])


def test_method_configs_are_exactly_constructor_arguments():
    import hydra

    from smfexp.run_config import constructor_args

    for method in _options("method"):
        cfg = _compose([f"method={method}"])
        cls = hydra.utils.get_class(cfg.method._target_)
        keys = set(cfg.method) - {"_target_"}
        assert keys <= set(constructor_args(cls)), (method, keys - set(constructor_args(cls)))
        for key in ("lr", "grad_accum", "grad_clip", "warmup_steps", "schedule"):
            assert key in keys, f"method/{method}.yaml lacks {key}"
    # the selector group is short for method.selector
    assert _compose(["method=smf", "selector=kl"]).method.selector == "kl"
    assert _compose(["method=smf_kl"]).method.selector == "kl"


@pytest.mark.parametrize("method", ["smf", "lora", "full"])
def test_training_budget_comes_from_the_data_unless_overridden(method):
    """A MedMCQA finetune accumulates, warms up and decays; a fact stream takes one fact per
    optimizer step, its lr decaying to 0 over the stream (lower forgetting at 1000 facts)."""
    medmcqa = _compose([f"method={method}", "data=medmcqa"])
    assert medmcqa.trainer.max_epochs == 1 and medmcqa.method.grad_accum == 2
    assert (medmcqa.method.warmup_steps, medmcqa.method.schedule) == (100, "cosine")
    facts = _compose([f"method={method}", "data=triviaqa_facts"])
    assert facts.data.epochs == facts.trainer.max_epochs == 1
    assert facts.method.grad_accum == 1
    assert (facts.method.warmup_steps, facts.method.schedule) == (0, "linear")
    assert facts.data.batch_size == facts.data.phrasings_per_step
    overridden = _compose([f"method={method}", "data=triviaqa_facts", "data.epochs=2",
                           "method.grad_accum=4"])
    assert overridden.trainer.max_epochs == 2 and overridden.method.grad_accum == 4


def test_unknown_option_lists_valid_ones():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        _compose(["method=sft"])
    assert "lora" in str(err.value) and "full" in str(err.value)


def test_data_modules_instantiate(tokenizer, data_dir):
    import hydra

    for option in _options("data"):
        cfg = _compose([f"data={option}", f"paths.data_dir={data_dir}"])
        dm = hydra.utils.instantiate(cfg.data, tokenizer=tokenizer, _convert_="all")
        assert dm.batch_size == cfg.data.batch_size


def test_help_names_every_lever_and_baseline_key():
    """`python -m smfexp.train --help` shows one method's keys; its header must name the
    levers of the others (replay, EWC, the row bound), or a user never finds them."""
    header = str(_compose([]).hydra.help.header)
    levers = {"row_max_change", "count_tokens", "written_weight", "replay_k", "replay_weight",
              "replay_length", "replay_source", "replay_seed", "l2_to_base", "ewc",
              "ewc_batches"}
    for method in ("smf", "lora", "full"):
        keys = set(OmegaConf.load(CONF / "method" / f"{method}.yaml"))
        for key in sorted(keys & levers):
            assert key in header, f"{method}: method.{key} is not in --help"


@pytest.mark.parametrize("experiment,run_dir", [
    ("scale_smf", "smf/n1000/k512_t1024_lr300.0_linear/s0"),          # the grid's protocol
    ("scale_smf_skip", "smf/n1000/k512_t1024_lr150_linear_learned0.5_spf4/s0"),  # on 262K
    ("scale_smf_skip memory.n_keys=1024",  # the defaults of python -m smfexp.train
     "smf/n1000/k1024_t1024_lr150_linear_learned0.5_spf4/s0"),
])
def test_committed_scale_runs_keep_their_directory_and_key(experiment, run_dir):
    """`make scale` skips finished jobs only when today's config composes to the committed
    run's directory and run key: moving a default must not rerun (or overwrite) hours of runs."""
    import json

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from smfexp.checkpointing import run_key

    cfg = _compose([f"experiment={experiment.split()[0]}", *experiment.split()[1:], "seed=0"])
    HydraConfig.instance().set_config(cfg)
    assert cfg.hydra.sweep.subdir == run_dir
    with open_dict(cfg):
        del cfg["hydra"]
    results = CONF.parent / "results" / "scale" / run_dir / "results.json"
    committed = json.loads(results.read_text())
    assert run_key(OmegaConf.to_container(cfg, resolve=True)) == committed["run_key"]
