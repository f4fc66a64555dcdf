"""Sections 1-5 of the report: the fact stream (issue 24) - one fact step of SMF / LoRA / full,
the SMF step per phase, peak memory, the targets, and the stream times of real runs."""

from __future__ import annotations

from typing import Any

from bench_facts import PHASES, read_stream_runs, summarise_stream_runs
from cases import med
from mdtable import GiB, fgib, table

from .cells import fx, met, ms, ratio, status
from .results import Results

# issue 24 targets
T_FACT_SMF_VS_FULL = 0.5
T_FACT_1M_VS_262K = 1.1
T_FACT_RSS_HEADROOM_GB = 2.0
T_STREAM_1000_MIN = 15.0
T_SCORING_SHARE = 0.30


def fact_sections(rep: Results) -> list[str]:
    """Sections 1-5: fact step, phases, peak memory, targets, real-run stream times."""
    return [
        *fact_steps(rep),
        *fact_phases(rep),
        *fact_memory(rep),
        *fact_targets(rep),
        *stream_runs(rep),
    ]


def fact_key(name: str, p: int, prec: str) -> str:
    return f"facts/{name}/p{p}/{prec}"


def smf_name(keys: int) -> str:
    return f"smf/{keys}"


def slots(keys: int) -> str:
    """Slots per layer as the issue writes them: 262K, 1M."""
    return f"{keys**2 / 2**20:.2g}M" if keys**2 >= 2**20 else f"{keys**2 // 1000}K"


def tokens(rep: Results, key: str) -> str:
    """Median real tokens / median padded shape of the timed steps."""
    r = rep.r(key) or {}
    real, padded = r.get("real_tokens"), r.get("padded")
    if not real or not padded:
        return "n/a"
    batch = padded[0][0]
    return f"{med(real):.0f} / {batch}x{med([c for _, c in padded]):.0f}"


def fact_steps(rep: Results) -> list[str]:
    s = rep.s
    lo = s.fact_keys[0]
    out = [
        "## 1. Fact stream: one fact step",
        "",
        f"What every experiment now runs: one optimizer step on the phrasings of ONE "
        f"TriviaQA fact (`data=triviaqa_facts`, the stream's first {s.fact_runs} steps after "
        f"{s.warmup} warm-up, real phrasing lengths, padded to the longest of the step), "
        f"through the real method modules and a Lightning Trainer. SMF: `memory=empty` "
        f"(zero values, n_keys {' / '.join(str(k) for k in s.fact_keys)} = "
        f"{' / '.join(slots(k) for k in s.fact_keys)} slots per layer), top_t "
        f"{s.fact_top_t}, lr_unit row_rms, synthetic background statistics; LoRA and full: "
        f"`conf/method/*.yaml`, no memory. bf16 = Lightning `bf16-mixed`. Tokens = median "
        f"real tokens / padded batch shape.",
        "",
    ]
    rows = []
    for prec in ("fp32", "bf16"):
        for p in s.fact_phrasings:
            names = [smf_name(k) for k in s.fact_keys] + ["lora", "full"]
            full = rep.wall(fact_key("full", p, prec))
            smf_lo = rep.wall(fact_key(smf_name(lo), p, prec))
            for name in names:
                key = fact_key(name, p, prec)
                r = rep.r(key) or {}
                w = rep.wall(key)
                label = f"SMF {slots(int(name[4:]))}" if name.startswith("smf") \
                    else {"lora": "LoRA", "full": "full"}[name]
                rows.append([
                    label, str(p), prec, tokens(rep, key),
                    f"{r['trainable']:,}" if "trainable" in r else "n/a",
                    *rep.cells(key),
                    fx(ratio(w, full)),
                    fx(ratio(w, smf_lo)) if name.startswith("smf") else "",
                    fx(ratio(w, rep.wall(fact_key(name, p, "fp32")))),
                    fgib(rep.rss(key)),
                ])
    out += table(
        ["method", "phrasings", "precision", "tokens", "trainable params",
         "median wall (s)", "median CPU (s)", "vs full (same batch, precision)",
         f"vs SMF {slots(lo)}", "vs fp32", "peak RSS (GiB)"],
        rows,
        "---|---:|---|---:|---:|" + "---:|" * 6,
    )
    return out


def fact_phases(rep: Results) -> list[str]:
    keys = [k for k in rep.res if k.startswith("phases/")]
    out = [
        "## 2. The SMF fact step per phase",
        "",
        "Median seconds per phase over the same fact steps as section 1 (a clock wraps the "
        "functions `_sparse_step` calls, each also a `torch.profiler` `record_function` "
        "range; a phase's time excludes the wrapped calls inside it; Lightning overhead = "
        "the batch's wall time minus every phase). Floor = the least that phase needs, "
        "measured in the same process on the same batches; what a phase spends beyond "
        "its floor is overhead to remove (issue 24, item 2).",
        "",
    ]
    done = [k for k in keys if not status(rep.r(k))]
    for k in keys:
        if status(rep.r(k)):
            out += [f"- `{k}`: {status(rep.r(k))}", ""]
    if not done:
        return out
    labels = [phase_label(k) for k in done]
    rows = []
    first = rep.r(done[0]) or {}
    step = first["phases"].get("wall") or 0.0
    for phase, label, floor in PHASES:
        cells = [ms(rep.r(k)["phases"].get(phase)) for k in done]  # type: ignore[index]
        own = first["phases"].get(phase)
        fl = first.get("floors", {}).get(phase)
        rows.append([
            label, *cells,
            "n/a" if own is None or not step else f"{100 * own / step:.1f}%",
            ms(fl) if fl is not None else "-",
            floor,
        ])
    rows.append([
        "**whole step (median)**",
        *[ms(rep.r(k)["phases"].get("wall")) for k in done],  # type: ignore[index]
        "100%", ms(sum(first.get("floors", {}).values()) or None), "sum of the floors",
    ])
    out += table(
        ["phase", *[f"{lab} (ms)" for lab in labels], f"share ({labels[0]})",
         f"floor ({labels[0]}, ms)", "floor is"],
        rows,
        "---|" + "---:|" * (len(done) + 2) + "---|",
    )
    return out


def phase_label(key: str) -> str:
    """phases/smf/512/p4/fp32 -> 262K, 4 phr., fp32."""
    _, _, keys, p, prec = key.split("/")
    return f"{slots(int(keys))}, {p[1:]} phr., {prec}"


def fact_memory(rep: Results) -> list[str]:
    s = rep.s
    out = [
        "## 3. Fact-stream peak memory (RSS)",
        "",
        "Peak RSS of each fact-step child (`ru_maxrss`: model load, imports and the "
        "steps), next to the fp32 value tables of all memory layers. Target (issue 24): "
        f"SMF with {slots(s.fact_keys[-1])} slots at <= tables + "
        f"{T_FACT_RSS_HEADROOM_GB:g} GiB.",
        "",
    ]
    rows = [["idle child (imports only)", "", "", "n/a", fgib(rep.rss("idle")), "n/a"]]
    for prec in ("fp32", "bf16"):
        for p in s.fact_phrasings:
            for name in [*(smf_name(k) for k in s.fact_keys), "lora", "full"]:
                key = fact_key(name, p, prec)
                r = rep.r(key)
                if r is None:
                    continue
                tables = r.get("tables_bytes")
                rss = rep.rss(key)
                extra = None if rss is None or tables is None else rss - tables
                rows.append([name, str(p), prec, fgib(tables), status(r) or fgib(rss),
                             fgib(extra)])
    out += table(
        ["configuration", "phrasings", "precision", "value tables (GiB)", "peak RSS (GiB)",
         "peak RSS - tables (GiB)"],
        rows,
        "---|---:|---|---:|---:|---:|",
    )
    return out


def rss_headroom(rep: Results) -> float | None:
    """The largest peak RSS - tables of the largest-table SMF fact steps (bytes)."""
    s = rep.s
    name = smf_name(s.fact_keys[-1])
    values = []
    for prec in ("fp32", "bf16"):
        for p in s.fact_phrasings:
            key = fact_key(name, p, prec)
            rss, tables = rep.rss(key), (rep.r(key) or {}).get("tables_bytes")
            if rss is not None and tables is not None and not status(rep.r(key)):
                values.append(rss - tables)
    return max(values) if values else None


def fact_targets(rep: Results) -> list[str]:
    s = rep.s
    lo, hi = smf_name(s.fact_keys[0]), smf_name(s.fact_keys[-1])
    rows = []
    for p in s.fact_phrasings:
        x = ratio(rep.wall(fact_key(lo, p, "fp32")),
                  rep.wall(fact_key("full", p, "fp32")))
        rows.append([f"SMF {slots(s.fact_keys[0])} / full fact step, fp32, {p} "
                     f"phrasings", fx(x), f"<= {T_FACT_SMF_VS_FULL}",
                     met(x, x is not None and x <= T_FACT_SMF_VS_FULL)])
    for prec in ("fp32", "bf16"):
        for p in s.fact_phrasings:
            x = ratio(rep.wall(fact_key(hi, p, prec)),
                      rep.wall(fact_key(lo, p, prec)))
            rows.append([f"SMF {slots(s.fact_keys[-1])} / SMF "
                         f"{slots(s.fact_keys[0])}, {prec}, {p} phrasings", fx(x),
                         f"<= {T_FACT_1M_VS_262K}",
                         met(x, x is not None and x <= T_FACT_1M_VS_262K)])
    extra = rss_headroom(rep)
    rows.append([f"SMF {slots(s.fact_keys[-1])} fact step: peak RSS - value tables "
                 f"(largest of its configs)", "n/a" if extra is None else
                 f"{extra / GiB:.2f} GiB", f"<= {T_FACT_RSS_HEADROOM_GB:g} GiB",
                 met(extra, extra is not None and extra <= T_FACT_RSS_HEADROOM_GB * GiB)])
    rows += stream_target_rows(rep)
    rows.append(["GPU: SMF 1M fact step / full, Qwen2.5-0.5B shape",
                 "see BENCHMARKS_GPU.md", "<= 0.5", "not measured here (`make gpu-check`)"])
    out = [
        "## 4. Targets (issue 24)",
        "",
        "Ratios of median wall times from this run; the stream rows come from real runs "
        "(section 5) and need `--stream-results`.",
        "",
    ]
    out += table(["check", "value", "target", "status"], rows, "---|---:|---:|---|")
    return out


def stream_summary(rep: Results) -> list[dict[str, Any]]:
    d = rep.s.stream_results
    return summarise_stream_runs(read_stream_runs(d)) if d else []


def stream_target_rows(rep: Results) -> list[list[str]]:
    summary = stream_summary(rep)
    smf = [g for g in summary if g["method"] == "smf" and g["n_facts"] == 1000]
    wall = smf[0]["wall"] / 60 if smf else None
    share = max((g["share"] for g in summary), default=None)
    none = "not measured (`--stream-results`)"
    return [
        ["1000-fact SMF stream wall time (median of real runs)",
         "n/a" if wall is None else f"{wall:.1f} min", f"<= {T_STREAM_1000_MIN:g} min",
         none if wall is None else met(wall, wall <= T_STREAM_1000_MIN)],
        ["scoring share of a run's wall time (largest per-method median)",
         "n/a" if share is None else f"{100 * share:.0f}%",
         f"<= {100 * T_SCORING_SHARE:.0f}%",
         none if share is None else met(share, share <= T_SCORING_SHARE)],
    ]


def stream_runs(rep: Results) -> list[str]:
    d = rep.s.stream_results
    out = ["## 5. Stream wall time and scoring share (real runs)", ""]
    if not d:
        return [*out, "Not measured by this suite: pass `--stream-results DIR` (a folder "
                "of finished runs, e.g. `make run`'s multirun folder or results/scale) to "
                "read `wall_seconds` and the scoring times of their results.json files.", ""]
    summary = stream_summary(rep)
    out += [
        f"From the results.json files under `{d}`: wall = `wall_seconds.total`; scoring = "
        "`eval_seconds` (before/after) + stream probe points + nested scores (their "
        "`seconds`); medians per method and stream length.",
        "",
    ]
    if not summary:
        return [*out, "No readable results.json with a wall time there.", ""]
    rows = [[g["method"], str(g["n_facts"] or "?"), str(g["runs"]), f"{g['wall'] / 60:.1f}",
             f"{g['scoring'] / 60:.1f}", f"{100 * g['share']:.0f}%"] for g in summary]
    out += table(["method", "facts", "runs", "median wall (min)", "median scoring (min)",
                  "scoring share"], rows, "---|---:|---:|---:|---:|---:|")
    return out
