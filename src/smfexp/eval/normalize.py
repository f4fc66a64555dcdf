"""Answer normalisation and matching, copied rule for rule from the sources they cite.

Harness functions mirror lm-evaluation-harness 0.4.13 (``exact_match_hf_evaluate``, the
``remove_whitespace``/``regex`` filters, the WikiText detokenizer) so scores are identical
without importing lm_eval at run time; ``tests/test_eval.py`` checks them against lm_eval.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)

# nq_open.yaml: regexes_to_ignore
NQ_IGNORE = (r"\b(?:The |the |An |A |The |a |an )",)
# gsm8k.yaml: regexes_to_ignore
GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
GSM8K_STRICT = r"#### (\-?[0-9\.\,]+)"
GSM8K_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
REGEX_FALLBACK = "[invalid]"


# --------------------------------------------------------------------------- harness
def harness_normalize(
    text: str,
    regexes_to_ignore: Sequence[str] = (),
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
) -> str:
    """One side of ``exact_match_hf_evaluate``: regex removal, then case, then punctuation."""
    for pattern in regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCT_TABLE)
    return text


def harness_exact_match(
    prediction: str,
    references: Iterable[str],
    regexes_to_ignore: Sequence[str] = (),
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
) -> float:
    """1.0 if the prediction equals any reference after harness normalisation (multi-target)."""
    pred = harness_normalize(prediction, regexes_to_ignore, ignore_case, ignore_punctuation)
    return float(
        any(
            pred == harness_normalize(ref, regexes_to_ignore, ignore_case, ignore_punctuation)
            for ref in references
        )
    )


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``postprocess_generated_text``: keep what precedes the first occurrence of any stop."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def regex_extract(
    text: str, pattern: str, group_select: int = 0, fallback: str = REGEX_FALLBACK
) -> str:
    """The harness ``regex`` filter (``RegexFilter.apply`` for one response)."""
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        non_empty = [m for m in match if m]
        match = non_empty[0] if non_empty else fallback
    return match.strip()


def wikitext_detokenizer(page: str) -> str:
    """lm_eval/tasks/wikitext/preprocess_wikitext.py, verbatim."""
    s = page
    s = s.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    s = s.replace(" @-@ ", "-")
    s = s.replace(" @,@ ", ",")
    s = s.replace(" @.@ ", ".")
    s = s.replace(" : ", ": ")
    s = s.replace(" ; ", "; ")
    s = s.replace(" . ", ". ")
    s = s.replace(" ! ", "! ")
    s = s.replace(" ? ", "? ")
    s = s.replace(" , ", ", ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====")
    s = s.replace("= = =", "===")
    s = s.replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n")
    s = s.replace("\n ", "\n")
    s = s.replace(" N ", " 1 ")
    s = s.replace(" 's", "'s")
    return s


def wikitext_word_count(page: str) -> int:
    """Words of the *original* page, as the harness counts them (``re.split(r"\\s+")``)."""
    return len(re.split(r"\s+", page))


# --------------------------------------------------------------------------- paper
_NOT_KEPT = re.compile(r"[^a-z0-9 .\-]")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def paper_normalize(text: str) -> str:
    """SMF paper answer normalisation: lowercase, keep [a-z0-9 .-], drop articles, squeeze."""
    text = _NOT_KEPT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def paper_substring_match(generation: str, aliases: Iterable[str]) -> float:
    """1.0 if any non-empty normalised alias occurs inside the normalised generation."""
    gen = paper_normalize(generation)
    return float(any(a and a in gen for a in (paper_normalize(x) for x in aliases)))


# --------------------------------------------------------------------------- SQuAD style
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lowercase, strip punctuation and articles, squeeze."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _SQUAD_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-overlap F1 between one prediction and one reference."""
    pred, ref = squad_normalize(prediction).split(), squad_normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_f1(prediction: str, references: Iterable[str]) -> float:
    return max((token_f1(prediction, r) for r in references), default=0.0)


def squad_exact_match(prediction: str, references: Iterable[str]) -> float:
    pred = squad_normalize(prediction)
    return float(any(pred == squad_normalize(r) for r in references))


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def last_number(text: str) -> str | None:
    """The last number in a generation, commas dropped and a trailing '.' stripped."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "").rstrip(".")


def same_number(a: str | None, b: str) -> bool:
    """Numeric equality when both parse (so '18.0' == '18'), else string equality."""
    if a is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b
