"""The Lightning module basics every training stage shares: loss, optimizer + warmup schedule,
finite checks and checkpoints that hold only what trains.

Below both the retrofit (stage 1 of SMF, :mod:`smfexp.stages.retrofit`) and the finetuning
methods (:class:`smfexp.methods.base.FinetuneModule`), so neither depends on the other. A
subclass says what trains (``prepare_model``) and how it is saved (``save_trained``), and,
if needed, how its parameters are optimised (``build_optimizer``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from smfexp.errors import NonFiniteError
from smfexp.training.loss import FrozenWeightCasts, causal_lm_loss
from smfexp.utils.configs import require_int, require_number

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant")


class CausalLMModule(LightningModule):
    """Causal-LM training of whatever ``prepare_model`` leaves trainable."""

    method_name = "base"  # names the run in logs and checkpoints

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        schedule: str = "cosine",
        gradient_checkpointing: bool = False,
        grad_accum: int = 1,
        grad_clip: float | None = 1.0,
    ) -> None:
        super().__init__()
        self.strict_loading = False  # checkpoints hold only what trains (on_save_checkpoint)
        CausalLMModule.check_arguments({"lr": lr, "grad_accum": grad_accum,
                                        "warmup_steps": warmup_steps, "schedule": schedule})
        self.model = model
        self.tokenizer = tokenizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.gradient_checkpointing = gradient_checkpointing
        self.grad_accum = grad_accum
        self.grad_clip = grad_clip
        self.frozen_casts = FrozenWeightCasts()  # bf16 copies of frozen weights (loss.py)
        self.prepare_model()
        self.trainable_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.total_params = sum(p.numel() for p in self.model.parameters())
        if self.trainable_params == 0:
            raise ValueError(f"method {self.method_name}: nothing to train")
        log.info("%s: %s trainable of %s parameters (%.3f%%)", self.method_name,
                 f"{self.trainable_params:,}", f"{self.total_params:,}",
                 100 * self.trainable_params / self.total_params)

    @classmethod
    def check_arguments(cls, args: Mapping[str, Any]) -> None:
        """One-line errors for impossible constructor arguments (those present in ``args``):
        the run config calls it before any model loads, the constructor on what it gets."""
        if "lr" in args:
            require_number(args["lr"], "method.lr")
        if "grad_accum" in args:
            require_int(args["grad_accum"], "method.grad_accum")
        if "warmup_steps" in args:
            require_int(args["warmup_steps"], "method.warmup_steps", minimum=0)
        if "schedule" in args and args["schedule"] not in SCHEDULES:
            raise ValueError(f"method.schedule={args['schedule']!r}; valid: "
                             f"{', '.join(SCHEDULES)}")

    # -- what a subclass decides ------------------------------------------------------
    def prepare_model(self) -> None:
        """Set ``requires_grad`` (and wrap the model) for this stage or method."""
        raise NotImplementedError

    def build_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay,
                                 betas=self.betas, **self._adamw_kernel(params))

    def _adamw_kernel(self, params: list[torch.nn.Parameter]) -> dict[str, bool]:
        """The fastest AdamW kernel (the same update, up to rounding): ``fused`` (one kernel for
        every tensor; 0.16 s vs 1.8 s per full-finetuning step of the 135M model on a 2-core
        CPU, where torch's default is the per-tensor loop), except under mixed precision with
        clipping, which Lightning refuses for fused optimizers; there ``foreach``."""
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        devices = {p.device.type for p in params}
        floating = all(p.is_floating_point() for p in params)
        if floating and devices <= {"cpu", "cuda"} and (
                "mixed" not in precision or not self.grad_clip):
            return {"fused": True}
        return {"foreach": True} if floating else {}

    def save_trained(self, directory: Path) -> Path:
        """Save what this module trained (safetensors) into ``directory``."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------
    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = causal_lm_loss(self.model, batch, self.frozen_casts)
        self.check_finite(loss.detach(), "training loss", batch_idx)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def on_fit_start(self) -> None:
        # load_model returns eval mode (for scoring); dropout etc. must be live while training
        self.model.train()
        self.frozen_casts.clear()  # made again from the weights this fit starts with
        if self.gradient_checkpointing:  # trade ~1 extra forward for most saved activations
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5
                self.model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
        for logger in self.loggers:
            logger.log_hyperparams({"params/trainable": self.trainable_params,
                                    "params/total": self.total_params, "method": self.method_name})

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"],
                     on_step=True, on_epoch=False)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.build_optimizer(params)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        total = int(total) if math.isfinite(total) else 1
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.lr_schedule(optimizer, total),
                                 "interval": "step"}}

    def lr_schedule(self, optimizer: torch.optim.Optimizer, steps: int) -> LRScheduler:
        """The lr schedule of a run of ``steps`` optimizer steps.

        When the data says this run is the first part of a longer stream (``data.lr_horizon``,
        its ``schedule_span`` > 1), the schedule spans the whole stream: each step gets the
        longer run's lr, so a 256-fact run is the first 256 facts of the 1000-fact one.
        """
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        span = float(getattr(datamodule, "budget", {}).get("schedule_span", 1.0))
        return get_scheduler(
            self.schedule if self.schedule != "constant" else "constant_with_warmup",
            optimizer, num_warmup_steps=min(self.warmup_steps, max(steps - 1, 0)),
            num_training_steps=max(round(steps * span), 1),
        )

    # -- numerical faults -------------------------------------------------------------
    def check_finite(self, value: torch.Tensor, what: str, batch_idx: int | None = None) -> None:
        """Stop the run (no update applied) when ``value`` is NaN/Inf; one host sync."""
        if not torch.isfinite(value).all():
            where = f"step {self.global_step + 1}" + (
                f" (batch {batch_idx})" if batch_idx is not None else "")
            raise NonFiniteError(
                f"non-finite {what} ({float(value):g}) at {where}; nothing was applied and the "
                f"last good checkpoint is kept. Lower method.lr, check the data, or try "
                f"trainer.precision=32-true"
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            self.check_finite(torch.nn.utils.get_total_norm(grads), "gradient norm")

    # -- checkpoints: what trains, not the frozen backbone --------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }
        checkpoint["smfexp_method"] = self.method_name

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        method = checkpoint.get("smfexp_method")
        if method not in (None, self.method_name):
            raise ValueError(f"the checkpoint was written by method={method}, this run is "
                             f"method={self.method_name}")
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        saved = set(checkpoint["state_dict"])
        mismatch = (saved - set(self.state_dict())) or (trainable - saved)
        if mismatch:
            example = sorted(mismatch)[0]
            raise ValueError(f"the checkpoint does not match this model/method (e.g. {example});"
                             f" resume with the config that wrote it")
