"""Benchmark suite (issues #8, #24): the fact stream (one fact step of SMF / LoRA / full, the
SMF step per phase, its peak memory, the targets), then forward, training step, SMF scaling
and peak memory at the old 8 x 256-token / 16K-slot shape, and evaluation.

    python benchmarks/suite.py [--quick] [--out BENCHMARKS.md] [--runs 3]
                               [--only facts,forward,train,scaling,eval] [--json RAW.json]
                               [--fact-runs 10] [--fact-keys 512,1024] [--fact-phrasings 4,8]
                               [--stream-results DIR]
                               [--medmcqa 200 --triviaqa 200 --wikitext 5] [--threads N]
                               [--dense-large]

(``make bench``; ``make bench BENCH_ARGS=--quick`` for the smoke test.) ``--help`` lists the
rest (batch, sequence length, n_keys pair, eval batch size and repetitions, timeouts).

Writes one Markdown file (atomically): the machine (CPU model, cores, bf16/AMX flags, library
versions, date), the exact command, and one table per section with median seconds, ratios and
peak RSS. Progress goes to stdout.

How it measures (child processes, medians, the real method modules): see ``cases.py``, which
this file drives; here are the command line and the report.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# first: cases sets sys.path (src/) and the environment (offline hub, no progress bars)
# before its heavy imports
from bench_facts import PHASES, read_stream_runs, summarise_stream_runs
from cases import (
    EVAL_MODES,
    EVAL_PROBES,
    METRIC,
    PRECISIONS,
    SECTIONS,
    SELECTORS,
    SHORT,
    GiB,
    Settings,
    machine_info,
    med,
    plan,
    progress_line,
    run_isolated,
)

from smfexp.utils.io import atomic_write_json, atomic_write_text
from smfexp.utils.precision import resolve_precision

# issue #5 / #8 targets
T_SMF_BF16_VS_FULL_FP32 = 0.35
T_SMF_VS_FULL = 0.6
T_SMF_VS_LORA = 0.9
T_SCALING = 1.2
T_RSS_HEADROOM_GB = 2.0
T_MEDMCQA_POINTS = 1.0
T_WIKITEXT_REL = 0.01
T_EVAL_SPEEDUP = 3.0
# issue 24 targets (the fact stream)
T_FACT_SMF_VS_FULL = 0.5
T_FACT_1M_VS_262K = 1.1
T_FACT_RSS_HEADROOM_GB = 2.0
T_STREAM_1000_MIN = 15.0
T_SCORING_SHARE = 0.30


# =========================================================================== command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, small sizes (smoke test)")
    p.add_argument("--out", default="BENCHMARKS.md", help="Markdown output (written atomically)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--runs", type=int, default=3, help="timed repetitions per config (>= 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (2)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--model", default=None, help="conf/model entry (default smollm2-135m)")
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (256)")
    p.add_argument("--small-keys", type=int, default=None, help="n_keys of the default (128)")
    p.add_argument("--large-keys", type=int, default=None, help="n_keys of the large (1024)")
    p.add_argument(
        "--scaling-precision",
        default="auto",
        help="precision of the scaling steps (auto: bf16-mixed if the CPU has it)",
    )
    p.add_argument("--medmcqa", type=int, default=None, help="eval rows (200)")
    p.add_argument("--triviaqa", type=int, default=None, help="eval rows (64)")
    p.add_argument("--wikitext", type=int, default=None, help="eval documents (3)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="smfexp/lm_eval batch (16)")
    p.add_argument("--eval-runs", type=int, default=None, help="eval repetitions (--runs)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (0: torch's default; --quick: 1, steadier on shared cores)",
    )
    p.add_argument(
        "--update-threads",
        type=int,
        default=1,
        help="torch threads for the update-alone timings (1, as bench_sparse_update.py: "
        "ms-scale ops on shared cores stall on OpenMP barriers)",
    )
    p.add_argument(
        "--dense-large",
        action="store_true",
        help="also run dense_masked configs that need > 4 GiB (1M slots: ~16 GiB for one table)",
    )
    p.add_argument("--fact-runs", type=int, default=None,
                   help="timed fact steps per fact-stream config (10; --quick: 3)")
    p.add_argument("--fact-keys", default=None,
                   help="n_keys of the empty memories, comma-separated (512,1024; --quick: 64,128)")
    p.add_argument("--fact-phrasings", default="4,8", help="phrasings per fact step (4,8)")
    p.add_argument("--fact-top-t", type=int, default=None, help="SMF rows per layer (1024)")
    p.add_argument(
        "--stream-results",
        default=None,
        help="folders of real runs, comma-separated: their results.json files give the "
        "stream wall time and the scoring share (median per method and stream length; "
        "resumed runs left out)",
    )
    p.add_argument("--data-dir", default=None, help="offline data ($SMFEXP_DATA_DIR, ./data)")
    p.add_argument("--logs", default=None, help="keep each child's output here (default: temp)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    args = p.parse_args(argv)
    if args.runs < 3 or (args.eval_runs is not None and args.eval_runs < 3):
        p.error("medians need >= 3 repetitions (--runs / --eval-runs)")
    if args.fact_runs is not None and args.fact_runs < 3:
        p.error("medians need >= 3 repetitions (--fact-runs)")
    bad = sorted(set(args.only.split(",")) - set(SECTIONS))
    if bad:
        p.error(f"--only: unknown section(s) {bad}; valid: {','.join(SECTIONS)}")
    return args


def make_settings(args: argparse.Namespace) -> Settings:
    q = args.quick

    def pick(value: Any, quick: Any, full: Any) -> Any:
        return value if value is not None else (quick if q else full)

    precision = resolve_precision(args.scaling_precision, "cpu")
    if precision not in PRECISIONS:
        raise SystemExit(f"--scaling-precision: use auto, 32-true or bf16-mixed, not {precision}")
    return Settings(
        quick=q,
        model=pick(args.model, "tiny", "smollm2-135m"),
        batch=pick(args.batch, 2, 8),
        seq=pick(args.seq, 64, 256),
        runs=args.runs,
        warmup=pick(args.warmup, 1, 2),
        small_keys=pick(args.small_keys, 32, 128),
        large_keys=pick(args.large_keys, 256, 1024),
        update_dim=64 if q else 576,
        top_t=512,
        scaling_precision=precision,
        eval_rows={
            "medmcqa": pick(args.medmcqa, 8, 200),
            "triviaqa": pick(args.triviaqa, 1, 64),
            "wikitext": pick(args.wikitext, 1, 3),
        },
        eval_batch_size=pick(args.eval_batch_size, 8, 16),
        eval_runs=args.eval_runs or args.runs,
        threads=pick(args.threads, 1, 0),
        update_threads=args.update_threads,
        dense_large=args.dense_large,
        data_dir=args.data_dir,
        timeout=args.timeout,
        fact_phrasings=ints(args.fact_phrasings),
        fact_keys=ints(args.fact_keys or ("64,128" if q else "512,1024")),
        fact_runs=pick(args.fact_runs, 3, 10),
        fact_top_t=pick(args.fact_top_t, 256, 1024),
        stream_results=args.stream_results,
    )


def ints(text: str) -> tuple[int, ...]:
    """"4,8" -> (4, 8)."""
    return tuple(int(x) for x in text.split(",") if x.strip())


# =========================================================================== markdown
def fs(x: float | None) -> str:
    """Seconds (4 significant digits)."""
    return "n/a" if x is None else f"{x:.4g}"


def fx(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}x"


def fgb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / GiB:.2f}"


def ok(value: float | None, good: bool) -> str:
    return "n/a" if value is None else ("yes" if good else "**no**")


def met(value: float | None, good: bool) -> str:
    """A target's status cell (issue 24 wording)."""
    return "n/a" if value is None else ("met" if good else "**not met**")


def ms(x: float | None) -> str:
    """Seconds as milliseconds (4 significant digits)."""
    return "n/a" if x is None else f"{x * 1e3:.4g}"


def status(r: dict[str, Any] | None) -> str | None:
    """A cell text for a config that has no timings."""
    if r is None:
        return "not run"
    if "error" in r:
        return "failed"
    if "skipped" in r:
        return "skipped"
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def table(head: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or ("---|" + "---:|" * (len(head) - 1))
    out = ["| " + " | ".join(head) + " |", "|" + align]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


class Report:
    def __init__(self, s: Settings, results: dict[str, dict[str, Any]]) -> None:
        self.s, self.res = s, results

    def r(self, key: str) -> dict[str, Any] | None:
        return self.res.get(key)

    def wall(self, key: str) -> float | None:
        r = self.r(key)
        return med(r.get("wall")) if r and not status(r) else None

    def cpu(self, key: str) -> float | None:
        r = self.r(key)
        return med(r.get("cpu")) if r and not status(r) else None

    def rss(self, key: str) -> int | None:
        r = self.r(key)
        return r.get("peak_rss") if r and "error" not in r and "skipped" not in r else None

    def cells(self, key: str) -> list[str]:
        """median wall, median CPU (or the status)."""
        st = status(self.r(key))
        return [st, st] if st else [fs(self.wall(key)), fs(self.cpu(key))]

    def old_note(self) -> str:
        s = self.s
        return (
            f"> Old shape (issue 5, before the fact stream): random-token {s.batch}x{s.seq} "
            f"batches and `conf/memory/default.yaml` memories (n_keys {s.small_keys}, knn 16, "
            f"random values). Today's runs have the shape of sections 1-5."
        )

    # ---------------------------------------------------------------- sections
    # ---------------------------------------------------------------- fact stream (issue 24)
    def facts(self) -> list[str]:
        """Sections 1-5: fact step, phases, peak memory, targets, real-run stream times."""
        return [
            *self.fact_steps(),
            *self.fact_phases(),
            *self.fact_memory(),
            *self.fact_targets(),
            *self.stream_runs(),
        ]

    def fact_key(self, name: str, p: int, prec: str) -> str:
        return f"facts/{name}/p{p}/{prec}"

    def smf_name(self, keys: int) -> str:
        return f"smf/{keys}"

    def slots(self, keys: int) -> str:
        """Slots per layer as the issue writes them: 262K, 1M."""
        return f"{keys**2 / 2**20:.2g}M" if keys**2 >= 2**20 else f"{keys**2 // 1000}K"

    def tokens(self, key: str) -> str:
        """Median real tokens / median padded shape of the timed steps."""
        r = self.r(key) or {}
        real, padded = r.get("real_tokens"), r.get("padded")
        if not real or not padded:
            return "n/a"
        batch = padded[0][0]
        return f"{med(real):.0f} / {batch}x{med([c for _, c in padded]):.0f}"

    def fact_steps(self) -> list[str]:
        s = self.s
        lo = s.fact_keys[0]
        out = [
            "## 1. Fact stream: one fact step",
            "",
            f"What every experiment now runs: one optimizer step on the phrasings of ONE "
            f"TriviaQA fact (`data=triviaqa_facts`, the stream's first {s.fact_runs} steps after "
            f"{s.warmup} warm-up, real phrasing lengths, padded to the longest of the step), "
            f"through the real method modules and a Lightning Trainer. SMF: `memory=empty` "
            f"(zero values, n_keys {' / '.join(str(k) for k in s.fact_keys)} = "
            f"{' / '.join(self.slots(k) for k in s.fact_keys)} slots per layer), top_t "
            f"{s.fact_top_t}, lr_unit row_rms, synthetic background statistics; LoRA and full: "
            f"`conf/method/*.yaml`, no memory. bf16 = Lightning `bf16-mixed`. Tokens = median "
            f"real tokens / padded batch shape.",
            "",
        ]
        rows = []
        for prec in ("fp32", "bf16"):
            for p in s.fact_phrasings:
                names = [self.smf_name(k) for k in s.fact_keys] + ["lora", "full"]
                full = self.wall(self.fact_key("full", p, prec))
                smf_lo = self.wall(self.fact_key(self.smf_name(lo), p, prec))
                for name in names:
                    key = self.fact_key(name, p, prec)
                    r = self.r(key) or {}
                    w = self.wall(key)
                    label = f"SMF {self.slots(int(name[4:]))}" if name.startswith("smf") \
                        else {"lora": "LoRA", "full": "full"}[name]
                    rows.append([
                        label, str(p), prec, self.tokens(key),
                        f"{r['trainable']:,}" if "trainable" in r else "n/a",
                        *self.cells(key),
                        fx(ratio(w, full)),
                        fx(ratio(w, smf_lo)) if name.startswith("smf") else "",
                        fx(ratio(w, self.wall(self.fact_key(name, p, "fp32")))),
                        fgb(self.rss(key)),
                    ])
        out += table(
            ["method", "phrasings", "precision", "tokens", "trainable params",
             "median wall (s)", "median CPU (s)", "vs full (same batch, precision)",
             f"vs SMF {self.slots(lo)}", "vs fp32", "peak RSS (GiB)"],
            rows,
            "---|---:|---|---:|---:|" + "---:|" * 6,
        )
        return out

    def fact_phases(self) -> list[str]:
        keys = [k for k in self.res if k.startswith("phases/")]
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
        done = [k for k in keys if not status(self.r(k))]
        for k in keys:
            if status(self.r(k)):
                out += [f"- `{k}`: {status(self.r(k))}", ""]
        if not done:
            return out
        labels = [self.phase_label(k) for k in done]
        rows = []
        first = self.r(done[0]) or {}
        step = first["phases"].get("wall") or 0.0
        for phase, label, floor in PHASES:
            cells = [ms(self.r(k)["phases"].get(phase)) for k in done]  # type: ignore[index]
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
            *[ms(self.r(k)["phases"].get("wall")) for k in done],  # type: ignore[index]
            "100%", ms(sum(first.get("floors", {}).values()) or None), "sum of the floors",
        ])
        out += table(
            ["phase", *[f"{lab} (ms)" for lab in labels], f"share ({labels[0]})",
             f"floor ({labels[0]}, ms)", "floor is"],
            rows,
            "---|" + "---:|" * (len(done) + 2) + "---|",
        )
        return out

    def phase_label(self, key: str) -> str:
        """phases/smf/512/p4/fp32 -> 262K, 4 phr., fp32."""
        _, _, keys, p, prec = key.split("/")
        return f"{self.slots(int(keys))}, {p[1:]} phr., {prec}"

    def fact_memory(self) -> list[str]:
        s = self.s
        out = [
            "## 3. Fact-stream peak memory (RSS)",
            "",
            "Peak RSS of each fact-step child (`ru_maxrss`: model load, imports and the "
            "steps), next to the fp32 value tables of all memory layers. Target (issue 24): "
            f"SMF with {self.slots(s.fact_keys[-1])} slots at <= tables + "
            f"{T_FACT_RSS_HEADROOM_GB:g} GiB.",
            "",
        ]
        rows = [["idle child (imports only)", "", "", "n/a", fgb(self.rss("idle")), "n/a"]]
        for prec in ("fp32", "bf16"):
            for p in s.fact_phrasings:
                for name in [*(self.smf_name(k) for k in s.fact_keys), "lora", "full"]:
                    key = self.fact_key(name, p, prec)
                    r = self.r(key)
                    if r is None:
                        continue
                    tables = r.get("tables_bytes")
                    rss = self.rss(key)
                    extra = None if rss is None or tables is None else rss - tables
                    rows.append([name, str(p), prec, fgb(tables), status(r) or fgb(rss),
                                 fgb(extra)])
        out += table(
            ["configuration", "phrasings", "precision", "value tables (GiB)", "peak RSS (GiB)",
             "peak RSS - tables (GiB)"],
            rows,
            "---|---:|---|---:|---:|---:|",
        )
        return out

    def rss_headroom(self) -> float | None:
        """The largest peak RSS - tables of the largest-table SMF fact steps (bytes)."""
        s = self.s
        name = self.smf_name(s.fact_keys[-1])
        values = []
        for prec in ("fp32", "bf16"):
            for p in s.fact_phrasings:
                key = self.fact_key(name, p, prec)
                rss, tables = self.rss(key), (self.r(key) or {}).get("tables_bytes")
                if rss is not None and tables is not None and not status(self.r(key)):
                    values.append(rss - tables)
        return max(values) if values else None

    def fact_targets(self) -> list[str]:
        s = self.s
        lo, hi = self.smf_name(s.fact_keys[0]), self.smf_name(s.fact_keys[-1])
        rows = []
        for p in s.fact_phrasings:
            x = ratio(self.wall(self.fact_key(lo, p, "fp32")),
                      self.wall(self.fact_key("full", p, "fp32")))
            rows.append([f"SMF {self.slots(s.fact_keys[0])} / full fact step, fp32, {p} "
                         f"phrasings", fx(x), f"<= {T_FACT_SMF_VS_FULL}",
                         met(x, x is not None and x <= T_FACT_SMF_VS_FULL)])
        for prec in ("fp32", "bf16"):
            for p in s.fact_phrasings:
                x = ratio(self.wall(self.fact_key(hi, p, prec)),
                          self.wall(self.fact_key(lo, p, prec)))
                rows.append([f"SMF {self.slots(s.fact_keys[-1])} / SMF "
                             f"{self.slots(s.fact_keys[0])}, {prec}, {p} phrasings", fx(x),
                             f"<= {T_FACT_1M_VS_262K}",
                             met(x, x is not None and x <= T_FACT_1M_VS_262K)])
        extra = self.rss_headroom()
        rows.append([f"SMF {self.slots(s.fact_keys[-1])} fact step: peak RSS - value tables "
                     f"(largest of its configs)", "n/a" if extra is None else
                     f"{extra / GiB:.2f} GiB", f"<= {T_FACT_RSS_HEADROOM_GB:g} GiB",
                     met(extra, extra is not None and extra <= T_FACT_RSS_HEADROOM_GB * GiB)])
        rows += self.stream_target_rows()
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

    def stream_summary(self) -> list[dict[str, Any]]:
        d = self.s.stream_results
        return summarise_stream_runs(read_stream_runs(d)) if d else []

    def stream_target_rows(self) -> list[list[str]]:
        summary = self.stream_summary()
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

    def stream_runs(self) -> list[str]:
        d = self.s.stream_results
        out = ["## 5. Stream wall time and scoring share (real runs)", ""]
        if not d:
            return [*out, "Not measured by this suite: pass `--stream-results DIR` (a folder "
                    "of finished runs, e.g. `make run`'s multirun folder or results/scale) to "
                    "read `wall_seconds` and the scoring times of their results.json files.", ""]
        summary = self.stream_summary()
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

    def forward(self) -> list[str]:
        s = self.s
        layers = next(
            (
                r.get("layers")
                for k, r in self.res.items()
                if k.startswith("forward/retrofitted") and r.get("layers")
            ),
            "?",
        )
        out = [
            "## 6. Forward pass (old shape)",
            "",
            self.old_note(),
            "",
            f"Inference forward (`torch.inference_mode`, logits included) of a {s.batch}x"
            f"{s.seq}-token batch. Retrofitted = `conf/memory/default.yaml` memories "
            f"(n_keys {s.small_keys}: {s.small_keys**2:,} slots/layer) at blocks {layers}. "
            f"bf16 = `torch.autocast(bfloat16)` over fp32 weights.",
            "",
        ]
        rows = []
        for prec in ("fp32", "bf16"):
            for name in ("base", "retrofitted"):
                key = f"forward/{name}/{prec}"
                base = self.wall(f"forward/base/{prec}")
                fp32 = self.wall(f"forward/{name}/fp32")
                rows.append(
                    [
                        name,
                        prec,
                        *self.cells(key),
                        fx(ratio(self.wall(key), base)),
                        fx(ratio(self.wall(key), fp32)),
                        fgb(self.rss(key)),
                    ]
                )
        out += table(
            [
                "model",
                "precision",
                "median wall (s)",
                "median CPU (s)",
                "vs base (same precision)",
                "vs fp32 (same model)",
                "peak RSS (GiB)",
            ],
            rows,
            "---|---|" + "---:|" * 5,
        )
        return out

    def train(self) -> list[str]:
        s = self.s
        out = [
            "## 7. Training step (old shape)",
            "",
            self.old_note(),
            "",
            f"One optimizer step (forward + backward + update) on the same {s.batch}x{s.seq}"
            f"-token batch through the real method modules and a Lightning Trainer "
            f"(`conf/method/*.yaml`, grad_accum 1; SMF: `conf/memory/default.yaml`, top_t "
            f"512, RowSparseSGD; LoRA: rank 16 on q,k,v,o,gate,up,down; full: AdamW). "
            f"bf16 = Lightning `bf16-mixed` (fp32 master weights). tfidf/kl read "
            f"**synthetic random background counts** (no background pass).",
            "",
        ]
        rows = []
        for prec in ("fp32", "bf16"):
            for name in [*(f"smf/{sel}" for sel in SELECTORS), "lora", "full"]:
                key = f"train/{name}/{prec}"
                r = self.r(key) or {}
                w = self.wall(key)
                rows.append(
                    [
                        name,
                        prec,
                        f"{r['trainable']:,}" if "trainable" in r else "n/a",
                        *self.cells(key),
                        fx(ratio(w, self.wall(f"train/full/{prec}"))),
                        fx(ratio(w, self.wall(f"train/lora/{prec}"))),
                        fx(ratio(w, self.wall("train/full/fp32"))),
                        fgb(self.rss(key)),
                    ]
                )
        out += table(
            [
                "method",
                "precision",
                "trainable params",
                "median wall (s)",
                "median CPU (s)",
                "vs full (same precision)",
                "vs LoRA (same precision)",
                "vs full fp32",
                "peak RSS (GiB)",
            ],
            rows,
            "---|---|" + "---:|" * 7,
        )
        out += ["Targets (issue #5), ratios of median wall times:", ""]
        checks = [
            ("bf16 SMF step / fp32 full step", "bf16", "full", "fp32", T_SMF_BF16_VS_FULL_FP32),
            ("SMF / full, fp32", "fp32", "full", "fp32", T_SMF_VS_FULL),
            ("SMF / full, bf16", "bf16", "full", "bf16", T_SMF_VS_FULL),
            ("SMF / LoRA, fp32", "fp32", "lora", "fp32", T_SMF_VS_LORA),
            ("SMF / LoRA, bf16", "bf16", "lora", "bf16", T_SMF_VS_LORA),
        ]
        rows = []
        for label, p_smf, ref, p_ref, target in checks:
            cells = [label]
            for sel in SELECTORS:
                x = ratio(self.wall(f"train/smf/{sel}/{p_smf}"), self.wall(f"train/{ref}/{p_ref}"))
                cells.append("n/a" if x is None else f"{x:.3f}x ({ok(x, x <= target)})")
            rows.append([*cells, f"<= {target}"])
        out += table(
            ["ratio", *(f"SMF {sel}" for sel in SELECTORS), "target"],
            rows,
            "---|" + "---:|" * (len(SELECTORS) + 1),
        )
        return out

    def scaling(self) -> list[str]:
        s = self.s
        lo, hi = s.small_keys, s.large_keys
        out = [
            "## 8. SMF scaling (old shape)",
            "",
            self.old_note(),
            "",
            f"Does the SMF step cost depend on the table size? n_keys {lo} ({lo**2:,} slots"
            f"/layer) vs {hi} ({hi**2:,} slots/layer). Whole SMF training steps (tfidf, "
            f"synthetic background, {SHORT[s.scaling_precision]}, same batch as section 2) "
            f"with the row-sparse value optimizers (SGD is the method default; "
            f"`row_sparse+ckpt` = SGD with `method.gradient_checkpointing=true`, activations "
            f"recomputed in backward) and with the flawed `dense_masked` update "
            f"(`DenseMaskedAdamW`, what reference implementations do). Value tables = all "
            f"memory layers, fp32.",
            "",
        ]
        rows = []
        for update, opt in (
            ("row_sparse", "sgd"),
            ("row_sparse", "adam"),
            ("row_sparse+ckpt", "sgd"),
            ("dense_masked", "adamw"),
        ):
            for keys in (lo, hi):
                key = f"scaling/{update}/{opt}/{keys}"
                r = self.r(key) or {}
                tables = r.get("tables_bytes")
                rss = self.rss(key)
                rows.append(
                    [
                        update,
                        opt,
                        f"{keys} ({keys**2:,})",
                        fgb(tables),
                        *self.cells(key),
                        fx(ratio(self.wall(key), self.wall(f"scaling/{update}/{opt}/{lo}"))),
                        fgb(rss),
                        fgb(None if rss is None or tables is None else rss - tables),
                    ]
                )
        out += table(
            [
                "update",
                "optimizer",
                "n_keys (slots/layer)",
                "value tables (GiB)",
                "median wall (s)",
                "median CPU (s)",
                f"vs n_keys {lo}",
                "peak RSS (GiB)",
                "peak RSS - tables (GiB)",
            ],
            rows,
            "---|---|" + "---:|" * 7,
        )
        out += [
            f"The update alone (`bench_sparse_update.py`'s case: one table, v_dim "
            f"{s.update_dim}, real sparse gradient of {s.batch}x{s.seq} tokens x 4 heads x "
            f"16 knn reads spread over the table, t = {min(s.top_t, lo**2)} most-read rows "
            f"selected), median of {s.runs} `step()` calls after {max(s.warmup, 1)} warm-up, "
            f"{s.update_threads or 'default'} torch thread(s):",
            "",
        ]
        rows = []
        for opt, name in (
            ("sgd", "RowSparseSGD (momentum 0.9)"),
            ("adam", "RowSparseAdam"),
            ("dense", "DenseMaskedAdamW (dense_masked)"),
        ):
            for keys in (lo, hi):
                key = f"update/{opt}/{keys}"
                r = self.r(key) or {}
                st = status(self.r(key))
                t = r.get("median_s") if not st else None
                t_lo = (self.r(f"update/{opt}/{lo}") or {}).get("median_s")
                rows.append(
                    [
                        name,
                        f"{keys**2:,}",
                        fgb(r.get("tables_bytes")),
                        st or f"{t * 1e3:.4g}",
                        fx(ratio(t, t_lo)),
                        st or f"{r['state_bytes'] / 2**20:.1f}",
                        fgb(self.rss(key)),
                    ]
                )
        out += table(
            [
                "optimizer",
                "rows",
                "table (GiB)",
                "median step (ms)",
                f"vs {lo**2:,} rows",
                "optimizer state (MiB)",
                "peak RSS (GiB)",
            ],
            rows,
            "---|" + "---:|" * 6,
        )
        rows = []
        for label, key_lo, key_hi, val in (
            (
                "SMF step, row-sparse SGD",
                f"scaling/row_sparse/sgd/{lo}",
                f"scaling/row_sparse/sgd/{hi}",
                self.wall,
            ),
            (
                "SMF step, row-sparse Adam",
                f"scaling/row_sparse/adam/{lo}",
                f"scaling/row_sparse/adam/{hi}",
                self.wall,
            ),
            (
                "update alone, RowSparseSGD",
                f"update/sgd/{lo}",
                f"update/sgd/{hi}",
                lambda k: (self.r(k) or {}).get("median_s"),
            ),
            (
                "update alone, RowSparseAdam",
                f"update/adam/{lo}",
                f"update/adam/{hi}",
                lambda k: (self.r(k) or {}).get("median_s"),
            ),
        ):
            x = ratio(val(key_hi), val(key_lo))
            rows.append(
                [
                    f"{label}: {hi**2:,} / {lo**2:,} slots",
                    fx(x),
                    f"<= {T_SCALING}",
                    ok(x, x is not None and x <= T_SCALING),
                ]
            )
        out += table(["target (issue #5)", "value", "target", "ok"], rows, "---|---:|---:|---|")
        return out

    def memory(self) -> list[str]:
        s = self.s
        hi = s.large_keys
        out = [
            "## 9. Peak memory (RSS, old shape)",
            "",
            self.old_note(),
            "",
            "Every table above has each configuration's peak RSS (its own child process; "
            "`getrusage(RUSAGE_SELF).ru_maxrss`, imported libraries included). An idle "
            "child (imports only) is the floor:",
            "",
        ]
        rows = [
            [
                "idle child (the suite's imports only)",
                "n/a",
                fgb(self.rss("idle")),
                "n/a",
                "n/a",
                "n/a",
            ]
        ]
        for update, opt in (
            ("row_sparse", "sgd"),
            ("row_sparse", "adam"),
            ("row_sparse+ckpt", "sgd"),
            ("dense_masked", "adamw"),
        ):
            key = f"scaling/{update}/{opt}/{hi}"
            r = self.r(key)
            if r is None:
                continue
            tables = r.get("tables_bytes")
            rss = self.rss(key)
            extra = None if rss is None or tables is None else rss - tables
            cell = status(r) or fgb(rss)
            rows.append(
                [
                    f"SMF step, {update} {opt}, {hi**2:,} slots/layer",
                    fgb(tables),
                    cell,
                    fgb(extra),
                    f"<= tables + {T_RSS_HEADROOM_GB:g} GiB",
                    ok(extra, extra is not None and extra <= T_RSS_HEADROOM_GB * GiB),
                ]
            )
        out += table(
            [
                "configuration",
                "value tables (GiB)",
                "peak RSS (GiB)",
                "peak RSS - tables (GiB)",
                "target (issue #5)",
                "ok",
            ],
            rows,
            "---|---:|---:|---:|---:|---|",
        )
        peaks = []
        for sec in ("forward", "train", "scaling", "update", "eval"):
            keyed = [(self.rss(k), k) for k in self.res if k.startswith(sec + "/")]
            keyed = [(v, k) for v, k in keyed if v is not None]
            if keyed:
                v, k = max(keyed)
                peaks.append([sec, k, fgb(v)])
        if peaks:
            out += ["Largest peak per section:", ""]
            out += table(["section", "configuration", "peak RSS (GiB)"], peaks, "---|---|---:|")
        return out

    def eval(self) -> list[str]:
        s = self.s
        out = [
            "## 10. Evaluation",
            "",
            f"Harness protocol, same model object and rows for every scorer: smfexp "
            f"`score_probe` (fp32, and bf16 = `EvalConfig.precision`, autocast) vs "
            f"lm-evaluation-harness `simple_evaluate` (fp32), batch {s.eval_batch_size} "
            f"(lm_eval WikiText: batch 1). Rows: MedMCQA {s.eval_rows['medmcqa']}, TriviaQA "
            f"{s.eval_rows['triviaqa']}, WikiText {s.eval_rows['wikitext']} documents. "
            f"Median of {s.eval_runs} after a 2-row warm-up.",
            "",
        ]
        rows = []
        totals: dict[str, float | None] = {}
        for scorer, prec in EVAL_MODES:
            tag = f"{scorer}/{prec}"
            walls = [self.wall(f"eval/{p}/{tag}") for p in EVAL_PROBES]
            totals[tag] = None if None in walls else sum(walls)  # type: ignore[arg-type]
        for probe in EVAL_PROBES:
            lm = self.wall(f"eval/{probe}/lm-eval/fp32")
            for scorer, prec in EVAL_MODES:
                key = f"eval/{probe}/{scorer}/{prec}"
                r = self.r(key) or {}
                value = f"{r['value']:.6g}" if not status(self.r(key)) else "n/a"
                rows.append(
                    [
                        probe,
                        str(r.get("rows", "n/a")),
                        scorer,
                        prec,
                        *self.cells(key),
                        fx(ratio(lm, self.wall(key))),
                        METRIC[probe][0],
                        value,
                        fgb(self.rss(key)),
                    ]
                )
        for scorer, prec in EVAL_MODES:
            tag = f"{scorer}/{prec}"
            rows.append(
                [
                    "**all probes**",
                    "",
                    scorer,
                    prec,
                    fs(totals[tag]),
                    "",
                    fx(ratio(totals["lm-eval/fp32"], totals[tag])),
                    "",
                    "",
                    "",
                ]
            )
        out += table(
            [
                "probe",
                "rows",
                "scorer",
                "precision",
                "median wall (s)",
                "median CPU (s)",
                "lm-eval fp32 / this",
                "metric",
                "value",
                "peak RSS (GiB)",
            ],
            rows,
            "---|---:|---|---|---:|---:|---:|---|---:|---:|",
        )

        def val(probe: str, scorer: str, prec: str) -> float | None:
            r = self.r(f"eval/{probe}/{scorer}/{prec}")
            return None if status(r) else r["value"]  # type: ignore[index]

        a32, a16 = val("medmcqa", "smfexp", "fp32"), val("medmcqa", "smfexp", "bf16")
        w32, w16 = val("wikitext", "smfexp", "fp32"), val("wikitext", "smfexp", "bf16")
        acc_pts = None if a32 is None or a16 is None else 100 * (a16 - a32)
        wiki_rel = None if w32 is None or w16 is None else (w16 - w32) / w32
        speed = ratio(totals["lm-eval/fp32"], totals["smfexp/bf16"])
        speed32 = ratio(totals["lm-eval/fp32"], totals["smfexp/fp32"])
        rows = [
            [
                "MedMCQA accuracy, bf16 - fp32 (points)",
                "n/a" if acc_pts is None else f"{acc_pts:+.2f}",
                f"within +-{T_MEDMCQA_POINTS:g}",
                ok(acc_pts, acc_pts is not None and abs(acc_pts) <= T_MEDMCQA_POINTS),
            ],
            [
                "WikiText word perplexity, (bf16 - fp32) / fp32",
                "n/a" if wiki_rel is None else f"{100 * wiki_rel:+.3f}%",
                f"within +-{100 * T_WIKITEXT_REL:g}%",
                ok(wiki_rel, wiki_rel is not None and abs(wiki_rel) <= T_WIKITEXT_REL),
            ],
            [
                "all probes: lm-eval fp32 time / smfexp bf16 time",
                fx(speed),
                f">= {T_EVAL_SPEEDUP:g}x",
                ok(speed, speed is not None and speed >= T_EVAL_SPEEDUP),
            ],
            ["all probes: lm-eval fp32 time / smfexp fp32 time", fx(speed32), "-", "-"],
        ]
        out += ["bf16 drift and speed (targets, issue #5):", ""]
        out += table(["check", "value", "target", "ok"], rows, "---|---:|---:|---|")
        return out

    # ---------------------------------------------------------------- whole file
    def render(
        self,
        machine: dict[str, Any],
        command: str,
        sections: list[str],
        started: datetime.datetime,
        seconds: float,
    ) -> str:
        # imported here, not at the top: the measured children are forked from this process
        # and their peak RSS must not include pandas
        from smfexp.reporting.tables import md_table

        s = self.s
        threads = next((r["threads"] for r in self.res.values() if "threads" in r), "n/a")
        flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["flags"].items())
        versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        failures = [(k, r) for k, r in self.res.items() if "error" in r]
        skipped = [(k, r) for k, r in self.res.items() if "skipped" in r]
        lines = [
            "# smfexp benchmarks",
            "",
            f"Generated {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min by",
            "",
            f"    {command}",
            "",
        ]
        if s.quick:
            lines += [
                "> **--quick**: tiny random model, small batch and tables, a few eval rows. "
                "A smoke test of the suite: the numbers and ratios say nothing about the "
                "targets.",
                "",
            ]
        lines += ["## Machine", ""]
        machine_rows = [
            ["CPU", machine["cpu"]],
            [
                "cores",
                f"{machine['cpus']} logical CPUs ({machine['affinity']} usable), torch "
                f"threads {threads}",
            ],
            [
                "bf16 / AMX",
                f"{flags}; torch fast-bf16 path: "
                f"{'yes' if machine['fast_bf16'] else 'no'} (`precision: auto` = "
                f"{resolve_precision('auto', 'cpu')})",
            ],
            [
                "memory",
                f"{machine['mem_total_gb']:.1f} GiB, "
                f"{machine['mem_available_gb']:.1f} GiB available at start",
            ],
            ["load average at start", str(machine["loadavg"])],
            ["software", f"Python {machine['python']}, {versions}"],
            ["OS", machine["platform"]],
            ["model", f"`{s.model}` (conf/model/{s.model}.yaml)"],
        ]
        lines += [md_table(["", ""], machine_rows), ""]
        lines += [
            "## Method",
            "",
            "- Each configuration runs in its own child process (forked from the suite "
            "after imports, before any tensor work): peak RSS is per configuration.",
            f"- Timings: median of {s.runs} repetitions after {s.warmup} warm-up "
            f"(evaluation: {s.eval_runs}); wall = `perf_counter`, CPU = process CPU time "
            "(all threads). Ratios divide median wall times measured in this same run.",
            "- The machine may be shared: compare CPU with wall time to spot contention.",
            "",
        ]
        builders = {
            "facts": self.facts,
            "forward": self.forward,
            "train": self.train,
            "scaling": self.scaling,
            "eval": self.eval,
        }
        for sec in SECTIONS:
            if sec in sections:
                lines += builders[sec]()
            if sec == "scaling" and sec in sections:
                lines += self.memory()
        if failures or skipped:
            lines += ["## Failed or skipped configurations", ""]
            for k, r in failures:
                lines.append(f"- `{k}` failed: {r['error']}")
            for k, r in skipped:
                lines.append(f"- `{k}` skipped: {r['skipped']}")
            lines.append("")
        return "\n".join(lines)


# =========================================================================== main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = make_settings(args)
    sections = [x for x in SECTIONS if x in args.only.split(",")]
    command = "python benchmarks/suite.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    if "eval" in sections:  # import once here, so every forked child has it already
        import lm_eval.evaluator
        import lm_eval.models.huggingface
        import lm_eval.tasks  # noqa: F401
    machine = machine_info()
    specs = plan(sections, s)
    print(
        f"[suite] {len(specs)} configurations, sections {','.join(sections)}, model {s.model}"
        f"{' (--quick)' if s.quick else ''} -> {args.out}",
        flush=True,
    )
    logs = Path(args.logs or tempfile.mkdtemp(prefix="smfexp-suite-"))
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(specs, 1):
        print(
            f"[suite {i}/{len(specs)}] {spec['section']}: {spec['label']} ...", end=" ", flush=True
        )
        log = logs / (spec["id"].replace("/", "_") + ".log")
        results[spec["id"]] = run_isolated(spec, s, str(log))
        r = results[spec["id"]]
        print(f"{progress_line(spec, r)} [{r['elapsed']:.1f} s]", flush=True)
        if "error" in r:
            print(r.get("traceback", ""), f"(child output: {log})", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    text = Report(s, results).render(machine, command, sections, started, seconds)
    atomic_write_text(args.out, text + "\n")
    if args.json:
        atomic_write_json(
            args.json,
            {"settings": asdict(s), "machine": machine, "command": command, "results": results},
        )
    failed = [k for k, r in results.items() if "error" in r]
    if not failed and not args.logs:
        shutil.rmtree(logs, ignore_errors=True)
    print(
        f"[suite] wrote {args.out} in {seconds:.0f} s"
        f"{f'; {len(failed)} failed: ' + ', '.join(failed) if failed else ''}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
