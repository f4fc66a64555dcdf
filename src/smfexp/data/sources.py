"""One source layer for every dataset: a local data directory (offline) or the HF hub.

Generic data IO only: locating the data (:func:`resolve_data_dir`, :data:`LOCAL_FILES`,
:data:`HUB_IDS`), reading JSONL or a hub split, normalising rows, the background corpus and
user question/answer files. Each benchmark's row normaliser and loader, built on these
helpers, lives in :mod:`smfexp.data.benchmarks` when a DataModule trains on it, else in its
task module (:mod:`smfexp.tasks`); every loader returns canonical rows (plain dicts, one
schema per dataset, documented on its normaliser) plus provenance, so DataModules and scorers
never see the on-disk formats. Malformed rows are counted, reported with one
example and skipped; too many (more than ``max_bad_fraction``) or none left is an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smfexp.utils.errors import DataUnavailableError, MalformedDataError
from smfexp.utils.net import hub_reachable

log = logging.getLogger(__name__)

DATA_DIR_ENV = "SMFEXP_DATA_DIR"

HUB_IDS = {
    "medmcqa": ("openlifescienceai/medmcqa", None),
    "triviaqa": ("mandarjoshi/trivia_qa", "rc.nocontext"),
    "nq_open": ("google-research-datasets/nq_open", None),
    "gsm8k": ("openai/gsm8k", "main"),
    "wikitext": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1"),
    "background": ("OpenAssistant/oasst1", None),
}

LOCAL_FILES = {
    "medmcqa": "medmcqa/validation.jsonl",
    "triviaqa": "triviaqa/triviaqa_sm_sub.jsonl",
    "nq_open": "nq_open/NQ-open.dev.jsonl",
    "gsm8k_test": "gsm8k/test.jsonl",
    "gsm8k_train": "gsm8k/train.jsonl",
    "wikitext": "wikitext2/wiki.test.raw",
    "dolly_hhrlhf": "dolly_hhrlhf/train_small.jsonl",
    "c4": "c4/c4_demo.jsonl",
    "wiki": "wiki/wiki_demo.txt",
    "lambada": "lambada/lambada_openai.jsonl",
}


@dataclass
class Rows:
    """Canonical rows of one dataset split and where they came from."""

    rows: list[dict[str, Any]]
    source: str  # "local:<file>" or "hub:<id>[/<config>]:<split>"
    skipped: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


# --------------------------------------------------------------------------- locating data
def resolve_data_dir(
    configured: str | os.PathLike | None = None, key: str = "paths.data_dir"
) -> Path | None:
    """The offline data directory: config value, else $SMFEXP_DATA_DIR, else ./data if present.

    Every loader (training data, background, probes) resolves it here, so ``paths.data_dir``
    is the one location to set; conf/eval and conf/data default their ``data_dir`` to it.
    Returns None when none exists (then the hub is used). A configured folder or
    $SMFEXP_DATA_DIR that does not exist is an error (``key`` names the config key in it).
    """
    env = os.environ.get(DATA_DIR_ENV)
    for candidate, name in ((configured, key), (env, f"${DATA_DIR_ENV}"), ("data", None)):
        if candidate in (None, ""):
            continue
        path = Path(str(candidate)).expanduser()
        if path.is_dir():
            return path.resolve()
        if name is not None:  # asked for by name: a typo must not fall back to the hub
            raise DataUnavailableError(
                f"{name}={str(candidate)!r} does not exist; point it at a folder holding the "
                f"files smfexp.data.sources.LOCAL_FILES names, or unset it to use the hub"
            )
    return None


def load_hub(name: str, split: str) -> tuple[Iterable[dict[str, Any]], str]:
    """Raw rows of a :data:`HUB_IDS` dataset split and their provenance (``hub:...``)."""
    hub_id, config = HUB_IDS[name]
    if not hub_reachable():
        raise DataUnavailableError(
            f"dataset {name!r}: no local data directory (set paths.data_dir=... or "
            f"${DATA_DIR_ENV}, or run `make setup` to link ../shared/data) and the hub "
            f"({hub_id}) is unreachable"
        )
    import datasets

    ds = datasets.load_dataset(hub_id, config, split=split)
    return ds, f"hub:{hub_id}{'/' + config if config else ''}:{split}"


@dataclass(frozen=True)
class BadLine:
    """A line of a data file that is not a row at all (not UTF-8, not JSON): counted as
    malformed by :func:`normalise_rows` with ``reason``, which names the file and line."""

    text: str
    reason: str


def _decode_line(raw: bytes, path: Path, lineno: int) -> str | BadLine:
    """One line as text, or a :class:`BadLine` naming ``path:lineno`` if it is not UTF-8."""
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        shown = raw[:60].decode("utf-8", errors="replace")
        return BadLine(shown, f"not UTF-8 text at {path}:{lineno} (byte "
                              f"0x{raw[err.start]:02x}); save the file as UTF-8")


def read_jsonl(path: Path) -> Iterable[dict[str, Any] | BadLine]:
    """Parsed JSONL lines (blank ones skipped); a line that is not UTF-8 JSON comes as a
    :class:`BadLine` naming ``path:line``, so a truncated or binary file says where."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode_line(raw, path, lineno)
            if isinstance(line, BadLine):
                yield line
                continue
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                yield BadLine(line.rstrip("\n"), f"invalid JSON at {path}:{lineno} ({err.msg})")


def read_text(path: Path) -> str:
    """A whole UTF-8 text file; a non-UTF-8 or binary (NUL bytes) one is an error naming
    ``path:line``."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise MalformedDataError(f"{path}:{line} is not UTF-8 text (byte 0x{data[err.start]:02x} "
                                 f"at offset {err.start}); save the file as UTF-8") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise MalformedDataError(f"{path}:{line} holds a NUL byte: a binary file, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as open()'s universal newlines


def local_file(data_dir: Path, key: str) -> Path:
    """The :data:`LOCAL_FILES` file ``key`` of the data directory (it must exist)."""
    path = data_dir / LOCAL_FILES[key]
    if not path.is_file():
        raise DataUnavailableError(
            f"dataset file {LOCAL_FILES[key]} is missing from the data directory {data_dir}"
        )
    return path


# --------------------------------------------------------------------------- normalising
def normalise_rows(
    raw: Iterable[Any],
    normaliser: Callable[[Any], dict[str, Any]],
    name: str,
    max_bad_fraction: float = 0.05,
) -> tuple[list[dict[str, Any]], int]:
    """Apply ``normaliser`` to each raw row; report and skip the ones it rejects.

    A normaliser raises (KeyError/ValueError/TypeError/IndexError) for a malformed row.
    """
    good: list[dict[str, Any]] = []
    bad, example, reason = 0, None, ""
    for row in raw:
        if isinstance(row, BadLine):  # not a row at all: its reason names file and line
            bad += 1
            if bad == 1:
                example, reason = row.text, row.reason
            continue
        try:
            good.append(normaliser(row))
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
            bad += 1
            if bad == 1:  # not `example is None`: a null row is a valid first example
                example, reason = row, f"{type(err).__name__}: {err}"
    total = len(good) + bad
    shown = json.dumps(example, default=str)[:200]
    if not good:
        first = f"; first: {shown} ({reason})" if bad else ""
        raise MalformedDataError(f"dataset {name!r}: no usable rows (of {total}){first}")
    if bad:
        msg = (
            f"dataset {name!r}: skipped {bad} of {total} malformed rows; first: {shown} ({reason})"
        )
        if bad / total > max_bad_fraction:
            raise MalformedDataError(
                msg + f" - more than max_bad_fraction={max_bad_fraction}; fix the data or raise it"
            )
        log.warning(msg)
    return good, bad


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value


def text_field(value: Any, what: str) -> str:
    """A non-empty string, else ``ValueError`` naming ``what`` (for user-supplied files)."""
    return _text(value, what)


def scalar_text(value: Any, what: str) -> str:
    """A string, or a number some dumps store instead (e.g. an option "5"); never None/""."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    return _text(value, what)


def text_row(row: Any) -> dict[str, Any]:
    """Background corpus rows of any layout -> {text}."""
    if isinstance(row, str):
        return {"text": _text(row.strip(), "text")}
    if "prompt" in row and "response" in row:
        return {"text": _text(row["prompt"], "prompt") + _text(row["response"], "response")}
    if "context" in row and "continuation" in row:
        continuation = row["continuation"]
        if not isinstance(continuation, str):
            raise ValueError("continuation must be a string")
        return {"text": _text(row["context"], "context") + continuation}
    return {"text": _text(row["text"], "text")}


# --------------------------------------------------------------------------- loaders
def load_normalised(
    name: str,
    local_key: str,
    hub_split: str,
    data_dir: Path | None,
    normaliser: Callable[[Any], dict[str, Any]],
    max_bad_fraction: float,
) -> Rows:
    """A JSONL file of the data dir, or the hub split, through ``normaliser``."""
    if data_dir is not None:
        path = local_file(data_dir, local_key)
        raw, source = read_jsonl(path), f"local:{path}"
    else:
        raw, source = load_hub(name, hub_split)
    rows, bad = normalise_rows(raw, normaliser, name, max_bad_fraction)
    return Rows(rows, source, bad)


BACKGROUND_PARTS = ("dolly_hhrlhf", "c4", "wiki", "lambada")


def load_background(
    data_dir: Path | None, parts: Iterable[str] = BACKGROUND_PARTS, max_bad_fraction: float = 0.05
) -> Rows:
    """General text for retrofitting and background statistics -> rows {text, part}.

    Offline: a mix of dolly_hhrlhf + c4 + wiki + lambada; online: OASST1 assistant turns
    (the reference papers' corpus).
    """
    rows: list[dict[str, Any]] = []
    skipped = 0
    if data_dir is None:
        ds, source = load_hub("background", "train")
        raw = (r["text"] for r in ds if r.get("role") == "assistant")
        good, skipped = normalise_rows(raw, text_row, "background", max_bad_fraction)
        return Rows([{**g, "part": "oasst1"} for g in good], source, skipped)
    unknown = sorted(set(parts) - set(BACKGROUND_PARTS))
    if unknown:
        raise ValueError(f"unknown background parts {unknown}; valid: {list(BACKGROUND_PARTS)}")
    for part in parts:
        path = local_file(data_dir, part)
        if path.suffix == ".txt":
            raw: Iterable[Any] = (line for line in read_text(path).splitlines() if line.strip())
        else:
            raw = read_jsonl(path)
        good, bad = normalise_rows(raw, text_row, part, max_bad_fraction)
        rows.extend({**g, "part": part} for g in good)
        skipped += bad
    return Rows(rows, f"local:{data_dir}[{'+'.join(parts)}]", skipped)


QA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def _answer_list(value: Any, what: str) -> list[str]:
    """A string, a list of strings, or (CSV) a JSON list written into a cell."""
    if isinstance(value, str) and value.strip().startswith("["):
        with contextlib.suppress(json.JSONDecodeError):  # not JSON: an answer with a "["
            value = json.loads(value)
    if isinstance(value, list):
        out = [scalar_text(v, what) for v in value]
        if not out:
            raise ValueError(f"{what} is an empty list")
        return out
    return [scalar_text(value, what)]


def _read_table(file: Path) -> tuple[list[str], list[Any]]:
    """(columns, rows) of a UTF-8 CSV/TSV; undecodable or NUL bytes name ``file:line``."""
    import csv
    import io

    text = read_text(file)
    reader = csv.DictReader(io.StringIO(text, newline=""),
                            delimiter="\t" if file.suffix == ".tsv" else ",")
    try:
        columns = list(reader.fieldnames or [])
        return columns, list(reader)
    except csv.Error as err:
        raise MalformedDataError(f"{file}:{reader.line_num} is not a valid "
                                 f"{file.suffix[1:].upper()} line ({err})") from None


def load_qa_file(
    path: str | os.PathLike,
    question_column: str = "question",
    answer_column: str = "answer",
    aliases_column: str | None = None,
    max_bad_fraction: float = 0.05,
) -> Rows:
    """A user's question/answer file (JSONL or CSV/TSV) -> rows {question, answer, aliases}.

    ``answer_column`` holds a string or a list (the first answer is the one trained; every
    answer and alias counts as correct). A column that no row has is a one-line error naming
    the columns the file does have; rows missing a value are counted as malformed.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataUnavailableError(f"data.path={str(path)!r} does not exist")
    if file.suffix not in QA_FILE_SUFFIXES:
        raise ValueError(f"data.path={str(path)!r}: expected one of {', '.join(QA_FILE_SUFFIXES)}")
    if file.suffix in (".csv", ".tsv"):
        columns, raw = _read_table(file)
    else:
        raw = list(read_jsonl(file))
        columns = sorted({k for r in raw if isinstance(r, dict) for k in r})
    wanted = {"question_column": question_column, "answer_column": answer_column,
              "aliases_column": aliases_column}
    for key, column in wanted.items():  # no columns at all: normalise_rows says why (file:line)
        if columns and column is not None and column not in columns:
            raise ValueError(f"data.{key}={column!r} is not a column of {file.name}; "
                             f"its columns: {columns}")
    if not raw:
        raise MalformedDataError(f"data.path={str(path)!r} holds no rows; expected columns "
                                 f"{question_column!r} and {answer_column!r}, one fact per row")

    def normalise(row: Any) -> dict[str, Any]:
        answers = _answer_list(row[answer_column], answer_column)
        extra = row.get(aliases_column) if aliases_column else None
        aliases = _answer_list(extra, aliases_column) if extra not in (None, "", []) else []
        return {"question": _text(row[question_column], question_column).strip().rstrip("?"),
                "answer": answers[0],
                "aliases": list(dict.fromkeys([*answers, *aliases]))}

    rows, bad = normalise_rows(raw, normalise, file.name, max_bad_fraction)
    return Rows(rows, f"local:{file}", bad)
