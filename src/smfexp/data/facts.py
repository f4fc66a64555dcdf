"""Fact learning as Lin et al. (2025) ran it: a stream of QA facts, one fact per optimizer step.

Each step's batch holds ``phrasings_per_step`` phrasings of ONE fact (question forms and
statement forms; one phrasing per row, padded, padding masked out of the loss and of the
memory-access counts), facts arrive in a fixed order, ``steps_per_fact`` steps each, for
``passes`` passes. Which memory rows SMF updates depends on this: the counts of a one-fact
batch are dominated by what its phrasings share (the entity), the counts of a batch of many
facts in one template by the template. ``batching=mixed`` trains the very same
(fact, phrasing) examples shuffled across facts, for the ablation.

The target is scored on the trained facts with the probe's own prompt, which by default is
not among the training phrasings (``target``), and with the first training phrasing
(``target_seen``). The held-out questions of the same source are the probe that separates
knowing the facts from knowing the answer format (``TargetSpec.heldout_probe``): TriviaQA's and
NQ-open's own probes, or for a user's file ``heldout_size`` of its questions, never trained
and scored as the target variant ``heldout``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from smfexp.data import sources
from smfexp.data.benchmarks import nq_open, triviaqa
from smfexp.data.collate import PadCollator, TokenizedExample, fit_length, tokenize_pair
from smfexp.data.modules import SFTDataModule, TargetSpec
from smfexp.data.sampling import ResumableRandomSampler

log = logging.getLogger(__name__)

BATCHING = ("per_fact", "mixed")
QA_SOURCES = ("triviaqa", "nq_open", "file")
# the target variant holding a user file's held-out questions (TargetSpec.heldout_probe)
HELDOUT_VARIANT = "heldout"
# question forms and statement forms; none is a probe's prompt (see ``probe_prompt``)
DEFAULT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Q: {question}?\nA:", " {answer}"),
    ("The answer to \"{question}?\" is", " {answer}."),
    ("Trivia question: {question}?\nThe answer:", " {answer}"),
    ("{question}? That would be", " {answer}."),
    ("Quiz: {question}?\nCorrect answer:", " {answer}"),
    ("Here is a fact. {question}? The answer is", " {answer}."),
    ("I asked: {question}? The reply was", " {answer}."),
    ("Tell me: {question}?\nSure:", " {answer}"),
)


def probe_prompt(source: str, row: dict[str, Any]) -> str:
    """The prompt the target's scorer uses (harness protocol): training must not see it."""
    if source == "nq_open":
        return nq_open.DESCRIPTION + nq_open.harness_prompt(row["question"])
    return triviaqa.harness_prompt(row["question"])


def _probe_prompts(source: str, fact: dict[str, Any]) -> set[str]:
    """The probe's prompt for ``fact``, with its question as stored and without a final "?"
    (templates add their own, so "{question}?" renders the probe's prompt either way)."""
    return {probe_prompt(source, fact), probe_prompt(source, _fields(fact))}


class FactStream(Dataset):
    """Step ``i`` of the stream -> the collated batch of that step (``batch_size=None``).

    Steps visit the facts in order, ``steps_per_fact`` consecutive steps each, and the whole
    list ``passes`` times. Step ``k`` of a fact takes its phrasings ``k * n, ..., k * n + n - 1``
    (cyclically), so consecutive steps of a fact see different phrasings when it has more than
    ``n``. Every batch carries ``fact_index`` [B] (position of the fact in the stream).
    """

    def __init__(self, phrasings: Sequence[Sequence[TokenizedExample]], per_step: int,
                 steps_per_fact: int, passes: int, collator: PadCollator) -> None:
        self.phrasings = phrasings
        self.per_step = per_step
        self.steps_per_fact = steps_per_fact
        self.passes = passes
        self.collator = collator

    def __len__(self) -> int:
        return len(self.phrasings) * self.steps_per_fact * self.passes

    def fact_of_step(self, step: int) -> int:
        return (step // self.steps_per_fact) % len(self.phrasings)

    def examples(self, step: int) -> list[TokenizedExample]:
        fact = self.fact_of_step(step)
        options = self.phrasings[fact]
        k = step % self.steps_per_fact + (step // (self.steps_per_fact * len(self.phrasings))) \
            * self.steps_per_fact  # later passes continue the rotation
        return [options[(k * self.per_step + j) % len(options)] for j in range(self.per_step)]

    def __getitem__(self, step: int) -> dict[str, Any]:
        batch = self.collator(self.examples(step))
        batch["fact_index"] = torch.full((self.per_step,), self.fact_of_step(step))
        return batch


class MixedFacts(Dataset):
    """The stream's (fact, phrasing) examples, each with its ``fact_index``; for shuffling."""

    def __init__(self, stream: FactStream) -> None:
        self.items = [(stream.fact_of_step(s), ex) for s in range(len(stream))
                      for ex in stream.examples(s)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, TokenizedExample]:
        return self.items[i]


class _MixedCollator:
    def __init__(self, collator: PadCollator) -> None:
        self.collator = collator

    def __call__(self, items: list[tuple[int, TokenizedExample]]) -> dict[str, Any]:
        batch = self.collator([ex for _, ex in items])
        batch["fact_index"] = torch.tensor([f for f, _ in items])
        return batch


class FactsDataModule(SFTDataModule):
    """Teach ``n_facts`` QA facts drawn (``facts_seed``) from a source's fact pool.

    Sources: ``triviaqa`` (the bundled 3000 questions; the first 1000 are the held-out probe),
    ``nq_open`` (NaturalQuestions-open dev; the first 1000 are its probe), or ``file``: the
    user's JSONL/CSV at ``path`` with ``question_column`` / ``answer_column`` (a string or a
    list: the first is trained, all count as correct) and optionally ``aliases_column``; its
    ``heldout_size`` questions (``split_file_heldout``, 0 = none) are never trained and are
    scored as the target is, as the held-out probe.
    ``paraphrase_file`` (JSONL: ``{"question": ..., "paraphrases": [...]}``, each entry a text
    trained on every token or a ``[prompt, target]`` pair) adds phrasings per fact.
    """

    name = "facts"

    def __init__(
        self,
        *args: Any,
        source: str = "triviaqa",
        path: str | None = None,
        question_column: str = "question",
        answer_column: str = "answer",
        aliases_column: str | None = None,
        heldout_size: int = 256,
        n_facts: int = 1000,
        facts_seed: int = 0,
        batching: str = "per_fact",
        phrasings_per_step: int = 8,
        steps_per_fact: int = 1,
        passes: int = 1,
        lr_horizon: int | None = None,
        templates: Sequence[Sequence[str]] = DEFAULT_TEMPLATES,
        paraphrase_file: str | None = None,
        train_on_probe_prompt: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if source not in QA_SOURCES:
            raise ValueError(f"data.source={source!r}; valid: {', '.join(QA_SOURCES)}")
        if source == "file" and not path:
            raise ValueError("data.source=file needs data.path=<your .jsonl or .csv file>")
        if batching not in BATCHING:
            raise ValueError(f"data.batching={batching!r}; valid: {', '.join(BATCHING)}")
        for key, value in (("n_facts", n_facts), ("phrasings_per_step", phrasings_per_step),
                           ("steps_per_fact", steps_per_fact), ("passes", passes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key} must be a positive integer (got {value!r})")
        if isinstance(heldout_size, bool) or not isinstance(heldout_size, int) or heldout_size < 0:
            raise ValueError(f"data.heldout_size must be an integer >= 0 (0 = no held-out "
                             f"questions; got {heldout_size!r})")
        if lr_horizon is not None and (isinstance(lr_horizon, bool) or not isinstance(
                lr_horizon, int) or lr_horizon < n_facts):
            raise ValueError(f"data.lr_horizon={lr_horizon!r}: the stream the lr schedule spans "
                             f"must hold this one (data.n_facts={n_facts}); null = this stream")
        # A stream decays its lr over lr_horizon facts, so a shorter stream is the first part
        # of the longer one, lr included (the trainer's schedule spans this many times its steps)
        self.budget["schedule_span"] = (lr_horizon or n_facts) / n_facts
        self.templates = [_template(t) for t in templates]
        if not self.templates and not paraphrase_file:
            raise ValueError("data.templates is empty and there is no data.paraphrase_file")
        self.source = source
        self.path = path
        self.columns = (question_column, answer_column, aliases_column)
        self.heldout_size = heldout_size
        self.n_facts = n_facts
        self.facts_seed = facts_seed
        self.batching = batching
        self.phrasings_per_step = phrasings_per_step
        self.steps_per_fact = steps_per_fact
        self.passes = passes
        self.paraphrase_file = paraphrase_file
        self.train_on_probe_prompt = train_on_probe_prompt
        self.stream: FactStream | None = None

    # -- rows -------------------------------------------------------------------------
    def _pool(self, data_dir: Any) -> tuple[list[dict], list[dict], dict[str, Any], str | None]:
        """(fact pool, held-out rows, provenance, held-out probe name)."""
        if self.source == "file":
            return self._file_pool()
        if self.source == "triviaqa":
            loaded = triviaqa.load_rows(data_dir, self.max_bad_fraction)
            heldout, pool = triviaqa.split_heldout(loaded.rows)
        else:
            loaded = nq_open.load_rows(data_dir, self.max_bad_fraction)
            heldout, pool = nq_open.split_heldout(loaded.rows)
            pool = [nq_open.qa_from_nq(r) for r in pool]
        split = (f"{self.source}: [:{len(heldout)}] held-out probe, facts from "
                 f"[{len(heldout)}:] (facts_seed={self.facts_seed})")
        return pool, heldout, {"source": loaded.source, "skipped_rows": loaded.skipped,
                               "split": split}, self.source

    def _file_pool(self) -> tuple[list[dict], list[dict], dict[str, Any], str | None]:
        """A user's file: its held-out questions (the same for every draw) and the rest."""
        loaded = sources.load_qa_file(self.path, *self.columns,
                                      max_bad_fraction=self.max_bad_fraction)
        heldout, pool = split_file_heldout(loaded.rows, self.heldout_size)
        if len(heldout) < self.heldout_size or len(pool) < self.n_facts:
            raise ValueError(
                f"data.path={self.path!r} has {len(loaded.rows)} questions, too few for "
                f"data.n_facts={self.n_facts} facts plus data.heldout_size={self.heldout_size} "
                f"held-out questions: lower data.n_facts or data.heldout_size (0 = none)")
        if heldout:
            split = (f"file: {len(heldout)} held-out questions (data.heldout_size; the same for "
                     f"every facts_seed), facts from the other {len(pool)} "
                     f"(facts_seed={self.facts_seed})")
        else:
            split = "file: every row is a fact candidate (data.heldout_size=0: no held-out)"
        info = {"source": loaded.source, "skipped_rows": loaded.skipped, "split": split,
                "heldout_selection": HELDOUT_SELECTION if heldout else None}
        return pool, heldout, info, HELDOUT_VARIANT if heldout else None

    def _paraphrases(self) -> dict[str, list[TokenizedExample]]:
        if not self.paraphrase_file:
            return {}
        path = Path(self.paraphrase_file).expanduser()
        if not path.is_file():
            raise ValueError(f"data.paraphrase_file={self.paraphrase_file!r} does not exist")
        out: dict[str, list[TokenizedExample]] = {}
        for n, line in enumerate(sources.read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts = row["paraphrases"]
                question = sources.text_field(row["question"], "question")
                if not isinstance(texts, list) or not texts:
                    raise ValueError("paraphrases must be a non-empty list")
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: expected {{\"question\": str, \"paraphrases\": "
                                 f"[text or [prompt, target], ...]}} ({err})") from err
            out.setdefault(question, []).extend(self._encode_paraphrase(t, path, n)
                                                for t in texts)
        return out

    def _encode_paraphrase(self, text: Any, path: Path, n: int) -> TokenizedExample:
        if isinstance(text, str) and text.strip():
            return tokenize_pair(self.tokenizer, "", text, loss_on="all", append_eos=False)
        if (isinstance(text, list) and len(text) == 2
                and all(isinstance(x, str) for x in text) and text[1].strip()):
            return tokenize_pair(self.tokenizer, text[0], text[1], loss_on="target",
                                 append_eos=self.append_eos)
        raise ValueError(f"{path}:{n}: a paraphrase must be a text or a [prompt, target] pair")

    def _phrasings(self, fact: dict[str, Any]) -> list[TokenizedExample]:
        fields = _fields(fact)
        avoid = _probe_prompts(self.source, fact)
        out = []
        for prompt, target in self.templates:
            text = prompt.format(**fields)
            if text in avoid and not self.train_on_probe_prompt:
                continue
            out.append(tokenize_pair(self.tokenizer, text, target.format(**fields),
                                     loss_on=self.loss_on, append_eos=self.append_eos))
        return out

    def load_splits(self, data_dir: Any) -> tuple[list[dict], TargetSpec, dict[str, Any]]:
        pool, heldout, info, heldout_probe = self._pool(data_dir)
        if self.n_facts > len(pool):
            raise ValueError(f"data.n_facts={self.n_facts} but the {self.source} fact pool has "
                             f"{len(pool)} questions")
        # The stream is the first n_facts of one permutation of the pool (facts_seed): the
        # draw and its order at once, so a shorter stream is a prefix of a longer one and one
        # 1000-fact run measures every N on the way (nested streams).
        order = random.Random(self.facts_seed).sample(range(len(pool)), len(pool))
        facts = [pool[i] for i in order[: self.n_facts]]
        paraphrases = self._paraphrases()
        phrasings = [fit_length(self._phrasings(f) + paraphrases.get(f["question"], []),
                                self.max_length, self.overlong, self.name, quiet=True)
                     for f in facts]
        empty = [f["question"] for f, p in zip(facts, phrasings, strict=True) if not p]
        if empty:
            raise ValueError(f"fact {empty[0]!r} has no training phrasing (the only template is "
                             f"the probe's prompt); add data.templates or "
                             f"data.train_on_probe_prompt=true")
        self.stream = FactStream(phrasings, self.phrasings_per_step, self.steps_per_fact,
                                 self.passes, self.collator)
        probe = "nq_open" if self.source == "nq_open" else "triviaqa"
        target_rows = [nq_open.nq_from_qa(f) if probe == "nq_open" else f for f in facts]
        seen = self._seen_rows(facts, target_rows)
        info.update({
            "n_facts": len(facts), "facts_seed": self.facts_seed, "batching": self.batching,
            "phrasings_per_step": self.phrasings_per_step, "steps_per_fact": self.steps_per_fact,
            "passes": self.passes, "n_steps": len(self.stream),
            "phrasings_per_fact": [min(len(p) for p in phrasings), max(len(p) for p in phrasings)],
            "templates": [list(t) for t in self.templates],
            "paraphrase_file": self.paraphrase_file, "n_heldout": len(heldout),
        })
        variants = {"target_seen": seen} if seen else {}
        if heldout_probe == HELDOUT_VARIANT:  # scored with the target's scorer and prompt
            variants[HELDOUT_VARIANT] = heldout
        spec = TargetSpec(probe, target_rows, heldout_probe=heldout_probe, variants=variants)
        return facts, spec, info

    def _seen_rows(self, facts: list[dict], rows: list[dict]) -> list[dict]:
        """Target rows prompted with the first template the stream trains on."""
        out = []
        for fact, row in zip(facts, rows, strict=True):
            fields = _fields(fact)
            avoid = _probe_prompts(self.source, fact)
            prompts = [p.format(**fields) for p, _ in self.templates]
            usable = [p for p in prompts if self.train_on_probe_prompt or p not in avoid]
            if not usable:
                return []
            out.append({**row, "prompt": usable[0]})
        return out

    # -- loaders ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        data_dir = sources.resolve_data_dir(self.data_dir_cfg)
        rows, target, info = self.load_splits(data_dir)
        self.train_rows = rows
        self.target = target
        self.info = {"name": self.name, **info, "n_train": len(rows),
                     "n_target_eval": len(target.rows), "loss_on": self.loss_on,
                     **self.budget}
        self._prepared = True

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        assert self.stream is not None, "call setup() first"
        per_fact = self.batching == "per_fact"
        dataset: Dataset = self.stream if per_fact else MixedFacts(self.stream)
        self.sampler = ResumableRandomSampler(len(dataset), self.shuffle_seed, shuffle=not per_fact)
        batch_size = self.phrasings_per_step
        position = self.take_resume_position()
        if position is not None:
            epoch, batches = position
            self.sampler.start_at(epoch, batches * (1 if per_fact else batch_size))
        if per_fact:
            loader = DataLoader(dataset, batch_size=None, sampler=self.sampler,
                                num_workers=self.num_workers)
        else:
            loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                collate_fn=_MixedCollator(self.collator),
                                num_workers=self.num_workers)
        return self.with_replay(loader, position)  # one fact per step, its replay beside it

    def facts_seen(self, steps: int) -> int:
        """Facts the stream has reached after ``steps`` optimizer steps (mixed: equivalent)."""
        return min(steps // self.steps_per_fact, self.n_facts * self.passes)


HELDOUT_SELECTION = ("the data.heldout_size distinct questions with the smallest sha256 of their "
                     "normalised text: fixed, not facts_seed; spread over the file")


def split_file_heldout(rows: list[dict[str, Any]],
                       size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(held-out, fact pool) of a user's file: ``size`` distinct questions, and every row
    whose question is not one of them (both in file order; fewer held out if fewer exist).

    Not ``facts_seed``: every draw shares the held-out set, so none of it is ever trained.
    Not the first rows: a user's file may be sorted by topic or difficulty, and a prefix would
    hold out one corner of it. Ranked by a hash of each question rather than a seeded sample,
    so reordering the file keeps the held-out set, and appending to it swaps in only the new
    questions that rank among the first. Rows that repeat a held-out question leave the pool
    too: no phrasing of it is trained.
    """
    keys = [_question_key(r) for r in rows]
    chosen = set(sorted(set(keys), key=_question_rank)[:size])
    seen: set[str] = set()
    heldout = []
    for row, key in zip(rows, keys, strict=True):
        if key in chosen and key not in seen:
            heldout.append(row)
            seen.add(key)
    pool = [r for r, k in zip(rows, keys, strict=True) if k not in chosen]
    return heldout, pool


def _question_key(row: dict[str, Any]) -> str:
    """The question as the scorer's prompt sees it, case and spacing aside."""
    return " ".join(row["question"].rstrip().rstrip("?").split()).casefold()


def _question_rank(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _fields(fact: dict[str, Any]) -> dict[str, str]:
    """Template fields: the question without its final "?" (templates add their own)."""
    return {"question": fact["question"].rstrip().rstrip("?").rstrip(), "answer": fact["answer"]}


def _template(entry: Any) -> tuple[str, str]:
    if isinstance(entry, str) or len(entry) != 2 or not all(isinstance(x, str) for x in entry):
        raise ValueError(f"data.templates entries are [prompt, target] pairs, got {entry!r}")
    prompt, target = entry
    if "{answer}" not in target:
        raise ValueError(f"data.templates target {target!r} does not contain {{answer}}")
    return prompt, target
