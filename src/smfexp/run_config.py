"""One run's config, read once at its entry point: the composed Hydra config as typed pieces.

Each group with settings of its own is a dataclass that checks itself when built
(:func:`smfexp.utils.configs.from_node`: an unknown key is a one-line error naming the valid
ones); ``data`` and ``method`` name the class they configure and are exactly its constructor
arguments, checked by that class (``check_arguments``) before anything heavy runs. What spans
groups - memory layers against the model's depth, probe names, where the data is - is checked
here. A typo or an impossible value so costs a second and one line, never a model load, and
everything below the entry point receives typed pieces instead of the whole config.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from smfexp.checkpointing import run_key
from smfexp.data.sources import DataUnavailableError, resolve_data_dir
from smfexp.eval import EvalConfig
from smfexp.memory import MemoryConfig
from smfexp.methods.base import StageInputs
from smfexp.models.loading import ModelSpec, model_depth
from smfexp.stages.background import BackgroundConfig
from smfexp.stages.retrofit import RetrofitConfig
from smfexp.tasks import check_probes
from smfexp.utils.configs import plain, require_int, require_number, unknown_key_error
from smfexp.utils.net import hub_reachable


# --------------------------------------------------------------------------- class groups
def constructor_args(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up to the base that
    takes none (e.g. SparseMemoryFinetune -> FinetuneModule); model/tokenizer excluded."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in ("self", "model", "tokenizer") and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _import(target: Any, group: str) -> type:
    import hydra

    try:
        return hydra.utils.get_class(str(target))
    except Exception as err:
        raise ValueError(f"{group}._target_={target!r} cannot be imported ({err})") from None


@dataclass(frozen=True)
class Target:
    """A group that names the class it configures (``data``, ``method``): the class and
    exactly the keyword arguments of its constructor."""

    cls: type
    kwargs: dict[str, Any]

    @classmethod
    def from_node(cls, node: Any, group: str) -> Target:
        settings = plain(node)
        target = _import(settings.pop("_target_", None), group)
        valid = constructor_args(target)
        for key in settings:
            if key in valid:
                continue
            if group == "method" and key == "selector":
                raise ValueError(f"selector=/method.selector applies to method=smf only; "
                                 f"{target.__name__} has no selector")
            raise unknown_key_error(group, key, valid, f"an argument of {target.__name__}")
        check = getattr(target, "check_arguments", None)
        if callable(check):
            check(settings)
        return cls(target, settings)

    def build(self, **extra: Any) -> Any:
        """The instance, with what only exists at run time (model, tokenizer, stages)."""
        return self.cls(**self.kwargs, **extra)


# --------------------------------------------------------------------------- shared checks
def check_data_dir(configured: Any, key: str) -> None:
    """A configured folder must exist; no folder at all needs the hub."""
    if resolve_data_dir(configured, key) is None and not hub_reachable():
        raise DataUnavailableError(
            f"no offline data directory (set {key}=... or $SMFEXP_DATA_DIR, or run "
            "`make setup` to link ../shared/data) and the Hugging Face hub is unreachable")


def check_memory(memory: MemoryConfig, spec: ModelSpec) -> None:
    """Memory layer indices against the model's depth, when it is known without loading."""
    depth = model_depth(spec)
    memory.validate(depth if depth is not None else 10**6)


def eval_config(node: Any) -> EvalConfig:
    """The ``eval`` group, its probe names looked up in the registry."""
    return check_probes(EvalConfig.from_config(node))


@dataclass(frozen=True)
class Paths:
    """Where a run writes (its Hydra directory), where ``resume=auto`` looks, the data."""

    output_dir: Path
    runs_root: Path
    data_dir: str | None


# --------------------------------------------------------------------------- train
@dataclass(frozen=True)
class TrainConfig:
    """``python -m smfexp.train``: every group, typed and checked, and the run's settings."""

    model: ModelSpec
    data: Target
    method: Target
    memory: MemoryConfig
    retrofit: RetrofitConfig
    background: BackgroundConfig
    eval: EvalConfig
    trainer: dict[str, Any]   # Lightning Trainer arguments
    loggers: dict[str, dict[str, Any]]
    progress_bar: str
    paths: Paths
    seed: int
    resume: str | None
    checkpoint_every_n_steps: int     # > 0: exact steps, in place of the minutes
    checkpoint_every_minutes: float
    keep_checkpoints: bool
    skip_finished: bool
    save_trained: bool
    forgetting_penalty: float
    key: str                  # the run's computation (checkpointing.run_key)
    resolved: dict[str, Any]  # the composed config, resolved: what trackers record

    @property
    def stages(self) -> StageInputs:
        """What the method's stages (retrofit, background statistics) are built from."""
        return StageInputs(self.model, self.memory, self.retrofit, self.background,
                           self.paths.data_dir)

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> TrainConfig:
        """Read and check the composed config once; one-line errors before any model loads."""
        resolved = plain(cfg)
        model = ModelSpec.from_config(resolved["model"])
        method = Target.from_node(resolved["method"], "method")
        data = Target.from_node(resolved["data"], "data")
        memory = MemoryConfig.from_config(resolved.get("memory"))
        retrofit = RetrofitConfig.from_config(resolved.get("retrofit"))
        background = BackgroundConfig.from_config(resolved.get("background"))
        evaluation = eval_config(resolved.get("eval"))
        trainer = dict(resolved.get("trainer") or {})
        if trainer.get("max_steps", -1) not in (-1, None):
            require_int(trainer["max_steps"], "trainer.max_steps")
        progress = (resolved.get("callbacks") or {}).get("progress_bar", "tqdm")
        if progress not in ("tqdm", "none"):
            raise ValueError(f"callbacks.progress_bar={progress!r}; valid: tqdm, none")
        paths = resolved.get("paths") or {}
        if getattr(method.cls, "uses_memory", False):
            check_memory(memory, model)
        check_data_dir(paths.get("data_dir"), "paths.data_dir")
        if resolved.get("checkpoint_every_minutes"):
            require_number(resolved["checkpoint_every_minutes"], "checkpoint_every_minutes",
                           allow_zero=True)
        if resolved.get("checkpoint_every_n_steps"):
            require_int(resolved["checkpoint_every_n_steps"], "checkpoint_every_n_steps")
        if evaluation.data_dir != paths.get("data_dir"):  # set apart: check it too
            check_data_dir(evaluation.data_dir, "eval.data_dir")
        return cls(
            model=model, data=data, method=method, memory=memory, retrofit=retrofit,
            background=background, eval=evaluation, trainer=trainer,
            loggers={k: v for k, v in (resolved.get("logger") or {}).items() if v is not None},
            progress_bar=progress,
            paths=Paths(Path(paths.get("output_dir") or "."), Path(paths.get("runs_root") or "."),
                        paths.get("data_dir")),
            seed=int(resolved.get("seed", 0)),
            resume=resolved.get("resume") or resolved.get("ckpt_path"),
            checkpoint_every_n_steps=int(resolved.get("checkpoint_every_n_steps") or 0),
            checkpoint_every_minutes=float(resolved.get("checkpoint_every_minutes") or 0),
            keep_checkpoints=bool(resolved.get("keep_checkpoints", False)),
            skip_finished=bool(resolved.get("skip_finished", False)),
            save_trained=bool(resolved.get("save_trained", True)),
            forgetting_penalty=float(resolved.get("forgetting_penalty", 1.0)),
            key=run_key(resolved), resolved=resolved)


# --------------------------------------------------------------------------- retrofit
@dataclass(frozen=True)
class RetrofitRunConfig:
    """``python -m smfexp.retrofit``: the model, its memory and stage 1's budget."""

    model: ModelSpec
    memory: MemoryConfig
    retrofit: RetrofitConfig
    data_dir: str | None

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> RetrofitRunConfig:
        model = ModelSpec.from_config(cfg.model)  # the groups it reads, each resolved
        memory = MemoryConfig.from_config(cfg.get("memory"))
        check_memory(memory, model)
        data_dir = cfg.paths.get("data_dir")
        check_data_dir(data_dir, "paths.data_dir")
        return cls(model, memory, RetrofitConfig.from_config(cfg.get("retrofit")), data_dir)


# --------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvaluateConfig:
    """``python -m smfexp.evaluate``: the model, the probes, a checkpoint, the output."""

    model: ModelSpec
    eval: EvalConfig
    checkpoint: str | None
    output: str

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> EvaluateConfig:
        model = ModelSpec.from_config(cfg.model)
        evaluation = eval_config(cfg.get("eval")).resolved()
        resolved = plain({k: cfg.get(k) for k in ("checkpoint", "output")})
        checkpoint = resolved.get("checkpoint")
        if checkpoint and not Path(str(checkpoint)).expanduser().exists():
            raise FileNotFoundError(f"checkpoint={str(checkpoint)!r} does not exist")
        output = str(resolved.get("output") or "").strip()
        if not output:
            raise ValueError("output must name the file to write (e.g. output=eval.json)")
        check_data_dir(evaluation.data_dir, "eval.data_dir")
        return cls(model, evaluation, str(checkpoint) if checkpoint else None, output)

