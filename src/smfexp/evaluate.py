"""``python -m smfexp.evaluate``: score a model on the configured probes and write eval.json.

Examples::

    python -m smfexp.evaluate eval.protocol=harness eval.probes=[medmcqa] eval.limit=100
    python -m smfexp.evaluate eval=facts 'eval.probes=[wikitext,retention]' checkpoint=RUN_DIR

Without ``checkpoint`` eval.json is ``{probe: {metric: value}, _meta}``; retention selects
its rows on the model it scores. With ``checkpoint`` (a run dir, its ``trained/`` or one
artifact folder) every probe is scored on the checkpoint's base model (the model the run
started from) and on the checkpoint, on the same rows (retention's are selected on the base
model), and each probe holds what a run's results.json holds for it: ``{probe: {before,
after, delta, rel_delta_pct, paired_ci}, _meta}``.

What cannot run (an unknown probe, a checkpoint without a trained artifact, missing data)
fails before any model loads. A probe that fails while scoring is recorded as ``{probe:
{"error": "Type: message"}}`` and the others go on; eval.json is rewritten after every probe
(a crash keeps what was scored), and the command exits 1 naming the failed probes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from smfexp import __version__
from smfexp.callbacks.forgetting import deltas
from smfexp.data.sources import Rows
from smfexp.eval.base import ProbeResult
from smfexp.eval.config import EvalConfig
from smfexp.eval.encode import resolve_max_length
from smfexp.eval.paired import paired_changes
from smfexp.models.loading import ModelSpec, load_model
from smfexp.run_config import EvaluateConfig
from smfexp.tasks import load_probe_data, primary_metric, score_probe_samples, select_probe_rows
from smfexp.utils.io import atomic_write_json

log = logging.getLogger(__name__)

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
RUN_CONFIG = Path(".hydra") / "config.yaml"
ARTIFACT_DIRS = ("memory", "lora_adapter", "full")  # what save_trained writes into trained/
# model fields that make a different base model (a local folder may move between machines)
MODEL_IDENTITY = ("name", "source", "path", "gguf_file", "revision", "tiny", "seed")


# --------------------------------------------------------------------------- checkpoint
@dataclass(frozen=True)
class Checkpoint:
    """A run's trained artifact, resolved before any model loads, and where it started."""

    given: str
    kind: str  # memory | lora | full
    directory: Path
    # memory artifacts that store only the rows a run changed: the memory it started from
    # (a folder, or "zero"); None: the base model has no memory
    start_memory: str | None = None
    run_dir: Path | None = None

    def base_model(self, model_name: str) -> dict[str, Any]:
        """``_meta.base_model``: what the checkpoint's scores are compared with."""
        if self.kind == "lora":
            what = "the model without the LoRA adapter"
        elif self.kind == "full":
            what = "the model before full finetuning"
        elif self.start_memory == "zero":
            what = "the checkpoint's memory with every value row zero (where training started)"
        elif self.start_memory:
            what = "the model with the memory the run started from (its retrofit)"
        else:
            what = "the model without memory (the checkpoint stores whole memory tables)"
        return {"model": model_name, "memory": self.start_memory, "what": what}


def _run_dir(path: Path) -> Path:
    """The run dir of a checkpoint given as a run dir, its trained/ or an artifact in it."""
    if path.name in ARTIFACT_DIRS and path.parent.name == "trained":
        return path.parent.parent
    return path.parent if path.name == "trained" else path


def _require_trained(path: Path) -> None:
    """A run dir that saved nothing gets its own message (not 'no artifact found')."""
    is_run = (path / "results.json").is_file() or (path / RUN_CONFIG).is_file()
    if is_run and not (path / "trained").is_dir():
        raise FileNotFoundError(
            f"checkpoint={str(path)!r} is a run dir without trained/: the run saved no "
            f"artifact (save_trained=false, or saving failed: see its results.json); point "
            f"checkpoint= at a run that saved one")


def _start_memory(directory: Path) -> str | None:
    """Where a memory artifact's untouched rows come from; it must still exist."""
    from smfexp.memory import read_memory_meta
    from smfexp.memory.checkpoint import WEIGHTS_NAME

    values = read_memory_meta(directory).get("values") or {}
    if values.get("stored") != "rows":
        return None
    start = str(values["untouched_from"])
    if start != "zero" and not (Path(start) / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"checkpoint {directory} stores only the rows its run changed; the others come "
            f"from {start}, which no longer exists - rebuild it with the run's retrofit config "
            f"(python -m smfexp.retrofit ...), then evaluate again")
    return start


def _check_run_model(run_dir: Path, spec: ModelSpec) -> None:
    """The base model must be the one the run trained: else before/after compare nothing."""
    try:
        trained_on = ModelSpec.from_config(OmegaConf.load(run_dir / RUN_CONFIG).model)
    except Exception as err:  # an unreadable config only loses this check
        log.warning("could not read %s (%s); the model is not checked", run_dir / RUN_CONFIG,
                    err)
        return
    for name in MODEL_IDENTITY:
        if name == "path" and spec.source == "local":
            continue
        theirs, ours = getattr(trained_on, name), getattr(spec, name)
        if theirs != ours:
            raise ValueError(
                f"checkpoint {run_dir} was trained on model.{name}={theirs!r} "
                f"({run_dir / RUN_CONFIG}), not {ours!r}: evaluate it on the run's model "
                f"(model={trained_on.name}, model.{name}={theirs})")


def inspect_checkpoint(given: str | None, spec: ModelSpec) -> Checkpoint | None:
    """Resolve ``checkpoint=`` without loading a model; raise one line if it cannot run."""
    from smfexp.models.trained import _artifact

    if not given:
        return None
    path = Path(str(given)).expanduser()
    _require_trained(path)
    kind, directory = _artifact(path)
    start = _start_memory(directory) if kind == "memory" else None
    run_dir = _run_dir(path)
    if (run_dir / RUN_CONFIG).is_file():
        _check_run_model(run_dir, spec)
    else:
        run_dir = None
    return Checkpoint(str(given), kind, directory, start, run_dir)


# --------------------------------------------------------------------------- models
def load_for_eval(spec: ModelSpec, checkpoint: str | None) -> tuple[Any, Any]:
    """The model of ``spec``, with ``checkpoint`` (a run's trained artifact) applied."""
    model, tokenizer = load_model(spec)
    if checkpoint:
        from smfexp.models.trained import load_trained

        model, _ = load_trained(model, checkpoint)
    return model, tokenizer


def load_base(spec: ModelSpec, checkpoint: Checkpoint) -> tuple[Any, Any]:
    """The model the checkpoint's run started from: a separate copy, so neither the adapter
    nor the trained rows can leak into the before scores."""
    from smfexp.memory import load_memory, memory_blocks

    model, tokenizer = load_model(spec)
    if checkpoint.start_memory == "zero":  # the trained rows on zero: zero them all again
        load_memory(model, checkpoint.directory)
        with torch.no_grad():
            for block in memory_blocks(model):
                block.memory.values.zero_()
    elif checkpoint.start_memory:
        load_memory(model, checkpoint.start_memory)
    return model, tokenizer


# --------------------------------------------------------------------------- scoring
def score_alone(probe: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                ecfg: EvalConfig) -> dict[str, Any]:
    """``{metric: value}``; a selecting probe (retention) selects on the model it scores."""
    rows = select_probe_rows(probe, model, tokenizer, rows, ecfg)
    return score_probe_samples(probe, model, tokenizer, rows, ecfg).metrics


def compare(probe: str, before: ProbeResult, after: ProbeResult) -> dict[str, Any]:
    """One probe's entry in the keys of a run's results.json."""
    change = deltas({probe: before.metrics}, {probe: after.metrics})
    paired = paired_changes({probe: before.items}, {probe: after.items})
    return {"before": before.metrics, "after": after.metrics,
            "delta": change["delta"].get(probe, {}),
            "rel_delta_pct": change["rel_delta_pct"].get(probe, {}),
            "paired_ci": paired.get(probe)}


def score_pair(probe: str, base: Any, trained: Any, tokenizer: Any, rows: list[dict[str, Any]],
               ecfg: EvalConfig) -> dict[str, Any]:
    """Rows selected on the base model (the model before training), scored on both."""
    rows = select_probe_rows(probe, base, tokenizer, rows, ecfg)
    before = score_probe_samples(probe, base, tokenizer, rows, ecfg)
    after = score_probe_samples(probe, trained, tokenizer, rows, ecfg)
    return compare(probe, before, after)


def guarded(probe: str, score: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``score(probe, *args)``, or ``{"error": ...}``: one probe's failure keeps the others'
    scores."""
    try:
        return score(probe, *args)
    except Exception as err:
        log.exception("probe %s failed; the other probes go on", probe)
        return {"error": f"{type(err).__name__}: {err}"}


# --------------------------------------------------------------------------- output
def _number(value: Any, width: int, sign: str = "", digits: int = 6) -> str:
    if not isinstance(value, int | float):
        return f"{'-':>{width}}"
    return f"{value:>{sign}{width}.{digits}g}"


def _finite(bounds: list[float] | None) -> bool:
    return bool(bounds) and all(math.isfinite(b) for b in bounds)  # type: ignore[union-attr]


def _interval(bounds: list[float] | None) -> str:
    if not _finite(bounds):
        return f"{'-':>21}"
    assert bounds is not None
    return f"[{bounds[0]:+.4g}, {bounds[1]:+.4g}]".rjust(21)


def format_table(results: dict[str, dict[str, Any]], protocol: str) -> str:
    """A small aligned table; the primary metric of each probe is starred."""
    lines = [f"{'probe':<10} {'metric':<22} {'value':>12}", "-" * 46]
    for probe, metrics in results.items():
        if "error" in metrics:
            lines.append(f"{probe:<10} error: {metrics['error']}")
            continue
        lead = primary_metric(probe, protocol)[0]
        for name, value in metrics.items():
            star = "*" if name == lead else " "
            lines.append(f"{probe:<10} {star}{name:<21} {_number(value, 12)}")
    return "\n".join(lines)


def format_comparison(results: dict[str, dict[str, Any]], protocol: str) -> str:
    """Base vs checkpoint per metric: the change, its paired 95% interval, the change in %;
    ``†`` where the interval covers 0 (the probe does not resolve that change)."""
    head = (f"{'probe':<10} {'metric':<22} {'base':>11} {'checkpoint':>11} {'delta':>11} "
            f"{'95% CI':>21} {'change %':>9} {'95% CI':>21}")
    lines = [head, "-" * len(head)]
    for probe, entry in results.items():
        if "error" in entry:
            lines.append(f"{probe:<10} error: {entry['error']}")
            continue
        lead = primary_metric(probe, protocol)[0]
        paired = entry.get("paired_ci") or {}
        for name, after in entry["after"].items():
            ci = paired.get(name) or {}
            mark = " †" if _finite(ci.get("delta")) and not ci.get("resolved") else ""
            lines.append(
                f"{probe:<10} {'*' if name == lead else ' '}{name:<21} "
                f"{_number(entry['before'].get(name), 11)} {_number(after, 11)} "
                f"{_number(entry['delta'].get(name), 11, '+', 4)} {_interval(ci.get('delta'))} "
                f"{_number(entry['rel_delta_pct'].get(name), 9, '+', 4)} "
                f"{_interval(ci.get('rel_delta_pct'))}{mark}")
    lines.append("95% CI: paired bootstrap over the probe's items (none under 2 items); "
                 "†: it covers 0, the probe does not resolve the change")
    return "\n".join(lines)


def describe(run: EvaluateConfig, checkpoint: Checkpoint | None, model: Any,
             tokenizer: Any, data: dict[str, Rows]) -> dict[str, Any]:
    """``_meta``: what was scored, how, and against what."""
    return {
        "status": "running",  # ok | failed once every probe is done
        "failed": [],
        "model": dataclasses.asdict(run.model),
        "checkpoint": run.checkpoint,
        "checkpoint_kind": checkpoint.kind if checkpoint else None,
        "checkpoint_artifact": str(checkpoint.directory) if checkpoint else None,
        "run_dir": str(checkpoint.run_dir) if checkpoint and checkpoint.run_dir else None,
        "base_model": checkpoint.base_model(run.model.name) if checkpoint else None,
        "protocol": run.eval.protocol,
        "limit": run.eval.limit,
        "chat_template": run.eval.chat_template,
        "precision": run.eval.precision,
        "batch_size": run.eval.batch_size,
        "max_length": resolve_max_length(model, tokenizer, run.eval.max_length),
        "data_source": {p: rows.source for p, rows in data.items()},
        "primary_metric": {p: list(primary_metric(p, run.eval.protocol))
                           for p in run.eval.probes},
        "seconds": {},
        "wall_time_s": None,
        "eval_config": run.eval.to_dict(),
        "versions": {
            "smfexp": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def failure_message(out: dict[str, Any], path: Path) -> str | None:
    """One line naming the failed probes (None if none failed)."""
    failed = out["_meta"]["failed"]
    if not failed:
        return None
    first = out[failed[0]]["error"]
    return (f"probe(s) {failed} failed ({failed[0]}: {first}); the other probes' scores are "
            f"in {path}")


# --------------------------------------------------------------------------- entry point
def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Score every probe (base vs checkpoint with ``checkpoint``), rewriting
    ``output_dir / output`` after each; return its content."""
    return evaluate(EvaluateConfig.from_hydra(cfg), output_dir)  # one-line errors first


def evaluate(run: EvaluateConfig, output_dir: Path) -> dict[str, Any]:
    """:func:`run` on the checked config."""
    ecfg = run.eval
    checkpoint = inspect_checkpoint(run.checkpoint, run.model)
    t_start = time.perf_counter()
    data = {p: load_probe_data(p, ecfg) for p in ecfg.probes}  # missing data: before any load
    if checkpoint is None:
        model, tokenizer = load_model(run.model)
        trained = None
    else:
        model, tokenizer = load_base(run.model, checkpoint)
        trained, _ = load_for_eval(run.model, run.checkpoint)
    meta = describe(run, checkpoint, model, tokenizer, data)
    path = output_dir / run.output
    results: dict[str, dict[str, Any]] = {}
    for probe in ecfg.probes:
        rows = data[probe].rows
        t0 = time.perf_counter()
        if trained is None:
            results[probe] = guarded(probe, score_alone, model, tokenizer, rows, ecfg)
        else:
            results[probe] = guarded(probe, score_pair, model, trained, tokenizer, rows, ecfg)
        meta["seconds"][probe] = round(time.perf_counter() - t0, 3)
        meta["wall_time_s"] = round(time.perf_counter() - t_start, 3)
        log.info("%s (%.1f s): %s", probe, meta["seconds"][probe],
                 results[probe].get("delta", results[probe]))
        atomic_write_json(path, {**results, "_meta": meta})  # a crash keeps what was scored
    meta["failed"] = [p for p, entry in results.items() if "error" in entry]
    meta["status"] = "failed" if meta["failed"] else "ok"
    out: dict[str, Any] = {**results, "_meta": meta}
    atomic_write_json(path, out)
    table = format_table if trained is None else format_comparison
    print(table(results, ecfg.protocol))
    print(f"wrote {path}")
    return out


def cli(cfg: DictConfig, output_dir: Path) -> int:
    """:func:`run` for the command line: a user error in one line (exit 2), failed probes
    named after the others were scored (exit 1)."""
    from smfexp.errors import friendly_errors

    with friendly_errors():
        out = run(cfg, output_dir)
    message = failure_message(out, output_dir / str(cfg.get("output")))
    if message is None:
        return 0
    print(f"error: {message}", file=sys.stderr)
    return 1


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    code = cli(cfg, Path(HydraConfig.get().runtime.output_dir))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
