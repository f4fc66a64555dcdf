"""Section 10 of the report: the scorers (smfexp fp32 and bf16 vs lm-evaluation-harness) on
the same model and rows, and the bf16 drift and speed targets (issue #5)."""

from __future__ import annotations

from cases import METRIC
from mdtable import fgib, fnum, table
from suite_plan import EVAL_MODES, EVAL_PROBES

from .cells import fx, ok, ratio, status
from .results import Results

T_MEDMCQA_POINTS = 1.0
T_WIKITEXT_REL = 0.01
T_EVAL_SPEEDUP = 3.0


def evaluation(rep: Results) -> list[str]:
    s = rep.s
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
        walls = [rep.wall(f"eval/{p}/{tag}") for p in EVAL_PROBES]
        totals[tag] = None if None in walls else sum(walls)  # type: ignore[arg-type]
    for probe in EVAL_PROBES:
        lm = rep.wall(f"eval/{probe}/lm-eval/fp32")
        for scorer, prec in EVAL_MODES:
            key = f"eval/{probe}/{scorer}/{prec}"
            r = rep.r(key) or {}
            value = f"{r['value']:.6g}" if not status(rep.r(key)) else "n/a"
            rows.append(
                [
                    probe,
                    str(r.get("rows", "n/a")),
                    scorer,
                    prec,
                    *rep.cells(key),
                    fx(ratio(lm, rep.wall(key))),
                    METRIC[probe][0],
                    value,
                    fgib(rep.rss(key)),
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
                fnum(totals[tag]),
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
        r = rep.r(f"eval/{probe}/{scorer}/{prec}")
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
