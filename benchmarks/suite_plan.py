"""What the benchmark suite measures: its sections, the settings a run takes (``--quick``
and the full run differ only there) and every configuration, in run order (:func:`plan`).
``cases.py`` measures one configuration; ``suite.py`` reads the command line into settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench_facts import plan_facts

# facts: today's workload (issue 24); forward/train/scaling: the old shape (8 x 256-token
# batches, 16K-slot retrofitted memory, issue 5); eval: the scorers
SECTIONS = ("facts", "forward", "train", "scaling", "eval")
SELECTORS = ("tfidf", "kl", "random", "all")
PRECISIONS = ("32-true", "bf16-mixed")  # Lightning names; shown as fp32 / bf16
SHORT = {"32-true": "fp32", "bf16-mixed": "bf16"}
EVAL_PROBES = ("medmcqa", "triviaqa", "wikitext")
EVAL_MODES = (("smfexp", "fp32"), ("smfexp", "bf16"), ("lm-eval", "fp32"))


@dataclass
class Settings:
    """Everything a child needs; ``--quick`` and the full run differ only here."""

    quick: bool
    model: str
    batch: int
    seq: int
    runs: int
    warmup: int
    small_keys: int
    large_keys: int
    update_dim: int
    top_t: int
    scaling_precision: str
    eval_rows: dict[str, int] = field(default_factory=dict)
    eval_batch_size: int = 16
    eval_runs: int = 3
    threads: int = 0
    update_threads: int = 1
    dense_large: bool = False
    data_dir: str | None = None
    timeout: float | None = None
    # the fact-stream section: phrasings per step, n_keys of the empty memories (512**2 =
    # 262K slots, 1024**2 = 1M), timed steps per configuration, rows per layer per step
    fact_phrasings: tuple[int, ...] = (4, 8)
    fact_keys: tuple[int, ...] = (512, 1024)
    fact_runs: int = 10
    fact_top_t: int = 1024
    stream_results: str | None = None


def plan(sections: list[str], s: Settings) -> list[dict[str, Any]]:
    """Every configuration, in run order (each gets a unique ``id``)."""
    specs: list[dict[str, Any]] = [{"section": "idle", "id": "idle", "label": "idle child"}]
    if "facts" in sections:
        specs += plan_facts(s)
    if "forward" in sections:
        for prec in PRECISIONS:
            for memory in (False, True):
                name = "retrofitted" if memory else "base"
                specs.append(
                    {
                        "section": "forward",
                        "id": f"forward/{name}/{SHORT[prec]}",
                        "label": f"{name} {SHORT[prec]}",
                        "memory": memory,
                        "precision": prec,
                    }
                )
    if "train" in sections:
        for prec in PRECISIONS:
            for method, selector in [
                *(("smf", sel) for sel in SELECTORS),
                ("lora", None),
                ("full", None),
            ]:
                name = f"{method}/{selector}" if selector else method
                specs.append(
                    {
                        "section": "train",
                        "id": f"train/{name}/{SHORT[prec]}",
                        "label": f"{name} {SHORT[prec]}",
                        "method": method,
                        "selector": selector,
                        "precision": prec,
                    }
                )
    if "scaling" in sections:
        prec = s.scaling_precision
        for update, opt in (("row_sparse", "sgd"), ("row_sparse", "adam"),
                            ("row_sparse+ckpt", "sgd"), ("dense_masked", None)):
            for keys in (s.small_keys, s.large_keys):
                tag = f"{update}/{opt or 'adamw'}/{keys}"
                specs.append(
                    {
                        "section": "scaling",
                        "id": f"scaling/{tag}",
                        "label": tag,
                        "method": "smf",
                        "selector": "tfidf",
                        "precision": prec,
                        "n_keys": keys,
                        "update": update,
                        "optimizer": opt,
                    }
                )
        for opt in ("sgd", "adam", "dense"):
            for keys in (s.small_keys, s.large_keys):
                specs.append(
                    {
                        "section": "update",
                        "id": f"update/{opt}/{keys}",
                        "label": f"update {opt} {keys**2} rows",
                        "optimizer": opt,
                        "n_keys": keys,
                        "n_rows": keys**2,
                    }
                )
    if "eval" in sections:
        for probe in EVAL_PROBES:
            for scorer, prec in EVAL_MODES:
                specs.append(
                    {
                        "section": "eval",
                        "id": f"eval/{probe}/{scorer}/{prec}",
                        "label": f"{probe} {scorer} {prec}",
                        "probe": probe,
                        "scorer": scorer,
                        "precision": prec,
                    }
                )
    return specs
