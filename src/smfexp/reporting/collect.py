"""Find run directories under any path and load their results.json into one DataFrame.

One row per run. Score columns are named exactly like the W&B summary keys the runs log
(``before/<probe>/<metric>``, ``after/...``, ``delta/...``) so tables, plots and the workspace
spec all speak the same names. Sweeps are read while they run: a job dir with a Hydra config
but no results.json yet is an ``incomplete`` row, an unreadable file a ``failed`` one.

Each run's own paired intervals (results.json ``paired_ci``, ``target_beyond_heldout.ci``)
become ``ci_lo/<stage>/<probe>/<metric>`` / ``ci_hi/...`` columns and the items a probe
scored ``items/<probe>``: names no score-key parser takes for a W&B key. Older runs lack them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

RESULTS = "results.json"
STAGES = ("before", "after", "delta", "rel_delta_pct", "beyond_heldout")
# beyond_heldout/target/<metric>: target change minus its held-out probe's change (facts)
# what the runs log as W&B summary keys (runner.summary_metrics); the frontier reads the
# last two, so old runs without them simply get no frontier panel
SCORE_STAGES = ("before", "after", "delta", "rel_delta_pct", "beyond_heldout")
# stages with a paired interval: the change, its % change and the gain beyond held-out
INTERVAL_STAGES = ("delta", "rel_delta_pct", "beyond_heldout")
STREAM = "stream"  # stream/<probe>/<metric> and stream/facts: history keys along the stream
NO_SELECTOR = "-"
TARGET = "target"

# Used only when smfexp.tasks cannot be imported (e.g. a torch-less analysis machine).
_FALLBACK_PRIMARY: dict[str, dict[str, tuple[str, bool]]] = {
    "medmcqa": {"harness": ("acc", True), "paper": ("acc", True)},
    "triviaqa": {"harness": ("exact_match", True), "paper": ("acc", True)},
    "wikitext": {"harness": ("word_perplexity", False), "paper": ("perplexity", False)},
    "gsm8k": {"harness": ("loss", False), "paper": ("loss", False)},
    "nq_open": {"harness": ("exact_match", True), "paper": ("f1", True)},
}
_LOWER_IS_BETTER = re.compile(r"perplexity|loss|bits_per|error", re.IGNORECASE)


class NoResultsError(ValueError):
    """The directory holds no results.json: nothing to report."""


def primary_metric(probe: str, protocol: str | None) -> tuple[str, bool] | None:
    """(metric, higher_is_better) of a probe, from the real registry when importable."""
    protocol = protocol if isinstance(protocol, str) and protocol else "harness"
    try:
        from smfexp.tasks import primary_metric as registry_primary

        return registry_primary(probe, protocol)
    except (ImportError, ValueError, KeyError):
        return _FALLBACK_PRIMARY.get(probe, {}).get(protocol)


def higher_is_better(metric: str) -> bool:
    """Direction guess for metrics without a registry entry (perplexity/loss go down)."""
    return not _LOWER_IS_BETTER.search(metric)


def score_key(stage: str, probe: str, metric: str) -> str:
    return f"{stage}/{probe}/{metric}"


def ci_key(bound: str, stage: str, probe: str, metric: str) -> str:
    """Column of a run's own paired interval: ``bound`` is ``lo`` or ``hi``."""
    return f"ci_{bound}/{stage}/{probe}/{metric}"


def items_key(probe: str) -> str:
    """Column of how many items (questions, articles, paragraphs) a probe scored."""
    return f"items/{probe}"


def is_interval_key(key: str) -> bool:
    return key.startswith(("ci_lo/", "ci_hi/", "items/"))


def parse_score_key(key: str) -> tuple[str, str, str] | None:
    """``delta/medmcqa/acc`` -> ``("delta", "medmcqa", "acc")``; None for other columns."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] not in STAGES:
        return None
    return parts[0], parts[1], parts[2]


def summary_keys(df: pd.DataFrame) -> list[str]:
    """The W&B summary keys the runs carry with at least one value (``SCORE_STAGES``)."""
    keys = []
    for col in df.columns:
        parsed = parse_score_key(str(col))
        if parsed and parsed[0] in SCORE_STAGES and df[col].notna().any():
            keys.append(str(col))
    return sorted(keys)


# not part of a grid point: the line, the draw, and bookkeeping that computes nothing
_NOT_GRID = re.compile(r"^(seed|method|selector|method\.selector|data\.facts_seed|"
                       r"callbacks\.[\w.]+|logger|"
                       r"paths\.[\w.]+|resume|skip_finished|keep_checkpoints|save_trained|"
                       r"checkpoint_every_n_steps|checkpoint_every_minutes)=")


def grid_point(overrides: object) -> str:
    """A run's grid point: its overrides without the line (method / selector) and the draw
    (seed / data.facts_seed), sorted, so the replicates of one setting share it however the
    command line ordered them."""
    if not isinstance(overrides, str) or not overrides.strip():
        return "defaults"
    kept = sorted(o for o in overrides.split() if not _NOT_GRID.match(o.lstrip("+~"))
                  and not o.startswith("hydra."))
    return " ".join(kept) or "defaults"


def draw_id(seed: object, facts_seed: object) -> str:
    """Which replicate a run is: its training seed and its fact draw (old runs: seed only)."""
    def text(v: object) -> str:
        return "?" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    if facts_seed is None or (isinstance(facts_seed, float) and math.isnan(facts_seed)):
        return f"seed={text(seed)}"
    return f"seed={text(seed)} facts_seed={text(facts_seed)}"


def _natural_key(path: Path) -> list[Any]:
    """Sort job dirs 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def _skipped(path: Path, root: Path, exclude: Iterable[Path]) -> bool:
    rel = path.relative_to(root).parts
    if any(p.startswith(".") for p in rel[:-1]):
        return True
    return any(path.is_relative_to(ex) for ex in exclude)


def find_run_dirs(root: str | Path, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Run dirs under ``root`` (itself included): those with a results.json or a Hydra config.

    Hidden dirs and ``exclude`` (e.g. the report output dir) are skipped.
    """
    root = Path(root).resolve()
    excluded = [Path(e).resolve() for e in exclude]
    found: set[Path] = set()
    for pattern in (RESULTS, ".hydra/config.yaml"):
        for hit in root.rglob(pattern):
            run_dir = hit.parent if hit.name == RESULTS else hit.parent.parent
            if not _skipped(run_dir / RESULTS, root, excluded):
                found.add(run_dir)
    return sorted(found, key=_natural_key)


def _flat_scores(results: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for stage in STAGES:
        block = results.get(stage)
        if not isinstance(block, Mapping):
            continue
        for probe, metrics in block.items():
            if not isinstance(metrics, Mapping):
                continue
            for metric, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[score_key(stage, str(probe), str(metric))] = float(value)
    beyond = results.get("target_beyond_heldout")
    if isinstance(beyond, Mapping) and isinstance(beyond.get("delta"), Mapping):
        for metric, value in beyond["delta"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[score_key("beyond_heldout", TARGET, str(metric))] = float(value)
    return out


def _bounds(value: Any) -> tuple[float, float] | None:
    """``[lo, hi]`` as two finite floats, else None (NaN bounds: fewer than 2 items)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    lo, hi = float(value[0]), float(value[1])
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _add_bounds(out: dict[str, float], stage: str, probe: str, metric: str,
                value: Any) -> None:
    found = _bounds(value)
    if found is not None:
        out[ci_key("lo", stage, probe, metric)], out[ci_key("hi", stage, probe, metric)] = found


def flat_intervals(results: Mapping[str, Any]) -> dict[str, float]:
    """The paired interval columns of one results mapping (top level or ``nested[N]``) and
    ``items/<probe>``: the ``n`` of ``paired_ci``, else ``after[probe]["n"]``."""
    out: dict[str, float] = {}
    paired = results.get("paired_ci")
    for probe, metrics in (paired.items() if isinstance(paired, Mapping) else []):
        for metric, block in (metrics.items() if isinstance(metrics, Mapping) else []):
            if not isinstance(block, Mapping):
                continue
            for stage in ("delta", "rel_delta_pct"):
                _add_bounds(out, stage, str(probe), str(metric), block.get(stage))
            n = block.get("n")
            if isinstance(n, int | float) and not isinstance(n, bool):
                key = items_key(str(probe))
                out[key] = max(out.get(key, 0.0), float(n))
    beyond = results.get("target_beyond_heldout")
    ci = beyond.get("ci") if isinstance(beyond, Mapping) else None
    for metric, value in (ci.items() if isinstance(ci, Mapping) else []):
        _add_bounds(out, "beyond_heldout", TARGET, str(metric), value)
    after = results.get("after")
    for probe, metrics in (after.items() if isinstance(after, Mapping) else []):
        n = metrics.get("n") if isinstance(metrics, Mapping) else None
        if isinstance(n, int | float) and not isinstance(n, bool):
            out.setdefault(items_key(str(probe)), float(n))
    return out


def flat_results(results: Mapping[str, Any]) -> dict[str, float]:
    """Scores and paired intervals of one results mapping as flat columns."""
    return {**_flat_scores(results), **flat_intervals(results)}


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # a half-written Hydra file must not stop the report
        return None


def _hydra_info(run_dir: Path) -> dict[str, Any]:
    """What the Hydra files say about a run: the fallback for failed/incomplete runs."""
    hydra_dir = run_dir / ".hydra"
    info: dict[str, Any] = {}
    overrides = _read_yaml(hydra_dir / "overrides.yaml")
    if isinstance(overrides, list):
        info["overrides"] = " ".join(str(o) for o in overrides)
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml")
    choices = {}
    if isinstance(hydra_cfg, Mapping):
        choices = (hydra_cfg.get("hydra") or {}).get("runtime", {}).get("choices") or {}
    cfg = _read_yaml(hydra_dir / "config.yaml")
    cfg = cfg if isinstance(cfg, Mapping) else {}
    method = cfg.get("method") if isinstance(cfg.get("method"), Mapping) else {}
    # runs before method configs were constructor arguments had method.name / selector.name
    name = method.get("name") or _class_method_name(method.get("_target_"))
    info["method"] = name or choices.get("method")
    if isinstance(method.get("selector"), str):
        info["selector"] = method["selector"]
    elif method.get("uses_selector", info["method"] == "smf"):
        sel = cfg.get("selector") if isinstance(cfg.get("selector"), Mapping) else {}
        info["selector"] = sel.get("name") or choices.get("selector")
    data_cfg = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {}
    info["variant"] = method_variant(method, info["method"], data_cfg.get("steps_per_fact"))
    info["seed"] = cfg.get("seed")
    info["facts_seed"] = data_cfg.get("facts_seed")
    if isinstance(data_cfg.get("schedule"), str) and "${" not in data_cfg["schedule"]:
        info["schedule"] = data_cfg["schedule"]
    model = cfg.get("model") if isinstance(cfg.get("model"), Mapping) else {}
    info["model"] = model.get("name") or choices.get("model")
    info["data"] = choices.get("data")
    ev = cfg.get("eval") if isinstance(cfg.get("eval"), Mapping) else {}
    info["protocol"] = ev.get("protocol")
    return {k: v for k, v in info.items() if v is not None}


# levers against forgetting (method config key -> name, when on): a line of their own in
# every table and figure, so a baseline with replay is compared with SMF on its own and an
# SMF lever does not join the default's frontier (its lr, top_t, slots stay grid points)
CONTROL = "nofacts"  # the variant of a replay-only control run (fact_weight 0)
_LEVERS = {"full": {"replay_k": "replay", "ewc": "ewc", "l2_to_base": "l2",
                    "learned_loss": "skip"},
           "lora": {"replay_k": "replay", "learned_loss": "skip"},
           "smf": {"row_max_change": "bound", "replay_k": "bg", "count_tokens": "fact",
                   "learned_loss": "skip"}}
# steps per fact of the scale grid's protocol (experiment=scale, the default until 2026-12-07):
# a run with another number trained each fact more or less than the grid's baselines did, so it
# is a line of its own (today's default, up to 4 steps skipping learned facts: skip+steps4)
PROTOCOL_STEPS_PER_FACT = 2


def _lever_on(key: str, value: Any) -> bool:
    if key == "count_tokens":
        return value == "fact"
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def method_variant(method: Mapping[str, Any], name: object,
                   steps_per_fact: Any = None) -> str | None:
    """``replay``, ``ewc+l2``, ``bound``, ``skip+steps4`` ... (joined by ``+``) for the levers
    a run switched on (``_LEVERS``) and a number of steps per fact other than the protocol's;
    None for the method as it is."""
    levers = _LEVERS.get(str(name), {})
    on = [label for key, label in levers.items() if _lever_on(key, method.get(key))]
    on += _fact_weight_label(method.get("fact_weight"))
    if isinstance(steps_per_fact, int) and steps_per_fact != PROTOCOL_STEPS_PER_FACT:
        on.append(f"steps{steps_per_fact}")
    return "+".join(on) or None


def _fact_weight_label(weight: Any) -> list[str]:
    """``nofacts`` for the replay-only control (``fact_weight`` 0), ``facts<w>`` for another
    weight: such runs are not points of the baseline's own grid (they learn other things)."""
    if not isinstance(weight, int | float) or isinstance(weight, bool) or weight == 1:
        return []
    return [CONTROL] if weight == 0 else [f"facts{weight:g}"]


def is_control(variant: object) -> bool:
    """A control run (the replay-only ``nofacts``): the same steps without the facts, so no
    point on any learning-forgetting frontier."""
    return isinstance(variant, str) and CONTROL in variant.split("+")


_METHOD_CLASSES = {"SparseMemoryFinetune": "smf", "LoRAFinetune": "lora", "FullFinetune": "full"}


def _class_method_name(target: Any) -> str | None:
    """smf / lora / full from a method's ``_target_`` (without importing torch)."""
    return _METHOD_CLASSES.get(str(target).rsplit(".", 1)[-1]) if target else None


def _is_train_job(run_dir: Path) -> bool:
    cfg = _read_yaml(run_dir / ".hydra" / "config.yaml")
    return isinstance(cfg, Mapping) and cfg.get("task_name", "train") == "train"


def _data_name(data: Any) -> str | None:
    if isinstance(data, Mapping):
        return data.get("name")
    return str(data) if data is not None else None


def _status(results: Mapping[str, Any]) -> str:
    status = results.get("status")
    if isinstance(status, str) and status:
        return status.lower()
    return "ok" if results.get("after") else "failed"


def load_run(run_dir: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """One flat record for a run dir; never raises on missing keys or a broken file."""
    run_dir = Path(run_dir).resolve()
    root = Path(root).resolve() if root is not None else run_dir.parent
    rel = run_dir.relative_to(root).as_posix() if run_dir.is_relative_to(root) else str(run_dir)
    record: dict[str, Any] = {
        "run_id": run_dir.name if rel == "." else rel,
        "run_dir": str(run_dir),
        "status": "incomplete",
        "error": None,
    }
    hydra = _hydra_info(run_dir)
    results: Mapping[str, Any] = {}
    path = run_dir / RESULTS
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, Mapping):
                raise ValueError("not a JSON object")
            results = loaded
            record["status"] = _status(results)
            record["error"] = results.get("error")
        except (OSError, ValueError) as err:
            record.update(status="failed", error=f"unreadable {RESULTS}: {err}")
    else:
        record["error"] = f"no {RESULTS} yet (running, killed or crashed)"
    data = results.get("data") if isinstance(results.get("data"), Mapping) else {}
    smf = results.get("smf") if isinstance(results.get("smf"), Mapping) else {}
    wall = results.get("wall_seconds")
    record.update(
        method=results.get("method") or hydra.get("method"),
        selector=results.get("selector") or hydra.get("selector") or NO_SELECTOR,
        variant=hydra.get("variant"),
        seed=results.get("seed", hydra.get("seed")),
        facts_seed=data.get("facts_seed", hydra.get("facts_seed")),
        schedule=data.get("schedule", hydra.get("schedule")),
        model=results.get("model") or hydra.get("model"),
        data=_data_name(results.get("data")) or hydra.get("data"),
        protocol=results.get("protocol") or hydra.get("protocol"),
        precision=results.get("precision"),
        n_train=data.get("n_train"),
        target_probe=results.get("target_probe"),
        target_metric=results.get("target_metric"),
        target_higher_is_better=results.get("target_higher_is_better"),
        steps=results.get("steps"),
        trainable_params=results.get("trainable_params"),
        wall_seconds=wall.get("total") if isinstance(wall, Mapping) else wall,
        smf_bytes_changed=smf.get("bytes_changed"),
        overrides=hydra.get("overrides"),
    )
    record["point"] = grid_point(record["overrides"])
    record["draw"] = draw_id(record["seed"], record["facts_seed"])
    for key in ("method", "model", "data", "protocol"):
        if record[key] is None:
            record[key] = "?"
    if record["status"] == "ok":
        record.update(flat_results(results))
    return record


def collect_runs(root: str | Path, exclude: Iterable[str | Path] = ()) -> pd.DataFrame:
    """All runs under ``root`` as a DataFrame (one row per run dir).

    Raises :class:`NoResultsError` when there is not a single results.json under ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoResultsError(f"{root} is not a directory")
    run_dirs = find_run_dirs(root, exclude)
    if not any((d / RESULTS).is_file() for d in run_dirs):
        raise NoResultsError(f"no {RESULTS} found under {root}")
    # a Hydra dir without results that is not a training job (e.g. a retrofit run) is noise
    records = [load_run(d, root) for d in run_dirs if (d / RESULTS).is_file() or _is_train_job(d)]
    records = [r for r in records if r["status"] != "incomplete" or r["method"] != "?"]
    return name_schedules(normalize_runs(pd.DataFrame(records)))


_SCHEDULE_OVERRIDE = re.compile(r"^[+~]*(data|method)\.schedule=")


def name_schedules(df: pd.DataFrame) -> pd.DataFrame:
    """Name the lr schedule in the grid point of every run of a line that mixes schedules:
    runs from before a default changed must not share a point with runs after it."""
    if "schedule" not in df or df.empty:
        return df
    df = df.copy()
    mixed = df.groupby(["method", "selector"], dropna=False)["schedule"].transform(
        lambda s: s.dropna().nunique() > 1)
    for i in df.index[mixed.astype(bool) & df["schedule"].notna()]:
        kept = [o for o in str(df.at[i, "point"]).split()
                if o != "defaults" and not _SCHEDULE_OVERRIDE.match(o)]
        df.at[i, "point"] = " ".join(sorted([*kept, f"data.schedule={df.at[i, 'schedule']}"]))
    return df


def normalize_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes after a CSV round trip (runs.csv) so grouping never drops a row."""
    df = df.copy()
    for col in ("method", "model", "data", "protocol", "status"):
        if col in df:
            df[col] = df[col].fillna("?").astype(str)
    if "selector" in df:
        df["selector"] = df["selector"].fillna(NO_SELECTOR).astype(str)
    if "target_higher_is_better" in df:
        df["target_higher_is_better"] = df["target_higher_is_better"].map(_to_bool)
    score_cols = [c for c in df.columns
                  if parse_score_key(str(c)) or is_interval_key(str(c))]
    df[score_cols] = df[score_cols].apply(pd.to_numeric, errors="coerce")
    return _with_point_and_draw(df)


def _with_point_and_draw(df: pd.DataFrame) -> pd.DataFrame:
    """``point`` / ``draw`` for tables that predate them (old runs.csv, W&B runs)."""
    if "point" not in df:
        overrides = df["overrides"] if "overrides" in df else pd.Series(None, index=df.index)
        df["point"] = overrides.map(grid_point)
    df["point"] = df["point"].fillna("defaults").astype(str)
    if "draw" not in df:
        seeds = df["seed"] if "seed" in df else pd.Series(None, index=df.index)
        facts = df["facts_seed"] if "facts_seed" in df else pd.Series(None, index=df.index)
        df["draw"] = [draw_id(s, f) for s, f in zip(seeds, facts, strict=True)]
    return df


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return bool(value)
    return None


def report_path(path: str | Path, out: str | Path) -> str:
    """How a report names ``path``: relative to the current directory when below it (what
    was typed, e.g. ``results/scale``), else relative to the report dir ``out``; never the
    machine's absolute path."""
    found = Path(path).resolve()
    here = Path.cwd().resolve()
    if found.is_relative_to(here):
        return found.relative_to(here).as_posix() or "."
    return Path(os.path.relpath(found, Path(out).resolve())).as_posix()


def run_dir_path(run_dir: str | Path, out: str | Path) -> str:
    """How runs.csv names a run dir: relative to the report dir ``out`` when the two share a
    folder below ``/`` (so :func:`load_runs` finds the logs wherever they move together),
    else as :func:`report_path` names it."""
    found, base = Path(run_dir).resolve(), Path(out).resolve()
    if os.path.commonpath([found, base]) != found.anchor:
        return Path(os.path.relpath(found, base)).as_posix()
    return report_path(found, base)


def portable_runs(df: pd.DataFrame, root: str | Path, out: str | Path) -> pd.DataFrame:
    """The runs as runs.csv stores them: ``run_dir`` by :func:`run_dir_path` and the results
    root named relatively in the error messages; no absolute path of this machine."""
    df = df.copy()
    if "run_dir" in df:
        df["run_dir"] = [run_dir_path(d, out) if isinstance(d, str) and Path(d).is_absolute()
                         else d for d in df["run_dir"]]
    if "error" in df:
        where, name = str(Path(root).resolve()), report_path(root, out)
        df["error"] = [e.replace(where, name) if isinstance(e, str) else e for e in df["error"]]
    return df


def _resolve_run_dir(value: Any, base: Path) -> Any:
    """A runs.csv ``run_dir``: relative to the report dir (reports since they are portable),
    else as written (absolute, or relative to the repository in scrubbed older reports)."""
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return value
    beside = base / value
    return str(beside.resolve()) if beside.exists() else value


def load_runs(path: str | Path) -> pd.DataFrame:
    """Runs from a report dir (its runs.csv) or from a run/multirun dir (its results.json)."""
    path = Path(path)
    runs_csv = path / "runs.csv"
    if runs_csv.is_file():
        runs = normalize_runs(pd.read_csv(runs_csv))
        if "run_dir" in runs:
            runs["run_dir"] = [_resolve_run_dir(d, path) for d in runs["run_dir"]]
        return runs
    return collect_runs(path, exclude=[path / "report"])


def metrics_csv(run_dir: str | Path) -> Path | None:
    """The newest Lightning CSV log of a run (``csv/version_<n>/metrics.csv``), if any."""
    run_dir = Path(run_dir)
    hits = list(run_dir.glob("csv/version_*/metrics.csv")) or [
        p for p in run_dir.glob("*/version_*/metrics.csv") if not p.parts[-3].startswith(".")
    ]
    if not hits:
        return None
    return max(hits, key=lambda p: _natural_key(p.parent))


def load_training_log(run_dir: str | Path) -> pd.DataFrame | None:
    """The run's CSV metrics (``step``, ``train/loss``, ...), or None if absent/unreadable."""
    path = metrics_csv(run_dir)
    if path is None:
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _run_dirs(df: pd.DataFrame) -> list[str]:
    return [str(d) for d in df.get("run_dir", pd.Series(dtype=str)).dropna()]


def _logged_keys(run_dir: str, prefix: str) -> set[str]:
    log = load_training_log(run_dir)
    if log is None:
        return set()
    return {str(c) for c in log.columns if str(c).startswith(prefix) and log[c].notna().any()}


def training_keys(df: pd.DataFrame) -> list[str]:
    """``train/*`` metric names logged by at least one run (they are W&B summary keys too)."""
    return sorted(set().union(*(_logged_keys(d, "train/") for d in _run_dirs(df))))


def stream_keys(df: pd.DataFrame) -> list[str]:
    """``stream/<probe>/<metric>`` and ``stream/facts`` keys logged by at least one run.

    Read from the CSV logs and from results.json's stream points (what the stream callback
    logs, the row counts ``n`` excepted); old runs without a stream contribute nothing.
    """
    keys: set[str] = set()
    for run_dir in _run_dirs(df):
        keys |= _logged_keys(run_dir, f"{STREAM}/")
        try:
            results = json.loads((Path(run_dir) / RESULTS).read_text(encoding="utf-8"))
            points = results[STREAM]["points"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for point in points if isinstance(points, list) else []:
            scores = point.get("scores") if isinstance(point, Mapping) else None
            for probe, metrics in (scores or {}).items():
                keys.update(f"{STREAM}/{probe}/{m}" for m, v in (metrics or {}).items()
                            if m != "n" and isinstance(v, int | float)
                            and not isinstance(v, bool))
            if isinstance(point, Mapping) and point.get("facts") is not None:
                keys.add(f"{STREAM}/facts")
    return sorted(keys)


def probes_in(df: pd.DataFrame, stage: str = "delta") -> list[str]:
    """Probe names with ``stage`` scores, target first, then in first-seen order."""
    seen: dict[str, None] = {}
    for col in df.columns:
        parsed = parse_score_key(str(col))
        if parsed and parsed[0] == stage and df[col].notna().any():
            seen.setdefault(parsed[1], None)
    probes = list(seen)
    return ([TARGET] if TARGET in seen else []) + [p for p in probes if p != TARGET]
