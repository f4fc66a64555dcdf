"""WikiText-2 (raw, test): general language modelling, the main forgetting probe.

harness (lm_eval ``wikitext``): each document, detokenized, scored by rolling log-likelihood in
disjoint ``max_length`` windows (the first conditioned on BOS, or EOS if none);
``word_perplexity`` = exp(-sum ll / sum words of the *original* page), ``byte_perplexity`` and
``bits_per_byte`` over its UTF-8 bytes; ``token_perplexity`` is added for reference.
paper: the non-empty lines of the selected documents (each keeping its newline, as in the HF
dataset rows) joined by "\\n\\n", token ``perplexity`` with the Hugging Face sliding-window
recipe (windows of 1024 tokens, stride 512; the model maximum if smaller).
``limit`` counts documents (62 in the test split).

Offline caveat: the local raw file has its blank lines removed, so offline pages contain
fewer newlines than the hub's ``EleutherAI/wikitext_document_level`` pages and the harness
numbers differ slightly from hub-data numbers; on identical pages they are identical
(``tests/test_eval_parity.py``).

Rows: ``{page}``, one per article, in order (:func:`split_wikitext_documents` groups the
local file's lines into articles). The retention probe (:mod:`smfexp.tasks.retention`) takes
its paragraphs from documents this probe's default limits do not reach.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from smfexp.data.sources import MalformedDataError, Rows, load_hub, local_file, read_text
from smfexp.eval.base import Probe, ProbeResult, data_dir, encoder_for, require_rows, take
from smfexp.eval.config import EvalConfig
from smfexp.eval.loglik import loglikelihood_tokens
from smfexp.eval.normalize import wikitext_detokenizer, wikitext_word_count
from smfexp.eval.paired import Items
from smfexp.eval.rolling import rolling_loglikelihood, sliding_windows

PAPER_WINDOW = 1024
PAPER_STRIDE = 512

_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


# --------------------------------------------------------------------------- rows
def split_wikitext_documents(lines: list[str]) -> list[str]:
    """Group raw WikiText lines into articles; an article starts at a `` = Title = `` line."""
    docs: list[list[str]] = []
    for line in lines:
        if _WIKI_TITLE.match(line.rstrip("\n")) or not docs:
            docs.append([])
        docs[-1].append(line if line.endswith("\n") else line + "\n")
    return ["".join(d) for d in docs]


def load_rows(data_dir: Path | None) -> Rows:
    """WikiText-2 raw test as documents -> rows {page} (one per article, in order)."""
    if data_dir is not None:
        path = local_file(data_dir, "wikitext")
        lines = read_text(path).splitlines(keepends=True)
        pages, source = split_wikitext_documents(lines), f"local:{path}"
    else:
        ds, source = load_hub("wikitext", "test")
        pages = [r["page"] for r in ds]
    rows = [{"page": p} for p in pages if p.strip()]
    if not rows:
        raise MalformedDataError("dataset 'wikitext': no documents")
    return Rows(rows, source)


def page_prefix(page: str, words: int) -> str:
    """The first ``words`` words of an article, its lines kept (the last one cut short)."""
    out: list[str] = []
    left = words
    for line in page.splitlines(keepends=True):
        tokens = line.split()
        if len(tokens) >= left:
            out.append(" " + " ".join(tokens[:left]) + " \n")  # raw WikiText spacing
            break
        out.append(line)
        left -= len(tokens)
    return "".join(out)


# --------------------------------------------------------------------------- probe
def load(cfg: EvalConfig) -> Rows:
    """The first ``limit`` articles; with ``eval.document_words`` only each one's beginning
    (equal lengths: every article weighs the same in the total and its interval)."""
    rows = take(load_rows(data_dir(cfg)), cfg, "wikitext")
    if cfg.document_words is None:
        return rows
    pages = [{"page": page_prefix(r["page"], cfg.document_words)} for r in rows.rows]
    return Rows(pages, rows.source, rows.skipped,
                {**rows.meta, "document_words": cfg.document_words})


def paper_text(rows: list[dict[str, Any]]) -> str:
    lines = [
        line if line.endswith("\n") else line + "\n"
        for row in rows
        for line in row["page"].splitlines(keepends=True)
        if line.strip()
    ]
    return "\n\n".join(lines)


def score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig) -> ProbeResult:
    require_rows(rows, "wikitext")
    enc = encoder_for(model, tokenizer, cfg)
    if cfg.protocol == "harness":
        pages = [r["page"] for r in rows]
        lls = rolling_loglikelihood(
            model, enc, [wikitext_detokenizer(p) for p in pages], cfg, desc="wikitext"
        )
        total = math.fsum(x.logprob for x in lls)
        words = sum(wikitext_word_count(p) for p in pages)
        n_bytes = sum(len(p.encode("utf-8")) for p in pages)
        tokens = sum(x.n_tokens for x in lls)
        metrics = {
            "word_perplexity": math.exp(-total / words),
            "byte_perplexity": math.exp(-total / n_bytes),
            "bits_per_byte": -total / n_bytes / math.log(2),
            "token_perplexity": math.exp(-total / tokens),
            "n": float(len(rows)),
        }
        samples = [
            {
                "loglikelihood": x.logprob,
                "n_tokens": x.n_tokens,
                "words": wikitext_word_count(p),
                "bytes": len(p.encode("utf-8")),
            }
            for x, p in zip(lls, pages, strict=True)
        ]
        return ProbeResult(metrics, samples, _page_items(samples))
    window = min(PAPER_WINDOW, enc.max_length)
    ids = tokenizer(paper_text(rows))["input_ids"]
    windows = sliding_windows(ids, window, min(PAPER_STRIDE, window))
    lls = loglikelihood_tokens(model, windows, window, cfg, desc="wikitext", greedy=False)
    total = math.fsum(x.logprob for x in lls)
    tokens = sum(x.n_tokens for x in lls)
    metrics = {
        "perplexity": math.exp(-total / tokens),
        "loss": -total / tokens,
        "n": float(len(rows)),
        "n_tokens": float(tokens),
    }
    lp = tuple(x.logprob for x in lls)
    n_tokens = tuple(float(x.n_tokens) for x in lls)
    items = {"perplexity": Items(lp, n_tokens, "exp_neg"), "loss": Items(lp, n_tokens, "neg")}
    return ProbeResult(metrics, [{"loglikelihood": x.logprob, "n_tokens": x.n_tokens} for x in lls],
                       items)


def _page_items(samples: list[dict[str, Any]]) -> dict[str, Items]:
    """Per-article totals of the harness metrics (a paired interval resamples articles)."""
    lp = tuple(float(s["loglikelihood"]) for s in samples)
    per = {key: tuple(float(s[key]) for s in samples) for key in ("words", "bytes", "n_tokens")}
    return {"word_perplexity": Items(lp, per["words"], "exp_neg"),
            "byte_perplexity": Items(lp, per["bytes"], "exp_neg"),
            "bits_per_byte": Items(lp, per["bytes"], "neg_log2"),
            "token_perplexity": Items(lp, per["n_tokens"], "exp_neg")}


PROBE = Probe(
    name="wikitext",
    load=load,
    score=score,
    primary={"harness": ("word_perplexity", False), "paper": ("perplexity", False)},
    doc=__doc__ or "",
)
