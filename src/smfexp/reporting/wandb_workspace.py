"""A W&B saved-workspace spec for gain-vs-forgetting, built offline and published on demand.

Sections: target gain vs forgetting (deltas), the learning-vs-forgetting frontier per probe
(learning as :func:`smfexp.reporting.frontier.learning_of` takes it, forgetting as the
probe's % change), before / after, training curves, and learning / forgetting along the
stream (``stream/<probe>/<metric>`` against ``stream/facts``).

Panels only reference keys passed in ``metric_keys`` (what the runs actually log), so a
workspace never shows empty charts for metrics nobody wrote. Building needs no network;
publishing checks mode, API key and reachability first and gives up after a timeout with one
readable line instead of W&B's long retry loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from smfexp.reporting.collect import STREAM, TARGET, parse_score_key
from smfexp.reporting.frontier import FORGETTING_METRICS
from smfexp.utils.net import reachable, wandb_url

DEFAULT_NAME = "SMF: target gain vs forgetting"
COUNT_METRICS = frozenset({"n"})


class PublishError(RuntimeError):
    """Publishing the workspace is impossible right now (offline, no key, no network...)."""


def _keys_by_probe(keys: Iterable[str], stage: str,
                   metrics: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]]:
    """``{probe: [metric, ...]}`` of the keys logged for ``stage``, filtered by ``metrics``.

    Without ``metrics``, bookkeeping counts (``n``: rows scored) are left out.
    """
    out: dict[str, list[str]] = {}
    for key in sorted(keys):
        parsed = parse_score_key(key)
        if not parsed or parsed[0] != stage:
            continue
        _, probe, metric = parsed
        if metrics is None and metric in COUNT_METRICS:
            continue
        if metrics is not None and metric not in set(metrics.get(probe, ())):
            continue
        out.setdefault(probe, []).append(metric)
    return out


def _frontier_axes(keys: Sequence[str], metrics: Mapping[str, Iterable[str]] | None
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str, bool]]]:
    """The frontier's axes among ``keys``: learning ``(metric, key)`` per target metric (its
    gain beyond the held-out questions, else its plain gain, like ``learning_of``) and
    forgetting ``(probe, key, higher_is_better)`` per probe of ``FORGETTING_METRICS``."""
    present = set(keys)
    learning = []
    for metric in sorted({p[2] for k in keys if (p := parse_score_key(k)) and p[1] == TARGET
                          and p[0] in ("beyond_heldout", "delta")}):
        if metrics is None and metric in COUNT_METRICS:
            continue
        if metrics is not None and metric not in set(metrics.get(TARGET, ())):
            continue
        for stage in ("beyond_heldout", "delta"):
            if (key := f"{stage}/{TARGET}/{metric}") in present:
                learning.append((metric, key))
                break
    forgetting = [(probe, key, higher) for probe, (metric, higher) in FORGETTING_METRICS.items()
                  if (key := f"rel_delta_pct/{probe}/{metric}") in present]
    return learning, forgetting


def _stream_keys(keys: Sequence[str], metrics: Mapping[str, Iterable[str]] | None
                 ) -> dict[str, list[str]]:
    """``{probe: [key, ...]}`` of the ``stream/<probe>/<metric>`` keys, target first; with
    ``metrics``, a probe keeps those and its forgetting metric (the frontier's)."""
    out: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != STREAM:
            continue
        _, probe, metric = parts
        if metrics is None and metric in COUNT_METRICS:
            continue
        wanted = set(metrics.get(probe, ())) if metrics is not None else None
        if wanted is not None and probe in FORGETTING_METRICS:
            wanted.add(FORGETTING_METRICS[probe][0])
        if wanted is not None and metric not in wanted:
            continue
        out.setdefault(probe, []).append(key)
    return dict(sorted(out.items(), key=lambda kv: kv[0] != TARGET))


def workspace_spec(entity: str, project: str, metric_keys: Iterable[str], *,
                   name: str = DEFAULT_NAME,
                   metrics: Mapping[str, Iterable[str]] | None = None,
                   group_by: Sequence[str] = ("method", "selector"),
                   max_runs: int = 100) -> Any:
    """Build the ``wandb_workspaces`` Workspace offline.

    ``metric_keys``: the runs' summary keys (``before|after|delta|rel_delta_pct/<probe>/
    <metric>``, ``beyond_heldout/target/<metric>``, ``train/loss``...) and history keys
    (``stream/<probe>/<metric>``, ``stream/facts``). ``metrics``: optional ``{probe:
    metrics}`` to keep (e.g. the primary ones); default all. The frontier always plots each
    probe's forgetting metric (``FORGETTING_METRICS``), whatever ``metrics`` says. Runs are
    grouped by the ``group_by`` config keys.
    """
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    keys = sorted(set(metric_keys))
    deltas = _keys_by_probe(keys, "delta", metrics)
    befores = _keys_by_probe(keys, "before", metrics)
    afters = _keys_by_probe(keys, "after", metrics)
    group_text = "/".join(group_by)

    def delta_key(probe: str, metric: str) -> str:
        return f"delta/{probe}/{metric}"

    tradeoff: list[Any] = []
    for probe, probe_metrics in deltas.items():
        if probe == TARGET:
            continue
        for metric in probe_metrics:
            for target_metric in deltas.get(TARGET, []):
                tradeoff.append(wr.ScatterPlot(
                    title=f"Δ target {target_metric} vs Δ {probe} {metric}",
                    x=wr.SummaryMetric(delta_key(probe, metric)),
                    y=wr.SummaryMetric(delta_key(TARGET, target_metric)),
                ))
    for probe, probe_metrics in deltas.items():
        for metric in probe_metrics:
            tradeoff.append(wr.BarPlot(
                title=f"Δ {probe} {metric} by {group_text} (mean ± std)",
                metrics=[delta_key(probe, metric)], orientation="v",
                groupby_aggfunc="mean", groupby_rangefunc="stddev",
            ))
    learning, forgetting = _frontier_axes(keys, metrics)
    def learned(key: str) -> str:
        return "target beyond held-out" if key.startswith("beyond_heldout/") else "Δ target"

    frontier_panels = [
        wr.ScatterPlot(
            title=(f"frontier {probe}: {learned(learning_key)} {target_metric} vs "
                   f"{key.split('/')[2]} % change ({'↓' if higher else '↑'} = more forgetting)"),
            x=wr.SummaryMetric(learning_key), y=wr.SummaryMetric(key),
        )
        for probe, key, higher in forgetting for target_metric, learning_key in learning
    ]
    before_after = [
        wr.BarPlot(title=f"{probe} {metric}: before vs after by {group_text}",
                   metrics=[f"before/{probe}/{metric}", f"after/{probe}/{metric}"],
                   orientation="v", groupby_aggfunc="mean", groupby_rangefunc="stddev")
        for probe, probe_metrics in befores.items() for metric in probe_metrics
        if metric in afters.get(probe, [])
    ]
    curves = [
        wr.LinePlot(title=key, x="Step", y=[key], groupby_aggfunc="mean",
                    groupby_rangefunc="stddev")
        for key in keys if key.startswith("train/") and key in ("train/loss", "train/lr")
    ]
    facts = f"{STREAM}/facts"
    stream_x = facts if facts in keys else "Step"
    stream = [
        wr.LinePlot(title=f"{'learning' if probe == TARGET else 'forgetting'} along the "
                          f"stream: {probe} {key.split('/')[2]}",
                    x=stream_x, y=[key], groupby_aggfunc="mean", groupby_rangefunc="stddev")
        for probe, probe_keys in _stream_keys(keys, metrics).items() for key in probe_keys
    ]
    sections = [
        ws.Section(name=title, panels=panels, is_open=True)
        for title, panels in (("Target gain vs forgetting", tradeoff),
                              ("Learning vs forgetting frontier", frontier_panels),
                              ("Before / after", before_after),
                              ("Training curves", curves),
                              ("Along the stream", stream))
        if panels
    ]
    return ws.Workspace(
        entity=entity, project=project, name=name, sections=sections,
        settings=ws.WorkspaceSettings(max_runs=max_runs),
        runset_settings=ws.RunsetSettings(groupby=[ws.Config(k) for k in group_by]),
    )


def _metric_name(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else getattr(value, "name", None)


def panel_metric_keys(workspace: Any) -> set[str]:
    """Every metric key a workspace's panels read (the x axis ``Step`` excluded)."""
    found: set[str] = set()
    for section in workspace.sections:
        for panel in section.panels:
            values: list[Any] = []
            for attr in ("x", "y", "z"):
                value = getattr(panel, attr, None)
                values.extend(value if isinstance(value, list) else [value])
            values.extend(getattr(panel, "metrics", None) or [])
            found.update(n for v in values if (n := _metric_name(v)) and n != "Step")
    return found


def spec_json(workspace: Any) -> str:
    """The view spec W&B would store, as JSON (offline; handy to inspect or diff)."""
    return workspace._to_model().spec.model_dump_json(by_alias=True, exclude_none=True,
                                                      indent=2)


def _check_reachable(timeout: float) -> None:
    url = wandb_url()
    if not reachable(url, timeout):
        raise PublishError(f"cannot reach W&B at {url}")


def _publish(workspace: Any, timeout: float) -> str:
    import wandb

    try:
        wandb.Api(timeout=int(max(timeout, 1)))
    except Exception as err:  # wandb raises UsageError/CommError without a key
        raise PublishError(f"W&B login missing or invalid: {str(err).splitlines()[0]}") from None
    _check_reachable(min(timeout, 10.0))
    workspace.save()
    return str(workspace.url)


def _run_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a daemon thread; W&B's own retries can block for many minutes."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:
            box["error"] = err

    worker = threading.Thread(target=run, name=f"wandb-{what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise PublishError(f"W&B did not answer within {timeout:.0f} s ({what})")
    err = box.get("error")
    if isinstance(err, PublishError):
        raise err
    if err is not None:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PublishError(f"{what} failed: {type(err).__name__}: {first}")
    return box["value"]


def _check_mode() -> None:
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise PublishError(f"WANDB_MODE={mode}: set WANDB_MODE=online to talk to W&B")


def publish_workspace(entity: str, project: str, metric_keys: Iterable[str], *,
                      timeout: float = 60.0, **spec_kwargs: Any) -> str:
    """Save the workspace to W&B and return its URL.

    Raises :class:`PublishError` with a one-line message when offline, without an API key,
    unreachable, rejected, or slower than ``timeout`` seconds; it never blocks longer.
    """
    _check_mode()
    workspace = workspace_spec(entity, project, metric_keys, **spec_kwargs)
    return _run_with_timeout(lambda: _publish(workspace, timeout), timeout,
                             "saving the workspace")


def _config_name(value: Any) -> Any:
    """Hydra groups arrive in W&B config as dicts (``{"name": "smf", ...}``) or plain names."""
    return value.get("name") if isinstance(value, Mapping) else value


def _eval_protocol(value: Any) -> Any:
    return value.get("protocol") if isinstance(value, Mapping) else None


def _wandb_runs(path: str, timeout: float) -> list[dict[str, Any]]:
    import wandb

    try:
        api = wandb.Api(timeout=int(max(timeout, 1)))
    except Exception as err:
        raise PublishError(f"W&B login missing or invalid: {str(err).splitlines()[0]}") from None
    _check_reachable(min(timeout, 10.0))
    records = []
    for run in api.runs(path):
        cfg = dict(run.config)
        summary = {k: v for k, v in dict(run.summary).items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        target = sorted(k.split("/")[2] for k in summary
                        if (p := parse_score_key(k)) and p[0] == "delta" and p[1] == TARGET)
        records.append({
            "run_id": run.name, "run_dir": None,
            "status": "ok" if run.state == "finished" else str(run.state),
            "method": _config_name(cfg.get("method")),
            "selector": _config_name(cfg.get("selector")),
            "seed": cfg.get("seed"), "model": _config_name(cfg.get("model")),
            "data": _config_name(cfg.get("data")),
            "protocol": cfg.get("protocol") or _eval_protocol(cfg.get("eval")),
            "target_metric": cfg.get("target_metric") or (target[0] if target else None),
            "target_higher_is_better": cfg.get("target_higher_is_better"),
            **{k: v for k, v in summary.items() if parse_score_key(k)},
        })
    return records


def fetch_wandb_runs(path: str, timeout: float = 60.0) -> Any:
    """Runs of ``entity/project`` as a DataFrame shaped like ``collect_runs`` output.

    Raises :class:`PublishError` (one line) when W&B is offline/unreachable/without a key.
    """
    import pandas as pd

    from smfexp.reporting.collect import normalize_runs

    _check_mode()
    records = _run_with_timeout(lambda: _wandb_runs(path, timeout), timeout,
                                f"fetching runs of {path}")
    return normalize_runs(pd.DataFrame(records))
