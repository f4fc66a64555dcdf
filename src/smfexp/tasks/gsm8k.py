"""GSM8K (test): grade-school maths, a reasoning forgetting probe (Paper-A style).

Scored by the gold solution's likelihood, because small models rarely solve these problems
and accuracy cannot show forgetting: context ``Question: {q}\\nAnswer:`` (the lm_eval
``gsm8k`` prompt, zero-shot), continuation " " + the full reference solution (the way the
harness renders a few-shot answer). ``loss`` = token-weighted mean negative log-likelihood over
all solution tokens (lower is better); ``answer_logprob`` = mean over problems of the
solution's mean per-token log-likelihood.
With ``gsm8k_generate`` (off by default: 256 greedy tokens per problem is slow on CPU):
harness ``exact_match_strict`` / ``exact_match_flexible`` (the task's two filters and its
exact-match rules, zero-shot); paper ``exact_match`` = last number of the generation equals
the reference number.

Rows (:func:`gsm8k_row`): ``{question, answer (full solution), final (the number after
####)}``; the probe scores the ``test`` split, in order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from smfexp.data.sources import Rows, load_normalised, text_field
from smfexp.eval.base import (
    Probe,
    ProbeResult,
    answer_delimiter,
    data_dir,
    encoder_for,
    mean,
    require_rows,
    take,
    wrap,
)
from smfexp.eval.config import EvalConfig
from smfexp.eval.generate import generate_until
from smfexp.eval.loglik import loglikelihood
from smfexp.eval.normalize import (
    GSM8K_FLEXIBLE,
    GSM8K_IGNORE,
    GSM8K_STRICT,
    harness_exact_match,
    last_number,
    regex_extract,
    same_number,
)

UNTIL = ("Question:", "</s>", "<|im_end|>")
MAX_GEN_TOKS = 256


# --------------------------------------------------------------------------- rows
def gsm8k_row(row: dict[str, Any]) -> dict[str, Any]:
    """-> {question, answer (full solution), final (the number after ####)}."""
    answer = text_field(row["answer"], "answer")
    if "####" not in answer:
        raise ValueError("answer has no '#### N' final line")
    final = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise ValueError("answer has an empty '####' final line")
    return {"question": text_field(row["question"], "question"), "answer": answer,
            "final": final}


def load_rows(data_dir: Path | None, split: str = "test", max_bad_fraction: float = 0.05) -> Rows:
    """GSM8K ``train`` or ``test``."""
    return load_normalised("gsm8k", f"gsm8k_{split}", split, data_dir, gsm8k_row,
                           max_bad_fraction)


# --------------------------------------------------------------------------- probe
def load(cfg: EvalConfig) -> Rows:
    return take(load_rows(data_dir(cfg), "test"), cfg, "gsm8k")


def prompt(row: dict[str, Any]) -> str:
    return f"Question: {row['question']}\nAnswer:"


def score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig) -> ProbeResult:
    require_rows(rows, "gsm8k")
    enc = encoder_for(model, tokenizer, cfg)
    prompts = [wrap(tokenizer, cfg, prompt(r)) for r in rows]
    delim = answer_delimiter(cfg)
    lls = loglikelihood(
        model,
        enc,
        [(p, delim + r["answer"]) for p, r in zip(prompts, rows, strict=True)],
        cfg,
        desc="gsm8k answer",
    )
    total_ll = math.fsum(x.logprob for x in lls)
    total_tokens = sum(x.n_tokens for x in lls)
    metrics = {
        "loss": -total_ll / total_tokens,
        "answer_logprob": mean([x.mean for x in lls]),
        "n": float(len(rows)),
    }
    samples: list[dict[str, Any]] = [
        {"loglikelihood": x.logprob, "n_tokens": x.n_tokens} for x in lls
    ]
    if cfg.gsm8k_generate:
        gens = generate_until(model, enc, prompts, UNTIL, MAX_GEN_TOKS, cfg, desc="gsm8k generate")
        if cfg.protocol == "harness":
            rules = {"regexes_to_ignore": GSM8K_IGNORE, "ignore_case": True}
            strict = [regex_extract(g, GSM8K_STRICT) for g in gens]
            flexible = [regex_extract(g, GSM8K_FLEXIBLE, group_select=-1) for g in gens]
            em_s = [
                harness_exact_match(p, [r["answer"]], **rules)
                for p, r in zip(strict, rows, strict=True)
            ]
            em_f = [
                harness_exact_match(p, [r["answer"]], **rules)
                for p, r in zip(flexible, rows, strict=True)
            ]
            metrics["exact_match_strict"] = mean(em_s)
            metrics["exact_match_flexible"] = mean(em_f)
            for s, g, a, b in zip(samples, gens, em_s, em_f, strict=True):
                s.update(generation=g, exact_match_strict=a, exact_match_flexible=b)
        else:
            em = [
                float(same_number(last_number(g), r["final"]))
                for g, r in zip(gens, rows, strict=True)
            ]
            metrics["exact_match"] = mean(em)
            for s, g, e in zip(samples, gens, em, strict=True):
                s.update(generation=g, exact_match=e)
    return ProbeResult(metrics, samples)


PROBE = Probe(
    name="gsm8k",
    load=load,
    score=score,
    primary={"harness": ("loss", False), "paper": ("loss", False)},
    doc=__doc__ or "",
)
