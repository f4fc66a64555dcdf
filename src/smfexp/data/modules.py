"""One LightningDataModule per benchmark, all on the same source layer and collator.

A DataModule owns *which rows* a run trains on and which rows measure the target metric,
taking each benchmark's loader and split boundaries from :mod:`smfexp.data.benchmarks`; the
scorers (``smfexp.tasks``, a layer above) own *how* they are scored.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from smfexp.data import sources
from smfexp.data.benchmarks import medmcqa
from smfexp.data.collate import (
    LOSS_ON,
    OVERLONG,
    PadCollator,
    TokenizedExample,
    fit_length,
    tokenize_pair,
)
from smfexp.data.replay import ReplaySpec, ReplayStream, with_replay
from smfexp.data.sampling import ResumableRandomSampler
from smfexp.utils.configs import require_int, require_number

log = logging.getLogger(__name__)


@dataclass
class TargetSpec:
    """How the target metric of a run is measured: a probe scorer and the rows it scores."""

    probe: str
    rows: list[dict[str, Any]]
    # a forgetting probe that would only re-measure the target (same benchmark) is skipped
    replaces_probe: str | None = None
    # a probe scoring the same task on questions disjoint from the target's: the target's
    # gain minus this probe's gain is what was learned about the trained items themselves,
    # not the task's answer format (results.json ``target_beyond_heldout``)
    heldout_probe: str | None = None
    # more row sets scored with the target's scorer, e.g. ``target_seen``: the trained facts
    # prompted with a phrasing the run trained on (the target itself uses an unseen one)
    variants: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class SFTDataModule(LightningDataModule):
    """Shared machinery: template rendering, tokenisation, over-long policy, loaders."""

    name = "sft"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        name: str | None = None,
        data_dir: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        max_length: int = 512,
        prompt_template: str = "{prompt}",
        target_template: str = "{target}",
        loss_on: str = "target",
        append_eos: bool = True,
        overlong: str = "drop",
        max_bad_fraction: float = 0.05,
        shuffle_seed: int = 0,
        num_workers: int = 0,
        epochs: int = 1,
        grad_accum: int = 1,
        warmup_steps: int = 0,
        schedule: str = "cosine",
    ) -> None:
        super().__init__()
        self.name = name or self.name
        SFTDataModule.check_arguments({"batch_size": batch_size, "max_length": max_length,
                                       "loss_on": loss_on, "overlong": overlong,
                                       "max_bad_fraction": max_bad_fraction, "epochs": epochs})
        self.tokenizer = tokenizer
        self.data_dir_cfg = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.prompt_template = prompt_template
        self.target_template = target_template
        self.loss_on = loss_on
        self.append_eos = append_eos
        self.overlong = overlong
        self.max_bad_fraction = max_bad_fraction
        self.shuffle_seed = shuffle_seed
        self.num_workers = num_workers
        # The training budget this data implies (method configs read ${data.epochs} etc.):
        # a finetune on MedMCQA warms up and decays over an epoch; a stream of facts takes
        # one fact per optimizer step, its lr decaying over the stream (schedule_span: the facts
        # the decay spans / the facts of this stream; FactsDataModule sets it).
        self.epochs = epochs
        self.budget = {"epochs": epochs, "grad_accum": grad_accum,
                       "warmup_steps": warmup_steps, "schedule": schedule, "schedule_span": 1.0}
        self.collator = PadCollator(tokenizer.pad_token_id)
        self.train_examples: list[TokenizedExample] = []
        self.train_rows: list[dict[str, Any]] = []
        self.target: TargetSpec | None = None
        self.info: dict[str, Any] = {}
        self._prepared = False
        self._resume_position: tuple[int, int] | None = None
        self.sampler: ResumableRandomSampler | None = None
        self.replay: ReplayStream | None = None  # background sequences beside each batch

    @classmethod
    def check_arguments(cls, args: Mapping[str, Any]) -> None:
        """One-line errors for impossible arguments (those in ``args``): the run config
        calls it before any model loads, the constructor on what it gets."""
        for key in ("batch_size", "max_length"):
            if key in args:
                require_int(args[key], f"data.{key}")
        if "epochs" in args:
            require_int(args["epochs"], "data.epochs", minimum=0)
        for key, valid in (("loss_on", LOSS_ON), ("overlong", OVERLONG)):
            if key in args and args[key] not in valid:
                raise ValueError(f"data.{key}={args[key]!r} is not valid; choose one of "
                                 f"{list(valid)}")
        fraction = args.get("max_bad_fraction")
        if fraction is not None and not 0 <= require_number(fraction, "data.max_bad_fraction",
                                                            allow_zero=True) <= 1:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1] (got {fraction})")

    # -- subclasses -------------------------------------------------------------------
    def load_splits(self, data_dir: Any) -> tuple[list[dict], TargetSpec, dict[str, Any]]:
        """Return (training rows, target spec, provenance/split info)."""
        raise NotImplementedError

    def template_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        return row

    # -- shared -----------------------------------------------------------------------
    def render(self, row: dict[str, Any]) -> tuple[str, str]:
        fields = self.template_fields(row)
        try:
            return self.prompt_template.format(**fields), self.target_template.format(**fields)
        except KeyError as err:
            raise ValueError(
                f"data template refers to {err} which {self.name} rows do not have; "
                f"available fields: {sorted(fields)}"
            ) from err

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        data_dir = sources.resolve_data_dir(self.data_dir_cfg)
        rows, target, info = self.load_splits(data_dir)
        if not rows:
            raise ValueError(f"{self.name}: the training set is empty")
        examples = [
            tokenize_pair(self.tokenizer, *self.render(r), loss_on=self.loss_on,
                          append_eos=self.append_eos)
            for r in rows
        ]
        self.train_examples = fit_length(examples, self.max_length, self.overlong, self.name)
        self.train_rows = rows
        self.target = target
        self.info = {
            "name": self.name,
            **info,
            "n_train": len(self.train_examples),
            "n_target_eval": len(target.rows),
            "loss_on": self.loss_on,
            "prompt_template": self.prompt_template,
            "target_template": self.target_template,
            **self.budget,
        }
        self._prepared = True

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        self.sampler = ResumableRandomSampler(len(self.train_examples), self.shuffle_seed)
        position = self.take_resume_position()
        if position is not None:
            epoch, batches = position
            self.sampler.start_at(epoch, batches * self.batch_size)
        return self.with_replay(DataLoader(
            self.train_examples,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=self.sampler,
            generator=torch.Generator().manual_seed(self.shuffle_seed),  # not the global RNG
            collate_fn=self.collator,
            num_workers=self.num_workers,
        ), position)

    # -- replay: background sequences in every step (a method asks for them) ----------
    def background_blocks(self, parts: Sequence[str], length: int,
                          seed: int) -> tuple[list[TokenizedExample], str]:
        """The background corpus ``parts`` in ``length``-token blocks, documents shuffled by
        ``seed`` (the corpus a method replays or takes its Fisher on), and its source."""
        corpus = BackgroundDataModule(self.tokenizer, data_dir=self.data_dir_cfg,
                                      max_length=length, parts=list(parts), heldout_docs=0,
                                      shuffle_seed=seed, max_bad_fraction=self.max_bad_fraction)
        corpus.setup()
        return corpus.train_examples, corpus.info["source"]

    def attach_replay(self, spec: ReplaySpec) -> None:
        """Give every training batch ``spec.k`` background sequences (the method's replay,
        e.g. ``method.replay_k``): ``train_dataloader`` then yields ``{"train": batch,
        "replay": sequences}``. The corpus is read and cut into blocks here, once."""
        blocks, source = self.background_blocks(spec.parts, spec.length, spec.seed)
        self.replay = ReplayStream(blocks, spec.k, spec.seed, self.collator)
        self.info["replay"] = {"k": spec.k, "length": spec.length, "parts": list(spec.parts),
                               "seed": spec.seed, "source": source, "blocks": len(blocks)}

    def take_resume_position(self) -> tuple[int, int] | None:
        """(epoch, batches done) a resumed run re-enters at, once; None = from the start."""
        position, self._resume_position = self._resume_position, None
        return position

    def with_replay(self, loader: DataLoader,
                    position: tuple[int, int] | None) -> DataLoader | CombinedLoader:
        """``loader`` itself without replay, else each batch with its replayed sequences."""
        if self.replay is None:
            return loader
        return with_replay(loader, self.replay, position, self.num_workers)

    # -- resume: where in the data a checkpoint was taken ------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches trained in it (checkpoints are taken at the end of a batch).

        Read from the loop's progress counter: Lightning exposes no public count of the
        batches done in the current epoch, and this is the counter its own restore uses.
        """
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._resume_position = (int(state["epoch"]), int(state["batches_done"]))


class MedMCQADataModule(SFTDataModule):
    """MedMCQA: train on the train split (offline: a carved pool), score validation[:N].

    Offline, the 4183 validation rows are split deterministically: the first ``eval_size``
    rows in order are the evaluation set (the reference papers' "first 1000"), the rest is the
    training pool. Online the hub train split is used for training.
    """

    name = "medmcqa"
    LETTERS = "ABCD"

    def __init__(self, *args: Any, eval_size: int = medmcqa.EVAL_ROWS,
                 train_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if eval_size <= 0:
            raise ValueError("data.eval_size must be positive")
        self.eval_size = eval_size
        self.train_size = train_size

    def load_splits(self, data_dir: Any) -> tuple[list[dict], TargetSpec, dict[str, Any]]:
        validation = medmcqa.load_rows(data_dir, "validation", self.max_bad_fraction)
        evaluation, pool = medmcqa.split(validation.rows, self.eval_size)
        if data_dir is not None:
            train = pool
            n = self.eval_size
            split = f"offline: validation[:{n}] eval, validation[{n}:] train"
            source = validation.source
        else:
            hub_train = medmcqa.load_rows(None, "train", self.max_bad_fraction)
            train, split, source = hub_train.rows, "hub: train / validation[:eval_size]", (
                f"{hub_train.source} + {validation.source}"
            )
        if self.train_size is not None:
            train = train[: self.train_size]
        info = {"source": source, "split": split, "skipped_rows": validation.skipped}
        return train, TargetSpec("medmcqa", evaluation, replaces_probe="medmcqa"), info

    def template_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        letter = self.LETTERS[row["answer"]]
        return {
            "question": row["question"],
            **dict(zip(self.LETTERS, row["options"], strict=True)),
            "letter": letter,
            "answer_text": row["options"][row["answer"]],
        }


class BackgroundDataModule(SFTDataModule):
    """General text (retrofit and background statistics): packed into ``max_length`` blocks."""

    name = "background"

    def __init__(self, *args: Any, parts: list[str] | None = None, max_docs: int | None = None,
                 heldout_docs: int = 200, **kwargs: Any) -> None:
        kwargs.setdefault("loss_on", "all")
        super().__init__(*args, **kwargs)
        self.parts = list(parts) if parts else list(sources.BACKGROUND_PARTS)
        self.max_docs = max_docs
        self.heldout_docs = heldout_docs
        self.heldout_examples: list[TokenizedExample] = []

    def _blocks(self, rows: list[dict[str, Any]]) -> list[TokenizedExample]:
        eos = self.tokenizer.eos_token_id
        stream: list[int] = []
        for r in rows:
            stream.extend(self.tokenizer(r["text"], add_special_tokens=False)["input_ids"])
            if eos is not None:
                stream.append(eos)
        n = self.max_length
        return [
            TokenizedExample(stream[i : i + n], stream[i : i + n])
            for i in range(0, len(stream) - n + 1, n)
        ]

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        data_dir = sources.resolve_data_dir(self.data_dir_cfg)
        loaded = sources.load_background(data_dir, self.parts, self.max_bad_fraction)
        rows = list(loaded.rows)
        random.Random(self.shuffle_seed).shuffle(rows)
        heldout, train = rows[: self.heldout_docs], rows[self.heldout_docs :]
        if self.max_docs is not None:
            train = train[: self.max_docs]
        self.train_examples = self._blocks(train)
        self.heldout_examples = self._blocks(heldout)
        if not self.train_examples:
            raise ValueError("background: corpus produced no full training block")
        self.info = {"name": self.name, "source": loaded.source,
                     "n_train": len(self.train_examples),
                     "n_heldout": len(self.heldout_examples), "block_tokens": self.max_length}
        self._prepared = True

    def heldout_dataloader(self) -> DataLoader:
        return DataLoader(self.heldout_examples, batch_size=self.eval_batch_size,  # type: ignore[arg-type]
                          shuffle=False, collate_fn=self.collator)
