"""Unit tests of smfexp.eval: normalisers (against lm_eval's own), tokenisation and windows,
batching and order restoration, limits and held-out splits, config validation, and a smoke
run of every probe under both protocols on the tiny model."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from smfexp.eval import EvalConfig
from smfexp.eval import normalize as N
from smfexp.eval.encode import Encoder, resolve_max_length, scoring_mode
from smfexp.eval.generate import generate_until
from smfexp.eval.loglik import _batches, loglikelihood, loglikelihood_tokens, scoring_parts
from smfexp.eval.rolling import rolling_windows, sliding_windows
from smfexp.tasks import (
    PROBES,
    check_probes,
    evaluate_probes,
    load_probe_rows,
    primary_metric,
    score_probe,
)
from smfexp.tasks.triviaqa import HELDOUT_ROWS, split_heldout

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is several times faster than two on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    from smfexp.models.loading import ModelSpec, load_model

    return load_model(ModelSpec(name="tiny", source="tiny"))


def _cfg(data_dir: Path | None = None, **kw: Any) -> EvalConfig:
    base: dict[str, Any] = {"progress": False, "batch_size": 4}
    if data_dir is not None:
        base["data_dir"] = str(data_dir)
    return EvalConfig(**{**base, **kw})


# --------------------------------------------------------------------------- normalisers
EM_CASES = [
    ("Paris", ["paris"]),
    ("The Beatles!", ["Beatles", "the beatles"]),
    (" London.", ["London"]),
    ("an apple", ["Apple"]),
    ("1,000", ["1000"]),
    ("Dik-dik", ["dik dik", "dikdik"]),
    ("", ["x"]),
]


@pytest.mark.parametrize(
    "rules",
    [
        {"ignore_case": True, "ignore_punctuation": True},  # triviaqa
        {"regexes_to_ignore": list(N.NQ_IGNORE), "ignore_case": True, "ignore_punctuation": True},
        {"regexes_to_ignore": list(N.GSM8K_IGNORE), "ignore_case": True},
    ],
)
def test_exact_match_equals_lm_eval(rules: dict[str, Any]) -> None:
    metrics = pytest.importorskip("lm_eval.api.metrics")
    for pred, refs in [*EM_CASES, ("#### 1,234.", ["So #### 1234"])]:
        theirs = metrics.exact_match_hf_evaluate([pred] * len(refs), refs, **rules)
        ours = N.harness_exact_match(pred, refs, **rules)
        assert ours == float(theirs["exact_match"] > 0), (pred, refs)


@pytest.mark.parametrize(("pattern", "group"), [(N.GSM8K_STRICT, 0), (N.GSM8K_FLEXIBLE, -1)])
def test_regex_extract_equals_lm_eval_filter(pattern: str, group: int) -> None:
    extraction = pytest.importorskip("lm_eval.filters.extraction")
    texts = ["so #### 42", "it is 3,000 dollars, or $3.5", "no number", "-7 and 12.", "#### -1,2"]
    theirs = extraction.RegexFilter(regex_pattern=pattern, group_select=group).apply(
        [[t] for t in texts], [{}] * len(texts)
    )
    assert [N.regex_extract(t, pattern, group) for t in texts] == [x[0] for x in theirs]


def test_cut_at_stop_equals_lm_eval() -> None:
    utils = pytest.importorskip("lm_eval.models.utils")
    for text in ["Paris, France.\nNext", "a.b,c", "none here", "\nlead", ""]:
        stops = ["\n", ".", ",", "<|im_end|>"]
        assert N.cut_at_stop(text, stops) == utils.postprocess_generated_text(text, stops, None)


def test_wikitext_detokenizer_equals_lm_eval(data_dir: Path) -> None:
    lm_eval = pytest.importorskip("lm_eval")
    path = Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "preprocess_wikitext.py"
    spec = importlib.util.spec_from_file_location("_lm_eval_wikitext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    for row in load_probe_rows("wikitext", _cfg(data_dir, limit=4)):
        assert N.wikitext_detokenizer(row["page"]) == module.wikitext_detokenizer(row)
        words = module.process_results(row, [0.0])["word_perplexity"][1]
        assert N.wikitext_word_count(row["page"]) == words


def test_paper_and_squad_normalisers() -> None:
    assert N.paper_normalize("The  Eiffel Tower!") == "eiffel tower"
    assert N.paper_normalize("An apple, a day. (B-52)") == "apple day. b-52"
    assert N.paper_substring_match("I think it is the Eiffel Tower, in Paris", ["Eiffel tower"])
    assert not N.paper_substring_match("no idea", ["Paris", ""])
    assert N.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert N.max_f1("", ["x"]) == 0.0
    assert N.squad_exact_match("The Beatles.", ["beatles"]) == 1.0
    assert N.last_number("it costs $1,200.50 or 3.") == "3"
    assert N.same_number("18.0", "18") and not N.same_number(None, "1")


# --------------------------------------------------------------------------- tokenising
def test_encode_pairs_equals_hflm(tiny) -> None:
    hf = pytest.importorskip("lm_eval.models.huggingface")
    model, tok = tiny
    lm = hf.HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu")
    enc = Encoder(tok, resolve_max_length(model, tok))
    pairs = [
        ("Question: why?\nAnswer:", " Because"),
        ("Trailing space ", "word"),
        ("Two spaces  ", " x"),
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "A"),
        ("ctx", "\n\nnewlines"),
    ]
    assert enc.encode_pairs(pairs) == [lm._encode_pair(c, x) for c, x in pairs]
    # empty context: the prefix token conditions the continuation
    ((ctx, cont),) = enc.encode_pairs([("", "hello world")])
    assert ctx == [enc.prefix_token_id] and cont == tok.encode("hello world")
    assert enc.max_length == lm.max_length


@pytest.mark.parametrize(("n", "max_len"), [(1, 4), (4, 4), (5, 4), (10, 4), (23, 7), (0, 3)])
def test_rolling_windows_equal_lm_eval(n: int, max_len: int) -> None:
    utils = pytest.importorskip("lm_eval.utils")
    tokens = list(range(100, 100 + n))
    theirs = [
        utils.make_disjoint_window(w)
        for w in utils.get_rolling_token_windows(tokens, 1, max_len, context_len=1)
    ]
    ours = rolling_windows(tokens, 1, max_len)
    assert ours == [(list(a), list(b)) for a, b in theirs]
    assert [t for _, cont in ours for t in cont] == tokens  # every token predicted once


def test_sliding_windows_score_each_token_once() -> None:
    tokens = list(range(2500))
    windows = sliding_windows(tokens, 1024, 512)
    scored = [t for _, cont in windows for t in cont]
    assert scored == tokens[1:]
    assert all(len(ctx) + len(cont) <= 1024 for ctx, cont in windows)
    assert windows[1][0] == tokens[512:1024]  # second window: context from the stride


def test_resolve_max_length_equals_lm_eval(tiny) -> None:
    utils = pytest.importorskip("lm_eval.models.utils")
    model, tok = tiny
    assert resolve_max_length(model, tok) == utils.resolve_max_length(model.config, tok)
    assert resolve_max_length(model, tok, 128) == 128


def test_batches_respect_count_and_token_budget() -> None:
    lengths = [100, 90, 50, 50, 10, 10, 10]
    batches = list(_batches(range(7), lengths, batch_size=3, max_tokens=200))
    assert batches == [[0, 1], [2, 3, 4], [5, 6]]
    assert list(_batches([0], [999], 4, 10)) == [[0]]  # an oversized item still runs alone


# --------------------------------------------------------------------------- batching
def test_batched_loglikelihood_equals_unbatched_and_keeps_order(tiny) -> None:
    model, tok = tiny
    enc = Encoder(tok, 2048)
    pairs = [
        ("Question: a long question about many things\nAnswer:", " yes"),
        ("Short", " no"),
        ("Question: a long question about many things\nAnswer:", " no"),  # shared input
        ("Short", " no"),  # duplicate request
        ("Medium length context here", " and a longer continuation of several tokens"),
        ("", "empty context"),
    ]
    with scoring_mode(model):
        one = loglikelihood(model, enc, pairs, _cfg(batch_size=1))
        many = loglikelihood(model, enc, pairs, _cfg(batch_size=5))
        rev = loglikelihood(model, enc, pairs[::-1], _cfg(batch_size=3))[::-1]
    for a, b, c in zip(one, many, rev, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert a.logprob == pytest.approx(c.logprob, abs=1e-5)
        assert a.n_tokens == b.n_tokens and a.is_greedy == b.is_greedy
    assert one[1].logprob == pytest.approx(one[3].logprob, abs=1e-6)
    assert one[0].logprob != one[2].logprob


def test_loglikelihood_matches_a_plain_forward(tiny) -> None:
    model, tok = tiny
    enc = Encoder(tok, 2048)
    (res,) = loglikelihood(model, enc, [("The cat", " sat on the mat")], _cfg())
    ctx, cont = enc.encode_pairs([("The cat", " sat on the mat")])[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
    want = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    assert res.logprob == pytest.approx(want, abs=1e-4)
    assert res.n_tokens == len(cont)


def test_is_greedy_is_the_argmax_and_skipping_it_changes_no_logprob(tiny) -> None:
    model, tok = tiny
    enc = Encoder(tok, 2048)
    ctx, _ = enc.encode_pairs([("The cat", " sat")])[0]
    with torch.no_grad():
        logits = model(torch.tensor([ctx])).logits[0, -1]
    best, other = int(logits.argmax()), int(logits.argmin())
    requests = [(ctx, [best]), (ctx, [other])]
    with scoring_mode(model):
        flagged = loglikelihood_tokens(model, requests, 2048, _cfg())
        skipped = loglikelihood_tokens(model, requests, 2048, _cfg(), greedy=False)
    assert [r.is_greedy for r in flagged] == [True, False]
    assert [r.is_greedy for r in skipped] == [None, None]  # not computed, not guessed
    assert [r.logprob for r in skipped] == [r.logprob for r in flagged]


def test_batched_generation_equals_unbatched(tiny) -> None:
    model, tok = tiny
    enc = Encoder(tok, 2048)
    prompts = ["Question: who?\nAnswer:", "Q: a much longer question, with words?\nA:", "Hi"]
    with scoring_mode(model):
        one = generate_until(model, enc, prompts, ["\n"], 6, _cfg(batch_size=1))
        many = generate_until(model, enc, prompts, ["\n"], 6, _cfg(batch_size=3))
    assert one == many


def test_scoring_parts_falls_back_when_logits_are_post_processed(tiny) -> None:
    model, tok = tiny

    class Scaled(torch.nn.Module):
        """Same body and head, but the logits are scaled: splitting would be wrong."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.base_model = model.model

        def get_output_embeddings(self) -> torch.nn.Module:
            return model.lm_head

        def forward(self, input_ids: torch.Tensor, **kw: Any) -> Any:
            out = model(input_ids=input_ids, **kw)
            out.logits = out.logits * 3.0
            return out

    with torch.inference_mode():
        assert scoring_parts(model).split
        assert not scoring_parts(Scaled()).split
    enc = Encoder(tok, 2048)
    plain = loglikelihood(model, enc, [("a b", " c")], _cfg())[0].logprob
    scaled = loglikelihood(Scaled(), enc, [("a b", " c")], _cfg())[0].logprob
    assert scaled != pytest.approx(plain, abs=1e-3)


def test_scoring_mode_restores_training_and_disables_grad(tiny) -> None:
    model, _ = tiny
    model.train()
    with scoring_mode(model):
        assert not model.training and torch.is_inference_mode_enabled()
    assert model.training
    model.eval()


# --------------------------------------------------------------------------- data & config
def test_limits_and_held_out_splits(data_dir: Path) -> None:
    rows = load_probe_rows("medmcqa", _cfg(data_dir, limit=5))
    from smfexp.tasks import medmcqa, triviaqa

    assert rows == medmcqa.load_rows(data_dir, "validation").rows[:5]
    assert len(load_probe_rows("medmcqa", _cfg(data_dir, limit=None))) == 1000
    assert len(load_probe_rows("medmcqa", _cfg(data_dir, limit=2000))) == 1000  # training pool
    trivia = triviaqa.load_rows(data_dir).rows
    held, pool = split_heldout(trivia)
    assert len(held) == HELDOUT_ROWS and len(pool) == len(trivia) - HELDOUT_ROWS
    assert not {r["question"] for r in held} & {r["question"] for r in pool}
    assert load_probe_rows("triviaqa", _cfg(data_dir, limit=None)) == held
    assert load_probe_rows("triviaqa", _cfg(data_dir, limit=3)) == held[:3]
    assert len(load_probe_rows("wikitext", _cfg(data_dir, limit=None))) == 62
    assert len(load_probe_rows("gsm8k", _cfg(data_dir, limit=7))) == 7
    assert len(load_probe_rows("nq_open", _cfg(data_dir, limit=7))) == 7
    per_probe = _cfg(data_dir, limit=7, limits={"wikitext": 2})
    assert len(load_probe_rows("wikitext", per_probe)) == 2
    assert len(load_probe_rows("gsm8k", per_probe)) == 7
    assert EvalConfig(limit=7, limits={"gsm8k": None}).limit_for("gsm8k") == 7  # null: inherit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "lm-eval"}, "harness"),
        ({"probes": ["medmcqa", "mmlu"]}, "nq_open"),
        ({"probes": "wikitext,triviaqa"}, "valid"),
        ({"limit": -1}, "limit"),
        ({"limit": 0}, "limit"),
        ({"precision": "fp16"}, "bf16"),
        ({"batch_size": 0}, "batch_size"),
        ({"probes": ["gsm8k", "gsm8k"]}, "twice"),
        ({"limits": {"mmlu": 3}}, "limits"),
        ({"stream_limits": {"mmlu": 3}}, "stream_limits"),
        ({"limits": {"wikitext": -2}}, "limits"),
    ],
)
def test_eval_config_validation(kwargs: dict[str, Any], message: str) -> None:
    # probe names are the registry's to check (check_probes), the rest EvalConfig's own
    with pytest.raises(ValueError, match=message):
        check_probes(EvalConfig(**kwargs))


def test_eval_config_knows_no_probe_names() -> None:
    """The scoring machinery takes any probe name; the task registry refuses unknown ones."""
    cfg = EvalConfig(probes=["medmcqa", "mmlu"], limits={"mmlu": 3})
    with pytest.raises(ValueError, match=r"unknown eval probe\(s\) \['mmlu'\]; valid: \['medmcqa'"):
        check_probes(cfg)
    ok = EvalConfig(probes=["triviaqa"], limits={"wikitext": 2})
    assert check_probes(ok) is ok


def test_eval_config_from_omegaconf() -> None:
    from omegaconf import OmegaConf

    node = OmegaConf.load(ROOT / "conf" / "eval" / "default.yaml")
    cfg = EvalConfig.from_config(node)
    # the default forgetting probes: Lin et al.'s NQ-open, WikiText, and what the model knew
    assert cfg.protocol == "harness" and {"nq_open", "wikitext", "retention"} <= set(cfg.probes)
    assert EvalConfig.from_config({"probes": "gsm8k"}).probes == ["gsm8k"]
    quick = OmegaConf.merge(node, OmegaConf.load(ROOT / "conf" / "eval" / "quick.yaml"))
    quick.pop("defaults")
    assert EvalConfig.from_config(quick).limit_for("wikitext") == 5
    # default: 10 WikiText documents (CPU-sized); eval=full: every held-out row of every probe
    assert cfg.limit_for("wikitext") == 10 and cfg.limit_for("triviaqa") == 1000
    full = OmegaConf.merge(node, OmegaConf.load(ROOT / "conf" / "eval" / "full.yaml"))
    full.pop("defaults")
    assert all(EvalConfig.from_config(full).limit_for(p) is None for p in PROBES)
    with pytest.raises(ValueError, match="is not a field of EvalConfig; valid:"):
        EvalConfig.from_config({"protocl": "paper"})


def test_primary_metrics() -> None:
    assert primary_metric("medmcqa", "harness") == ("acc", True)
    assert primary_metric("wikitext", "harness") == ("word_perplexity", False)
    assert primary_metric("wikitext", "paper") == ("perplexity", False)
    assert primary_metric("triviaqa", "harness") == ("exact_match", True)
    assert primary_metric("gsm8k", "paper") == ("loss", False)
    with pytest.raises(ValueError, match="valid"):
        primary_metric("medmcqa", "other")
    with pytest.raises(ValueError, match="valid"):
        primary_metric("mmlu", "harness")


# --------------------------------------------------------------------------- smoke
@pytest.mark.parametrize("protocol", ["harness", "paper"])
def test_every_probe_scores_on_the_tiny_model(tiny, data_dir: Path, protocol: str) -> None:
    model, tok = tiny
    cfg = _cfg(data_dir, protocol=protocol, limit=3, probes=list(PROBES), gsm8k_generate=True)
    wiki = sorted(load_probe_rows("wikitext", _cfg(data_dir, limit=None)),
                  key=lambda r: len(r["page"]))[:2]  # fmt: skip
    results = evaluate_probes(model, tok, cfg, rows_override={"wikitext": wiki})
    assert list(results) == list(PROBES)
    # a random model predicts no word with p >= 0.5: nothing to retain, NaN rather than a score
    retention = results.pop("retention")
    assert retention["n"] == 0 and math.isnan(retention["accuracy"])
    for probe, metrics in results.items():
        lead, _ = primary_metric(probe, protocol)
        assert lead in metrics and math.isfinite(metrics[lead]), (probe, metrics)
        assert metrics["n"] == (2 if probe == "wikitext" else 3)
    for probe in ("triviaqa", "nq_open"):
        assert results[probe]["answer_logprob"] < 0
    assert 0 <= results["medmcqa"]["gold_prob"] <= 1


def test_chat_template_and_bf16_smoke(tiny, data_dir: Path) -> None:
    model, tok = tiny
    rows = load_probe_rows("medmcqa", _cfg(data_dir, limit=4))
    fp32 = score_probe("medmcqa", model, tok, rows, _cfg(data_dir))
    bf16 = score_probe("medmcqa", model, tok, rows, _cfg(data_dir, precision="bf16"))
    chat = score_probe("medmcqa", model, tok, rows, _cfg(data_dir, chat_template=True))
    assert bf16["gold_prob"] == pytest.approx(fp32["gold_prob"], abs=0.05)
    assert chat["gold_prob"] != fp32["gold_prob"]
    trivia = load_probe_rows("triviaqa", _cfg(data_dir, limit=2))
    out = score_probe("triviaqa", model, tok, trivia, _cfg(data_dir, chat_template=True))
    assert math.isfinite(out["answer_logprob"])


def test_evaluate_cli_writes_eval_json(tmp_path: Path, data_dir: Path) -> None:
    from hydra import compose, initialize_config_dir

    from smfexp.evaluate import run

    overrides = [
        "model=tiny", "eval.probes=[medmcqa]", "eval.limit=3", "eval.progress=false",
        "eval.limits.medmcqa=2", f"eval.data_dir={data_dir}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides)
        out = run(cfg, tmp_path)
        saved = json.loads((tmp_path / "eval.json").read_text())
        assert saved["medmcqa"] == pytest.approx(out["medmcqa"])
        assert saved["medmcqa"]["n"] == 2  # the per-probe override wins
        meta = saved["_meta"]
        assert meta["protocol"] == "harness" and meta["limit"] == 3
        assert meta["chat_template"] is False and meta["precision"] == "fp32"
        assert meta["data_source"]["medmcqa"].startswith("local:")
        cfg = compose(config_name="evaluate", overrides=[*overrides, "checkpoint=ckpt.pt"])
        with pytest.raises(FileNotFoundError, match="checkpoint"):
            run(cfg, tmp_path)
