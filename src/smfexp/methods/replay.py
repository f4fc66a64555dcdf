"""Replay for the dense baselines: background text in every optimizer step (REMIX, arXiv
2411.07175; Abbes et al. 2025, arXiv 2508.01908: replaying ~1% general text is effective).

The data module puts ``replay_k`` background sequences beside each of its batches
(:func:`smfexp.data.replay.with_replay`, asked for in :meth:`ReplayFinetune.setup`), so a
fact's phrasings and their replay are one training batch: one forward each, one backward of
``fact_weight x fact loss + replay_weight x replay loss``, one optimizer step
(:class:`DenseReplayFinetune`). Off (``replay_k=0``) the training step is
:class:`CausalLMModule`'s, unchanged. SMF uses the same background batches for its
background-preserving term (:class:`smfexp.methods.smf.SparseMemoryFinetune`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from smfexp.data.replay import REPLAY, TRAIN, ReplaySpec, check_replay_arguments
from smfexp.data.sources import BACKGROUND_PARTS
from smfexp.methods.base import FinetuneModule
from smfexp.training.learned import already_learned, check_learned_loss
from smfexp.training.loss import causal_lm_loss
from smfexp.utils.configs import require_number
from smfexp.utils.distributed import distributed


class ReplayFinetune(FinetuneModule):
    """A finetuning method that can replay background sequences beside each batch."""

    @classmethod
    def reads_corpus(cls, args: Mapping[str, Any]) -> bool:
        """Whether a run with these arguments reads the replay's corpus (replay on; unknown
        counts as on). Its ``replay_source`` is checked only then: off, it is not read, and
        a wrong default would only echo the corpus setting it is taken from."""
        return args.get("replay_k", 1) != 0

    @classmethod
    def check_arguments(cls, args: Mapping[str, Any]) -> None:
        """One-line errors for impossible arguments, before any model loads."""
        super().check_arguments(args)
        check_replay_arguments(args if cls.reads_corpus(args) else
                               {k: v for k, v in args.items() if k != "replay_source"})
        if "replay_weight" in args:
            require_number(args["replay_weight"], "method.replay_weight", allow_zero=True)

    def __init__(self, *args: Any, replay_k: int = 0, replay_weight: float = 1.0,
                 replay_length: int = 128,
                 replay_source: Sequence[str] = tuple(BACKGROUND_PARTS),
                 replay_seed: int = 0, **kwargs: Any) -> None:
        ReplayFinetune.check_arguments({
            "replay_k": replay_k, "replay_weight": replay_weight, "replay_length": replay_length,
            "replay_source": replay_source, "replay_seed": replay_seed})
        parts = (replay_source,) if isinstance(replay_source, str) else tuple(replay_source)
        # the background corpus these settings name (full finetuning's Fisher reads it too)
        self.corpus_settings = (replay_length, parts, replay_seed)
        self.replay = ReplaySpec(replay_k, *self.corpus_settings) if replay_k > 0 else None
        self.replay_weight = float(replay_weight)
        super().__init__(*args, **kwargs)

    def setup(self, stage: str) -> None:
        """Ask the data module for the replay (it reads the corpus; Lightning calls this
        after the data module's own setup and before it builds the training loader)."""
        if self.replay is None or stage != "fit":
            return
        attach = getattr(self.trainer.datamodule, "attach_replay", None)
        if attach is None:
            raise ValueError("method.replay_k > 0 needs a data module that replays "
                             "(smfexp.data.modules.SFTDataModule); set method.replay_k=0")
        attach(self.replay)

    def split_replay(self, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the run's own batch, the sequences replayed beside it or None when replay is off)."""
        if self.replay is None:
            return batch, None
        return batch[TRAIN], batch[REPLAY]

    def replay_loss(self, replay: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The replayed sequences' mean next-token loss (logged, unweighted)."""
        loss = causal_lm_loss(self.model, replay, self.frozen_casts)
        self.check_finite(loss.detach(), "replay loss", batch_idx)
        self.log("train/replay_loss", loss, on_step=True, on_epoch=False,
                 batch_size=replay["input_ids"].shape[0])
        return loss

    def extra_results(self) -> dict[str, Any]:
        """results.json ``replay`` (only when it is on: runs without it keep their results)."""
        if self.replay is None:
            return {}
        return {"replay": {"k": self.replay.k, "weight": self.replay_weight,
                           "length": self.replay.length, "parts": list(self.replay.parts),
                           "seed": self.replay.seed}}


class DenseReplayFinetune(ReplayFinetune):
    """Replay for methods that train dense weights (full finetuning, LoRA): one loss,
    ``fact_weight`` x the fact's + ``replay_weight`` x the replay's.

    ``fact_weight=0`` with replay on is the replay-only control: the same steps, schedule
    and replayed text without the facts' gradient - what replay alone does to the probes.
    """

    @classmethod
    def check_arguments(cls, args: Mapping[str, Any]) -> None:
        """One-line errors for impossible arguments, before any model loads."""
        super().check_arguments(args)
        check_learned_loss(args)
        if "fact_weight" in args:
            require_number(args["fact_weight"], "method.fact_weight", allow_zero=True)
            if args["fact_weight"] == 0 and args.get("replay_k", 1) == 0:
                raise ValueError("method.fact_weight=0 trains on nothing without replay: set "
                                 "method.replay_k > 0 (the replay-only control) or "
                                 "method.fact_weight > 0")

    def __init__(self, *args: Any, fact_weight: float = 1.0, learned_loss: float | None = None,
                 **kwargs: Any) -> None:
        DenseReplayFinetune.check_arguments({"fact_weight": fact_weight,
                                             "replay_k": kwargs.get("replay_k", 0),
                                             "learned_loss": learned_loss})
        self.fact_weight = float(fact_weight)
        # SMF's lever, under the same protocol: a step whose fact loss is below it is not
        # taken (training_step returns None: no backward, the optimizer finds no gradient)
        self.learned_loss = learned_loss
        self.steps_skipped = 0  # optimizer steps not taken: their fact was already learned
        self.learned = False  # this micro-batch's fact is already learned: nothing to add
        self._learning = 0  # micro-batches of the current step that backpropagated
        self._drop_grads = False  # the step about to be taken is skipped (under DDP)
        super().__init__(*args, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """``fact_weight`` x the fact's loss (logged unweighted as ``train/loss``) +
        ``replay_weight`` x the replay's: one backward, one optimizer step for both. None
        (nothing to backpropagate, replay included) when the fact is already learned."""
        batch, replay = self.split_replay(batch)
        fact_loss = super().training_step(batch, batch_idx)
        if self._skip(fact_loss, batch_idx):
            # Lightning skips a None step on one process only; under DDP every rank
            # backpropagates zero and the step's gradients are dropped before it is taken
            return fact_loss * 0.0 if distributed() else None
        loss = self.fact_weight * fact_loss
        if replay is None:
            return loss
        return loss + self.replay_weight * self.replay_loss(replay, batch_idx)

    def _skip(self, fact_loss: torch.Tensor, batch_idx: int) -> bool:
        """Is this micro-batch's fact already learned? Counts the optimizer steps in which
        every micro-batch was (``steps_skipped``; ``train/step_skipped`` on every step)."""
        if self.learned_loss is None:
            return False
        self.learned = already_learned(fact_loss, self.learned_loss)
        self._learning += not self.learned
        if (batch_idx + 1) % self.grad_accum == 0 or self.trainer.is_last_batch:
            skipped = self._learning == 0
            self.steps_skipped += skipped
            self._drop_grads = skipped
            self._learning = 0
            self.log("train/step_skipped", float(skipped), on_step=True, on_epoch=False)
        return self.learned

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A skipped step's (zero) gradients are dropped: the optimizer then changes nothing,
        not even through Adam's moments or weight decay, and the step still counts."""
        if self._drop_grads:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            self._drop_grads = False
        super().on_before_optimizer_step(optimizer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["steps_skipped"] = self.steps_skipped

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.steps_skipped = int(checkpoint.get("steps_skipped", 0))

    def extra_results(self) -> dict[str, Any]:
        """results.json ``replay``, with ``fact_weight`` where it is not 1, and ``learned``
        (``learned_loss``, ``steps_skipped``) when the skip is on."""
        out = super().extra_results()
        if self.fact_weight != 1.0 and "replay" in out:
            out["replay"]["fact_weight"] = self.fact_weight
        if self.learned_loss is not None:
            out["learned"] = {"learned_loss": self.learned_loss,
                              "steps_skipped": self.steps_skipped}
        return out
