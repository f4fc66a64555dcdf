"""Mean and 95% interval over draws per (model, data, protocol, method, selector, grid point),
as CSV and Markdown.

A failed run never contributes a number: a group whose runs all failed shows ``failed (n)``
in every score cell, and a partly failed group states its failure count next to its numbers.
The base model (the ``before`` scores every run records) is one ``base`` row per context.
Next to the interval over draws, a change shows the runs' own paired interval (``probe ±``,
results.json ``paired_ci``) where they carry one, and the notes name the items per probe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from smfexp.reporting.collect import (
    INTERVAL_STAGES,
    NO_SELECTOR,
    TARGET,
    ci_key,
    higher_is_better,
    items_key,
    parse_score_key,
    primary_metric,
    probes_in,
    score_key,
)
from smfexp.reporting.stats import (
    UNRESOLVED_NOTE,
    MeanCI,
    ProbeCI,
    fmt_ci,
    mean_ci,
    typical_probe_ci,
)

CONTEXT_KEYS = ("model", "data", "protocol")
CI_NOTE = ("mean ± half-width of the 95% t-interval over draws (runs of one grid point with "
           "another `seed` / `data.facts_seed`), n = draws that logged the value; n=1: no "
           "interval.")
METHOD_ORDER = ("base", "smf", "lora", "full")
SELECTOR_ORDER = (NO_SELECTOR, "tfidf", "kl", "random", "all")
BASE = "base"
# what a probe's items are, for the notes: probe -> (name, unit)
ITEM_NAMES = {"wikitext": ("WikiText", "articles"), "retention": ("retention", "paragraphs"),
              "nq_open": ("NQ-open", "questions"), "triviaqa": ("TriviaQA", "questions"),
              "medmcqa": ("MedMCQA", "questions"), "gsm8k": ("GSM8K", "questions"),
              TARGET: ("learning", "trained facts")}
PAIRED_NOTE = ("`probe ± h`: the runs' own paired 95% interval of the change (after vs before "
               "on the same items; over several draws the median half-width).")


@dataclass(frozen=True)
class Column:
    """One displayed score: a probe's metric and which direction is better."""

    probe: str
    metric: str
    higher_is_better: bool

    def header(self, prefix: str = "") -> str:
        arrow = "↑" if self.higher_is_better else "↓"
        return f"{prefix}{self.probe} {self.metric} {arrow}"


def std(values: Sequence[float] | pd.Series) -> float:
    """Sample std (ddof=1) over seeds; NaN for a single run (no spread to report)."""
    arr = np.asarray(pd.Series(values).dropna(), dtype=float)
    return float(np.std(arr, ddof=1)) if arr.size > 1 else math.nan


def rank(value: str, order: Sequence[str]) -> tuple[int, str]:
    """Sort key: known names in their fixed order, unknown ones after, alphabetically."""
    return (order.index(value) if value in order else len(order), value)


def _status_counts(statuses: pd.Series) -> dict[str, int]:
    counts = statuses.value_counts()
    return {
        "n_runs": len(statuses),
        "n_ok": int(counts.get("ok", 0)),
        "n_failed": int(sum(v for k, v in counts.items() if k not in ("ok", "incomplete"))),
        "n_incomplete": int(counts.get("incomplete", 0)),
    }


def status_text(n_ok: int, n_failed: int, n_incomplete: int) -> str:
    """``3`` when all ran, else e.g. ``2 ok, 1 failed``: failures are counted, never hidden."""
    if not n_failed and not n_incomplete:
        return str(n_ok)
    parts = [f"{n_ok} ok"] if n_ok else []
    parts += [f"{n_failed} failed"] if n_failed else []
    parts += [f"{n_incomplete} incomplete"] if n_incomplete else []
    return ", ".join(parts)


def _stats(prefix: str, values: pd.Series) -> dict[str, float]:
    """mean, std, n and the 95% t-interval half-width (``:ci``) over the group's draws."""
    ci = mean_ci(values.dropna())
    return {
        f"{prefix}:mean": ci.mean,
        f"{prefix}:std": std(values),
        f"{prefix}:ci": ci.half,
        f"{prefix}:n": ci.n,
    }


def _span(values: Iterable[float]) -> str:
    found = sorted({int(v) for v in values if v is not None and math.isfinite(float(v))})
    if not found:
        return ""
    return str(found[0]) if len(found) == 1 else f"{found[0]}-{found[-1]}"


def items_note(counts: dict[str, Iterable[float]]) -> str:
    """``Items per probe: WikiText: 40 articles; learning: 256 trained facts.``: which probe
    size each number comes from (a range where runs differ); "" when none is known."""
    parts = []
    for probe in sorted(counts, key=lambda p: p == TARGET):  # learning last
        span = _span(counts[probe])
        if span:
            name, unit = ITEM_NAMES.get(probe, (probe, "items"))
            parts.append(f"{name}: {span} {unit[:-1] if span == '1' else unit}")
    return f"Items per probe: {'; '.join(parts)}." if parts else ""


def runs_items_note(df: pd.DataFrame, probes: Iterable[str]) -> str:
    """:func:`items_note` of the ok runs' ``items/<probe>`` columns for ``probes``."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    counts = {p: ok[items_key(p)].dropna() for p in dict.fromkeys(probes)
              if items_key(p) in ok}
    return items_note(counts)


def _probe_stats(prefix: str, runs: pd.DataFrame, col: str) -> dict[str, float]:
    """``:probe_lo`` / ``:probe_hi``: the runs' typical paired interval (median offsets from
    each run's value) around the group's mean; {} when no run of the table carries one."""
    stage, probe, metric = parse_score_key(col)  # type: ignore[misc]
    lo, hi = ci_key("lo", stage, probe, metric), ci_key("hi", stage, probe, metric)
    if stage not in INTERVAL_STAGES or lo not in runs or hi not in runs:
        return {}
    typical = typical_probe_ci(ProbeCI.around(v, a, b) for v, a, b in
                               zip(runs[col], runs[lo], runs[hi], strict=True))
    mean = mean_ci(runs[col].dropna()).mean
    if typical is None:
        return {f"{prefix}:probe_lo": math.nan, f"{prefix}:probe_hi": math.nan}
    return {f"{prefix}:probe_lo": mean + typical.below, f"{prefix}:probe_hi": mean + typical.above}


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group plus a ``base`` row per context; ``score/...`` = after (before for base).

    A group is one grid point of one method/selector (``point``: the overrides that are not
    the line or the draw), so its runs are draws of the same setting and their spread is an
    interval, not a mix of learning rates. Columns: the group keys, run counts, ``status``,
    then ``<score|delta|rel_delta_pct>/<probe>/<metric>:<mean|std|ci|n>`` for every score,
    and ``:probe_lo`` / ``:probe_hi`` (the runs' own paired interval around the mean) for the
    changes when any run carries one.
    """
    if "point" not in df:
        df = df.assign(point="defaults")
    score_cols = [c for c in df.columns if parse_score_key(str(c))]
    rows: list[dict] = []
    for context, ctx_df in df.groupby(list(CONTEXT_KEYS), sort=True, dropna=False):
        ctx = dict(zip(CONTEXT_KEYS, context, strict=True))
        ok = ctx_df[ctx_df["status"] == "ok"]
        if len(ok):
            base: dict = {**ctx, "method": BASE, "selector": NO_SELECTOR, "point": NO_SELECTOR,
                          "n_runs": len(ok),
                          "n_ok": len(ok), "n_failed": 0, "n_incomplete": 0,
                          "status": str(len(ok))}
            for col in score_cols:
                stage, probe, metric = parse_score_key(col)  # type: ignore[misc]
                if stage == "before":
                    base.update(_stats(score_key("score", probe, metric), ok[col]))
            rows.append(base)
        groups = ctx_df.groupby(["method", "selector", "point"], dropna=False)
        for (method, selector, point), grp in groups:
            counts = _status_counts(grp["status"])
            row: dict = {**ctx, "method": method, "selector": selector, "point": point,
                         **counts}
            row["status"] = status_text(counts["n_ok"], counts["n_failed"],
                                        counts["n_incomplete"])
            grp_ok = grp[grp["status"] == "ok"]
            for col in score_cols:
                stage, probe, metric = parse_score_key(col)  # type: ignore[misc]
                if stage == "before":
                    continue
                name = score_key("score" if stage == "after" else stage, probe, metric)
                row.update(_stats(name, grp_ok[col]))
                row.update(_probe_stats(name, grp_ok, col))
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_m"] = out["method"].map(lambda m: rank(m, METHOD_ORDER))
    out["_s"] = out["selector"].map(lambda s: rank(s, SELECTOR_ORDER))
    out = out.sort_values([*CONTEXT_KEYS, "_m", "_s", "point"], kind="stable")
    out = out.drop(columns=["_m", "_s"])
    return out.reset_index(drop=True)


def display_columns(df: pd.DataFrame) -> list[Column]:
    """Target metric(s) first, then each probe's primary metric for the protocols present."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    cols: list[Column] = []
    present = {str(c) for c in df.columns}

    def add(probe: str, metric: str, hib: bool | None) -> None:
        if score_key("after", probe, metric) not in present:
            return
        col = Column(probe, metric, higher_is_better(metric) if hib is None else bool(hib))
        if all((c.probe, c.metric) != (probe, metric) for c in cols):
            cols.append(col)

    if "target_metric" in ok:
        pairs = ok[["target_metric", "target_higher_is_better"]].dropna(subset=["target_metric"])
        for metric, hib in pairs.drop_duplicates("target_metric").itertuples(index=False):
            add(TARGET, str(metric), hib)
    protocols = sorted({str(p) for p in df.get("protocol", pd.Series(["harness"])).dropna()})
    for probe in probes_in(df, "after"):
        if probe == TARGET and any(c.probe == TARGET for c in cols):
            continue
        before = len(cols)
        for protocol in protocols:
            found = primary_metric(probe, protocol)
            if found:
                add(probe, *found)
        if len(cols) == before:  # unknown probe or its primary metric missing: first one logged
            metrics = sorted(p[2] for c in present if (p := parse_score_key(c))
                             and p[0] == "after" and p[1] == probe)
            if metrics:
                add(probe, metrics[0], None)
    return cols


def fmt(value: float, signed: bool = False) -> str:
    """4 significant digits: enough to compare methods, short enough for a table."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _cell(row: pd.Series, key: str, signed: bool) -> str:
    if row["n_ok"] == 0:
        if row["n_failed"]:
            return f"failed ({int(row['n_failed'])})"
        return f"incomplete ({int(row['n_incomplete'])})"
    n = row.get(f"{key}:n", 0)
    n = 0 if pd.isna(n) else int(n)
    if n == 0:
        return "–"
    mean = row[f"{key}:mean"]
    if row["method"] == BASE and row[f"{key}:std"] == 0:  # every run saw the same base model
        text = fmt(mean, signed)
        return text if n == row["n_ok"] else f"{text} (n={n})"
    half = row.get(f"{key}:ci", math.nan)
    probe = ProbeCI.around(mean, row.get(f"{key}:probe_lo"), row.get(f"{key}:probe_hi"))
    return fmt_ci(MeanCI(float(mean), math.nan if pd.isna(half) else float(half), n), signed,
                  probe=probe)


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table (cells' own "|" escaped): the one table writer of the project."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(header), line(["---"] * len(header))]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _key_columns(summary: pd.DataFrame) -> list[str]:
    """method, selector, (grid point when a method ran several), data, protocol."""
    keys = ["method", "selector"]
    trained = summary[summary["method"] != BASE]
    if "point" in summary and trained["point"].nunique() > 1:
        keys.append("point")
    keys += ["data", "protocol"]
    return (["model"] if summary["model"].nunique() > 1 else []) + keys


def _beyond_heldout_table(trained: pd.DataFrame, keys: list[str],
                          columns: Sequence[Column]) -> str:
    """Target change minus the held-out probe's change (fact learning), if any run has it."""
    def key(c: Column) -> str:
        return score_key("beyond_heldout", TARGET, c.metric)

    targets = [c for c in columns if c.probe == TARGET and f"{key(c)}:mean" in trained]
    if not targets or trained[[f"{key(c)}:mean" for c in targets]].isna().all().all():
        return ""
    table = md_table(
        [*keys, "runs", *(c.header("Δ beyond held-out ") for c in targets)],
        ([*(str(r[k]) for k in keys), str(r["status"]),
          *(_cell(r, key(c), True) for c in targets)] for _, r in trained.iterrows()),
    )
    return (
        "### Target change beyond the held-out questions\n\n"
        f"{table}\n\n"
        "The target's change minus the same scorer's change on held-out questions of the same "
        "task. What both gain is answer format; this is what was learned about the trained "
        "items themselves.\n\n"
    )


def _paired_note(summary: pd.DataFrame) -> str:
    """The ``probe ±`` and ``†`` legend, when any change of the tables carries one."""
    cols = [c for c in summary.columns if str(c).endswith(":probe_lo")]
    if not cols or summary[cols].isna().all().all():
        return ""
    return f"{PAIRED_NOTE} {UNRESOLVED_NOTE}"


def markdown_tables(summary: pd.DataFrame, columns: Sequence[Column], notes: str = "") -> str:
    """Scores (with the base row) and after − before changes, one Markdown table each;
    ``notes``: lines said under them (the items per probe)."""
    if summary.empty:
        return "_no runs_\n"
    keys = _key_columns(summary)
    scores = md_table(
        [*keys, "runs", *(c.header() for c in columns)],
        ([*(str(r[k]) for k in keys), str(r["status"]),
          *(_cell(r, score_key("score", c.probe, c.metric), False) for c in columns)]
         for _, r in summary.iterrows()),
    )
    trained = summary[summary["method"] != BASE]
    deltas = md_table(
        [*keys, "runs", *(c.header("Δ ") for c in columns)],
        ([*(str(r[k]) for k in keys), str(r["status"]),
          *(_cell(r, score_key("delta", c.probe, c.metric), True) for c in columns)]
         for _, r in trained.iterrows()),
    )
    beyond = _beyond_heldout_table(trained, keys, columns)
    return (
        "### Scores after training (base = before training)\n\n"
        f"{scores}\n\n"
        "### Change (after − before)\n\n"
        f"{deltas}\n\n"
        f"{beyond}"
        f"{CI_NOTE} ↑/↓ = the better direction, so forgetting is a Δ against the arrow. "
        "Failed runs count in `runs` and never contribute numbers.\n"
        + "".join(f"\n{line}\n" for line in (_paired_note(summary), notes) if line)
    )


def problem_runs(df: pd.DataFrame, limit: int = 160) -> str:
    """Markdown list of failed/incomplete runs with their one-line error."""
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return ""
    lines = ["### Failed / incomplete runs", ""]
    for _, r in bad.iterrows():
        label = r["method"] if r["selector"] == NO_SELECTOR else f"{r['method']}/{r['selector']}"
        err = str(r.get("error") or "").strip().splitlines()
        msg = (err[0] if err else "no error message")[:limit]
        lines.append(f"- `{r['run_id']}` ({label}, seed {r.get('seed')}): {r['status']}: {msg}")
    return "\n".join(lines) + "\n"


def markdown_report(df: pd.DataFrame, summary: pd.DataFrame, title: str, lead: str = "") -> str:
    """The whole summary.md: heading, ``lead`` (the report's answer, said before any per-run
    table), both tables, failed-run list."""
    columns = display_columns(df)
    models = sorted(df["model"].dropna().unique()) if "model" in df else []
    line = f"{len(df)} runs; model: {', '.join(f'`{m}`' for m in models)}\n" if models else ""
    notes = runs_items_note(df, [c.probe for c in columns])
    parts = [f"## {title}\n", line, *([lead] if lead else []),
             markdown_tables(summary, columns, notes)]
    problems = problem_runs(df)
    if problems:
        parts.append(problems)
    return "\n".join(parts)
