"""Full finetuning: every weight trains (the most forgetting-prone baseline).

Two of the continual-learning baselines a reviewer asks for first ride on it: replay of
background text (:class:`DenseReplayFinetune`, ``method.replay_k``) and a pull toward the base
weights (:mod:`smfexp.training.penalty`): ``method.l2_to_base`` (L2) and ``method.ewc``
(diagonal-Fisher EWC, the Fisher on ``method.ewc_batches`` background sequences of the base
model, :mod:`smfexp.training.fisher`). All three off (0, the defaults): plain full finetuning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from smfexp.data.replay import ReplaySpec
from smfexp.methods.replay import DenseReplayFinetune
from smfexp.training.fisher import diagonal_fisher
from smfexp.training.penalty import BasePull
from smfexp.utils.configs import require_int, require_number


class FullFinetune(DenseReplayFinetune):
    method_name = "full"

    @classmethod
    def check_arguments(cls, args: Mapping[str, Any]) -> None:
        """One-line errors for impossible arguments, before any model loads."""
        super().check_arguments(args)
        for key in ("l2_to_base", "ewc"):
            if key in args:
                require_number(args[key], f"method.{key}", allow_zero=True)
        if "ewc_batches" in args:
            require_int(args["ewc_batches"], "method.ewc_batches")

    @classmethod
    def reads_corpus(cls, args: Mapping[str, Any]) -> bool:
        """Replay, or EWC's Fisher, reads the background corpus."""
        return super().reads_corpus(args) or bool(args.get("ewc", 0))

    def __init__(self, *args: Any, l2_to_base: float = 0.0, ewc: float = 0.0,
                 ewc_batches: int = 64, **kwargs: Any) -> None:
        FullFinetune.check_arguments({"l2_to_base": l2_to_base, "ewc": ewc,
                                      "ewc_batches": ewc_batches})
        self.l2_to_base = float(l2_to_base)
        self.ewc = float(ewc)
        self.ewc_batches = ewc_batches
        self.pull: BasePull | None = None  # built in setup, from the base weights
        super().__init__(*args, **kwargs)

    def prepare_model(self) -> None:
        self.model.requires_grad_(True)

    # -- the pull toward the base weights ------------------------------------------------
    def setup(self, stage: str) -> None:
        """Copy the base weights (and take their Fisher) before a checkpoint's weights load:
        Lightning calls this before it restores a resumed run."""
        super().setup(stage)
        if stage != "fit" or not (self.l2_to_base or self.ewc) or self.pull is not None:
            return
        device = self.trainer.strategy.root_device
        params = self._pulled()
        fisher = None
        if self.ewc:
            self.model.to(device)  # where training runs (the strategy would move it next)
            fisher = diagonal_fisher(self.model, params, self._fisher_sequences(), device)
        self.pull = BasePull(params, self.l2_to_base, self.ewc, fisher, device=device)

    def _pulled(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _fisher_sequences(self) -> list[dict[str, torch.Tensor]]:
        """``ewc_batches`` background blocks, one per batch: the replay's corpus settings
        (``replay_source``, ``replay_length``, ``replay_seed``), the first blocks in the
        seed's document order."""
        spec = ReplaySpec(0, *self.corpus_settings)  # checks the corpus settings
        data = self.trainer.datamodule
        if not hasattr(data, "background_blocks"):
            raise ValueError("method.ewc > 0 needs a data module with a background corpus "
                             "(smfexp.data.modules.SFTDataModule); set method.ewc=0")
        blocks, _ = data.background_blocks(spec.parts, spec.length, spec.seed)
        return [data.collator([b]) for b in blocks[:self.ewc_batches]]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """The fact's (and replay's) loss, plus the pull toward the base weights (None, a
        step not taken, when the fact is already learned: ``method.learned_loss``)."""
        loss = super().training_step(batch, batch_idx)
        if self.pull is None or self.learned:
            return loss
        penalty = self.pull(self._pulled())
        self.log("train/base_penalty", penalty, on_step=True, on_epoch=False)
        return loss + penalty

    def extra_results(self) -> dict[str, Any]:
        """``replay`` when on; ``base_pull`` (its settings and how far the weights moved from
        the base) when the L2 / EWC penalty is on."""
        out = super().extra_results()
        if self.pull is not None:
            out["base_pull"] = {"l2_to_base": self.l2_to_base, "ewc": self.ewc,
                                "ewc_batches": self.ewc_batches if self.ewc else None,
                                "distance_to_base": self.pull.distance(self._pulled())}
        return out

    def save_trained(self, directory: Path) -> Path:
        target = Path(directory) / "full"
        self.model.save_pretrained(target, safe_serialization=True)
        return target
