"""Sparse Memory Finetuning: per optimizer step, update only the top-t memory value rows.

One optimizer step, readable top to bottom (``training_step``):
1. forward a micro-batch; count which memory slots its real tokens read (on device, no sync);
2. backward: the backbone is frozen, so the backward pass stops at the lowest memory layer;
   no value gradient is materialised - each memory keeps dL/d(read) per token (deferred.py);
3. at the accumulation boundary: all-reduce the counts (data parallel ranks agree), let the
   selector pick ``top_t`` rows per layer from counts + background statistics, build the
   gradient of just those rows, clip, and let the row-sparse optimizer change exactly those
   rows - every other row stays bit-identical.
Manual optimization keeps that order explicit (Lightning's automatic loop would select per
micro-batch or hide it in hooks). Background-preserving updates (``method.replay_k`` > 0):
before step 1 a small background batch's loss, x ``replay_weight``, is backpropagated into the
same sinks without counting its reads, so it moves only the rows selected for the fact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from smfexp.memory import memory_blocks, memory_config, save_memory
from smfexp.memory.deferred import ValueGradSink
from smfexp.methods.base import Prepared, StageInputs
from smfexp.methods.replay import ReplayFinetune
from smfexp.smf.background import BackgroundStats
from smfexp.smf.counting import AccessCounter
from smfexp.smf.diagnostics import (
    SelectionDiagnostics,
    read_share,
    read_weighted_norm,
    weight_on_rows,
)
from smfexp.smf.row_bound import RowBound
from smfexp.smf.selectors import NEEDS_BACKGROUND, SELECTORS, select, selector_score_stats
from smfexp.smf.sparse_optim import (
    RowSparseAdam,
    RowSparseSGD,
    clip_grad_norm_,
    selected_grad_rows,
)
from smfexp.smf.write_load import WriteLoad
from smfexp.training.learned import already_learned, check_learned_loss
from smfexp.training.loss import causal_lm_loss, loss_bearing_mask
from smfexp.utils.configs import require_int, require_number
from smfexp.utils.distributed import distributed

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
# attention: every real token; loss: the positions that predict the answer; fact: the
# positions that carry the fact - the last prompt token and the answer tokens themselves
COUNT_TOKENS = ("attention", "loss", "fact")
# raw: plain SGD (Lin et al.), the step is lr x gradient. row_rms: the step of a layer's
# selected rows has RMS lr x v_dim^-1/2 (the RMS of a freshly initialised value row) whatever
# the gradient's size - which scales with the gate, the read weights and the loss - so one lr
# transfers across memories and retrofits; the gradient sets the direction and how the
# rows' steps compare.
LR_UNITS = ("raw", "row_rms")


def _all_reduce_rows(values: torch.nn.Parameter, rows: Tensor) -> None:
    """Average the gradient of the selected ``rows`` over ranks (t x D floats, not the table).

    Every rank selected the same rows (the counts were all-reduced first), so after this the
    ranks apply identical updates. A row counts as read if any rank read it.
    """
    dim = values.shape[1]
    block = values.new_zeros((rows.numel(), dim))
    present = torch.zeros(rows.numel(), dtype=torch.int64, device=rows.device)
    if values.grad is not None:
        kept, grad_block = selected_grad_rows(values.grad, rows)
        pos = torch.searchsorted(rows, kept)
        block[pos] = grad_block.to(block.dtype)
        present[pos] = 1
    dist.all_reduce(block)
    dist.all_reduce(present)
    block /= dist.get_world_size()
    keep = present > 0
    values.grad = torch.sparse_coo_tensor(rows[keep].unsqueeze(0), block[keep],
                                          size=values.shape).coalesce()


def _build_selected_grad(values: torch.nn.Parameter, sink: ValueGradSink | None,
                         rows: Tensor) -> None:
    """``values.grad`` = the gradient of the selected ``rows`` only (sparse, coalesced).

    Built from the backward passes the sink collected since the last step, then the sink is
    emptied. The rest of the step (all-reduce, clipping, the row-sparse optimizer) sees an
    ordinary sparse gradient; clipping therefore uses the norm of the update actually applied.
    """
    if sink is None:
        return
    kept, block = sink.rows_grad(rows)
    sink.clear()
    values.grad = None if kept.numel() == 0 else torch.sparse_coo_tensor(
        kept.unsqueeze(0), block.to(values.dtype), size=values.shape, is_coalesced=True,
        check_invariants=False)


def fact_token_mask(labels: Tensor) -> Tensor:
    """The positions that carry the fact: the answer tokens (labelled) and the last prompt
    token (the position just before the first of them), where the answer is recalled."""
    answer = labels != -100
    return answer | loss_bearing_mask(labels)


def count_mask(batch: dict[str, Tensor], count_tokens: str) -> Tensor:
    """Which tokens' reads count towards the selection (``method.count_tokens``)."""
    if count_tokens == "attention":
        return batch["attention_mask"]
    if count_tokens == "loss":
        return loss_bearing_mask(batch["labels"])
    return fact_token_mask(batch["labels"])


def normalise_row_step(values: torch.nn.Parameter, scale: float) -> None:
    """Rescale ``values.grad`` (the selected rows) to RMS ``scale`` per element (row_rms)."""
    grad = values.grad
    if grad is None:
        return
    block = grad._values() if grad.is_sparse else grad
    rms = block.double().pow(2).mean().sqrt()
    if rms > 0:
        block.mul_((scale / rms).to(block.dtype))


def _mean_of(layers: list[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over layers (None if any layer lacks it)."""
    values = [layer[key] for layer in layers]
    return None if not values or None in values else sum(values) / len(values)


class SparseMemoryFinetune(ReplayFinetune):
    method_name = "smf"
    uses_memory = True

    def __init__(
        self,
        *args: Any,
        selector: str = "tfidf",
        top_t: int = 512,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        train_gate: bool = False,
        gate_lr: float | None = None,
        count_tokens: str = "attention",
        lr_unit: str = "raw",
        selector_seed: int = 0,
        written_weight: float = 1.0,
        row_max_change: float | None = None,
        learned_loss: float | None = None,
        log_selection_every: int = 1,
        background_stats: BackgroundStats | None = None,
        base_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        """``background_stats`` and ``base_checkpoint`` (the retrofit this run starts from)
        are what :meth:`prepare` built; the other keyword arguments are
        :class:`FinetuneModule`'s."""
        self.check_arguments({"selector": selector, "top_t": top_t, "optimizer": optimizer,
                              "count_tokens": count_tokens, "lr_unit": lr_unit,
                              "written_weight": written_weight, "gate_lr": gate_lr,
                              "row_max_change": row_max_change,
                              "learned_loss": learned_loss,
                              "log_selection_every": log_selection_every})
        if selector in NEEDS_BACKGROUND and background_stats is None:
            raise ValueError(f"selector {selector!r} needs background statistics")
        self.selector = selector
        self.top_t = top_t
        self.optimizer_name = optimizer
        self.momentum = momentum
        self.train_gate = train_gate
        self.gate_lr = gate_lr
        self.count_tokens = count_tokens
        self.lr_unit = lr_unit
        self.selector_seed = selector_seed
        self.written_weight = written_weight
        self.row_max_change = row_max_change
        # a row_rms step moves the rows as far for a fact already recalled as for one still
        # to learn: a step whose loss is below learned_loss is not taken (no backward, no rows)
        self.learned_loss = learned_loss
        # the per-layer selection diagnostics (smf/L*) are 27 of a step's ~32 logged numbers:
        # logging them every N steps keeps a long run's CSV small; results.json's summary
        # still reads every step
        self.log_selection_every = log_selection_every
        self.background = background_stats
        # the memory checkpoint finetuning starts from: a saved run stores only the rows it
        # changed and takes the others from here
        self.base_checkpoint = base_checkpoint
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self.memories = [b.memory for b in memory_blocks(self.model)]
        self.counter = AccessCounter([m.n_slots for m in self.memories])
        # rows ever updated, per layer (bool per slot: 1 byte/slot, e.g. 1 MB for 1M slots)
        self.touched = [torch.zeros(m.n_slots, dtype=torch.bool) for m in self.memories]
        # an empty start (zero values): a row's value is then its whole change
        zero = [not bool(m.values.detach().any()) for m in self.memories]
        self.started_empty = all(zero)
        self.write_load = WriteLoad([m.n_slots for m in self.memories])
        # row_max_change: the starting values of written rows (none kept when it is off)
        self.row_bound = (RowBound(row_max_change, [(m.n_slots, m.v_dim, z) for m, z
                                                    in zip(self.memories, zero, strict=True)])
                          if row_max_change is not None else None)
        self.steps_skipped = 0  # optimizer steps not taken: their fact was already learned
        self._learning = 0  # micro-batches of the current step that backpropagated
        self.generator: torch.Generator | None = None
        self._restored: dict[str, Any] | None = None  # selector state from a checkpoint
        self.diagnostics = SelectionDiagnostics(
            len(self.memories),
            list(background_stats.reads) if background_stats is not None else None)
        self._unit = 0  # the fact (or, for batches mixing facts, the step) being trained
        self._answer_positions: Tensor | None = None

    @classmethod
    def check_arguments(cls, args: Mapping[str, Any]) -> None:
        """One-line errors for impossible arguments, before any model loads."""
        super().check_arguments(args)
        for key, valid in (("selector", SELECTORS), ("optimizer", OPTIMIZERS),
                           ("count_tokens", COUNT_TOKENS), ("lr_unit", LR_UNITS)):
            if key in args and args[key] not in valid:
                raise ValueError(f"method.{key}={args[key]!r}; valid: {', '.join(valid)}")
        if "top_t" in args:
            require_int(args["top_t"], "method.top_t")
        if args.get("lr_unit", "raw") != "raw" and args.get("optimizer", "sgd") != "sgd":
            raise ValueError(f"method.lr_unit={args['lr_unit']} needs method.optimizer=sgd "
                             f"(Adam's step is normalised per element already)")
        if "written_weight" in args:
            require_number(args["written_weight"], "method.written_weight")
        if args.get("gate_lr") is not None:
            require_number(args["gate_lr"], "method.gate_lr")
        if args.get("row_max_change") is not None:
            require_number(args["row_max_change"], "method.row_max_change")
        check_learned_loss(args)
        if "log_selection_every" in args:
            require_int(args["log_selection_every"], "method.log_selection_every")

    # -- stage 1 and what trains -------------------------------------------------------
    @classmethod
    def prepare(cls, stages: StageInputs, model: Any, tokenizer: Any) -> Prepared:
        """Retrofit (or load) the memories into ``model``, then the background statistics
        of its slots; both cached, so every job of a sweep after the first starts in seconds."""
        from smfexp.stages.background import background_statistics
        from smfexp.stages.retrofit import ensure_retrofit

        directory, report = ensure_retrofit(model, tokenizer, stages.model, stages.memory,
                                            stages.retrofit, data_dir=stages.data_dir)
        # every SMF run gets the statistics: tfidf / kl select with them, and the selection
        # diagnostics (how much background text reads the updated rows) need them for any
        stats = background_statistics(model, tokenizer, directory.name, stages.background,
                                      stages.data_dir)
        return Prepared(
            kwargs={"background_stats": stats, "base_checkpoint": str(directory)},
            results={"retrofit": {"checkpoint": str(directory),
                                  "heldout_loss": report.get("heldout_loss")}},
            stage=directory.name,
        )

    def prepare_model(self) -> None:
        blocks = memory_blocks(self.model)
        if not blocks:
            raise ValueError("method=smf needs a model with memory layers (retrofit first)")
        self.model.requires_grad_(False)
        for block in blocks:
            block.memory.values.requires_grad_(True)
            if block.gate is not None:
                block.gate.requires_grad_(self.train_gate)
                if float(block.gate) == 0.0 and not self.train_gate:
                    raise ValueError(
                        f"memory gate of layer {block.layer_idx} is 0 and frozen: the values "
                        f"would get no gradient; set method.train_gate=true or a nonzero gate"
                    )
        for block in blocks:  # value gradients: only the selected rows are ever built
            block.memory.value_grad_sink = ValueGradSink()

    def configure_optimizers(self) -> Any:
        values = [m.values for m in self.memories]
        if self.optimizer_name == "sgd":
            opt = RowSparseSGD(values, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)
        else:
            opt = RowSparseAdam(values, lr=self.lr, betas=self.betas,
                                weight_decay=self.weight_decay)
        optimizers = [opt]
        if self.train_gate:
            gates = [b.gate for b in memory_blocks(self.model) if b.gate is not None]
            # One scalar per layer scales every read of that memory: a value-sized step on it
            # diverges, so it has its own lr (gate_lr; null = the value lr).
            gate_lr = self.gate_lr if self.gate_lr is not None else self.lr
            optimizers.append(torch.optim.SGD(gates, lr=gate_lr) if self.optimizer_name == "sgd"
                              else torch.optim.Adam(gates, lr=gate_lr, betas=self.betas))
        steps = self.optimizer_steps()
        schedulers = [self.lr_schedule(o, steps) for o in optimizers]
        return optimizers, schedulers

    def trainer_settings(self) -> dict[str, Any]:
        """SMF accumulates and clips itself (once per optimizer step, over every micro-batch
        of it), so the Trainer must do neither."""
        return {"accumulate_grad_batches": 1, "gradient_clip_val": None}

    def optimizer_steps(self) -> int:
        """Optimizer steps of this run (what the lr schedule spans).

        Under manual optimization ``trainer.max_steps`` already counts optimizer steps (each
        ``values_opt.step()`` is one global step), while the batches of an epoch are
        micro-batches: only those are divided by ``grad_accum``.
        """
        trainer = self.trainer
        _ = trainer.estimated_stepping_batches  # has Lightning set up the train dataloader
        batches = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        from_epochs = (math.ceil(batches / self.grad_accum) * epochs
                       if epochs is not None and math.isfinite(batches) else math.inf)
        max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else math.inf
        total = min(from_epochs, max_steps)
        return int(total) if math.isfinite(total) and total > 0 else 1

    def setup(self, stage: str) -> None:
        """Keep the value tables out of DDP's dense gradient buckets (their grads are sparse);
        ``_sparse_step`` all-reduces just the selected rows instead."""
        super().setup(stage)  # the background batches of method.replay_k, if any
        names = [n for n, p in self.named_parameters() if any(p is m.values for m in self.memories)]
        self._ddp_params_and_buffers_to_ignore = names

    def on_fit_start(self) -> None:
        super().on_fit_start()
        device = self.memories[0].values.device
        self.counter.to(device)
        self.touched = [t.to(device) for t in self.touched]
        if self.row_bound is not None:
            self.row_bound.to(device)
        if self.background is not None:
            self.background = self.background.to(device)
            self.diagnostics.reads = list(self.background.reads)
        self.generator = torch.Generator(device=device).manual_seed(self.selector_seed)
        if self._restored is not None:  # resumed: the selector state continues
            self.generator.set_state(self._restored["generator"])
            self.touched = [t.to(device) for t in self._restored["touched"]]
            if "diagnostics" in self._restored:
                self.diagnostics.load_state_dict(self._restored["diagnostics"])
            self._restore_levers(self._restored, device)
            self._restored = None

    def _restore_levers(self, saved: dict[str, Any], device: torch.device) -> None:
        """Write load and the row bound's state from a checkpoint's ``smf`` entry."""
        self.write_load.load_state_dict(saved.get("write_load"), device)
        self.steps_skipped = int(saved.get("steps_skipped", 0))
        if self.row_bound is not None:
            self.row_bound.load_state_dict(saved)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients were checked in ``_sparse_step`` (they are sparse)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        assert self.generator is not None
        checkpoint["smf"] = {"generator": self.generator.get_state(),
                             "touched": [t.cpu() for t in self.touched],
                             "diagnostics": self.diagnostics.state_dict(),
                             "write_load": self.write_load.state_dict(),
                             "steps_skipped": self.steps_skipped}
        if self.row_bound is not None:
            checkpoint["smf"].update(self.row_bound.state_dict())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._restored = checkpoint.get("smf")

    # -- one micro-batch / one optimizer step ------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        batch, background = self.split_replay(batch)
        if background is not None:  # background-preserving term: see _background_backward
            self._background_backward(background, batch_idx)
        loss = causal_lm_loss(self.model, batch, self.frozen_casts)
        self.check_finite(loss.detach(), "training loss", batch_idx)
        # a fact already learned: no gradient, its reads not counted
        if not already_learned(loss.detach(), self.learned_loss):
            self._learning += 1
            self.manual_backward(loss / self.grad_accum)
            mask = count_mask(batch, self.count_tokens)
            for layer, memory in enumerate(self.memories):
                self.counter.add(layer, memory.last_indices, mask)
        facts = batch.get("fact_index")
        one_fact = facts is not None and bool((facts == facts[0]).all())
        # diagnostics unit: the fact of a one-fact batch, else the optimizer step
        self._unit = int(facts[0]) if one_fact else -(self.global_step + 1)
        self._answer_positions = loss_bearing_mask(batch["labels"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=batch["input_ids"].shape[0])
        if (batch_idx + 1) % self.grad_accum == 0 or self.trainer.is_last_batch:
            self._sparse_step()
        return loss.detach()

    def _background_backward(self, background: dict[str, Tensor], batch_idx: int) -> None:
        """Backward of ``replay_weight`` x the background batch's loss, before the fact's
        forward: its value gradients join the fact's in the sinks, so the step applies them
        to the rows selected for the fact and nowhere else, and its reads are never counted
        (the selection sees the fact's forward alone, the memories' last reads)."""
        loss = self.replay_loss(background, batch_idx)
        self.manual_backward(self.replay_weight * loss / self.grad_accum)

    def _sparse_step(self) -> None:
        wrapped = self.optimizers()
        values_opt = wrapped[0] if isinstance(wrapped, list) else wrapped
        raw = self.optimizers(use_pl_optimizer=False)
        raw = raw if isinstance(raw, list) else [raw]
        learning, self._learning = self._learning, 0
        if not learning:  # every micro-batch already learned: the step writes nothing
            self._skip_step(values_opt, raw)
            return
        self.counter.all_reduce()
        stats: dict[str, float] = self.diagnostics.step(self._unit)
        self.write_load.step(self._unit)
        written = []
        for layer, memory in enumerate(self.memories):
            counts = self.counter.counts(layer)
            bg = self.background.layer(layer) if self.background is not None else None
            chosen = select(self.selector, counts, bg, self.top_t, self.generator,
                            written=self.touched[layer], written_weight=self.written_weight)
            _build_selected_grad(memory.values, memory.value_grad_sink, chosen.indices)
            if distributed():
                _all_reduce_rows(memory.values, chosen.indices)
            values_opt.optimizer.set_selected_rows(memory.values, chosen.indices)
            self.touched[layer][chosen.indices] = True
            self.write_load.add(layer, chosen.indices)
            if self.row_bound is not None:  # before the step: where the rows started
                self.row_bound.remember(layer, memory.values, chosen.indices)
            written.append(chosen.indices)
            answer_weight = weight_on_rows(memory.last_indices, memory.last_weights,
                                           self._answer_positions, chosen.indices)
            self.diagnostics.add(layer, chosen.indices, answer_weight)
            stats[f"smf/L{layer}/answer_weight_on_selected"] = answer_weight
            score = selector_score_stats(chosen.scores)
            stats[f"smf/L{layer}/rows_read"] = float((counts > 0).sum())
            stats[f"smf/L{layer}/rows_selected"] = float(chosen.indices.numel())
            stats[f"smf/L{layer}/touched_frac"] = float(self.touched[layer].float().mean())
            stats[f"smf/L{layer}/write_load"] = self.write_load.writes[layer] / memory.n_slots
            stats[f"smf/L{layer}/score_max"] = score["max"]
            stats[f"smf/L{layer}/score_mean"] = score["mean"]
        self.counter.reset()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # row_rms fixes each step's size itself: clipping would only shrink it
        clip = math.inf if self.lr_unit == "row_rms" else (self.grad_clip or math.inf)
        norm = clip_grad_norm_(trainable, clip)  # also the NaN check
        self.check_finite(norm, "gradient norm")
        stats["train/grad_norm"] = float(norm)
        if self.learned_loss is not None:  # every step: a logged key keeps its last value
            stats["train/step_skipped"] = 0.0
        if self.lr_unit == "row_rms":
            for memory in self.memories:
                normalise_row_step(memory.values, memory.v_dim ** -0.5)
        values_opt.step()  # the wrapped step counts as the trainer's global step
        for opt in raw[1:]:  # gate optimizer: unwrapped so one SMF step = one global step
            opt.step()
        if self.row_bound is not None:
            stats.update(self.row_bound.apply([m.values for m in self.memories], written))
        for opt in raw:
            opt.zero_grad(set_to_none=True)
        self._step_schedulers()
        stats["train/lr"] = values_opt.param_groups[0]["lr"]
        if self.train_gate:
            for layer, block in enumerate(memory_blocks(self.model)):
                if block.gate is not None:
                    stats[f"smf/L{layer}/gate"] = float(block.gate)
        self._log_step(stats)

    def _skip_step(self, values_opt: Any, raw: list[torch.optim.Optimizer]) -> None:
        """An optimizer step that changes nothing, so the step count (the lr schedule, the
        facts seen) runs on: the background term's gradients are dropped, no row is chosen."""
        self.counter.reset()
        for memory in self.memories:
            if memory.value_grad_sink is not None:
                memory.value_grad_sink.clear()
        for opt in raw:
            opt.zero_grad(set_to_none=True)
        values_opt.step()  # no gradient: nothing moves, the global step counts
        self._step_schedulers()
        self.steps_skipped += 1
        stats = {f"smf/L{layer}/rows_selected": 0.0 for layer in range(len(self.memories))}
        self._log_step({**stats, "train/lr": values_opt.param_groups[0]["lr"],
                        "train/step_skipped": 1.0})

    def _log_step(self, stats: dict[str, float]) -> None:
        """Log a step's numbers; the per-layer ``smf/L*`` ones only on every
        ``log_selection_every``-th step (counted from 1) and the run's last, straight to the
        loggers: a key given to ``self.log`` is logged again, with its last value, on every
        later step."""
        selection = {k: v for k, v in stats.items() if k.startswith("smf/L")}
        self.log_dict({k: v for k, v in stats.items() if k not in selection},
                      on_step=True, on_epoch=False)
        due = self.global_step % self.log_selection_every == 0 or self.trainer.is_last_batch
        if selection and due:
            for logger in self.loggers:
                logger.log_metrics(selection, step=self.global_step)

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
            sched.step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The lr is logged by ``_sparse_step`` (one value per optimizer step)."""

    def memory_fill(self) -> dict[str, Any]:
        """How full the memory is, averaged over layers: the share of value rows written so
        far, the write load (distinct (fact, row) writes per slot, which keeps growing after
        rows touched saturates) beside its nominal value, the share of background reads that
        land on the written rows, and (memories that started empty) the mean norm of the
        value a background read lands on - how much general text sees changed, which the
        share of rows alone does not say. Per layer: ``write_load_per_layer``."""
        rows = [float(t.float().mean()) for t in self.touched]
        reads = self.diagnostics.reads
        shares = ([read_share(r, t.nonzero().squeeze(1)) for r, t in
                   zip(reads, self.touched, strict=True)] if reads is not None else None)
        change = ([read_weighted_norm(r, m.values) for r, m in
                   zip(reads, self.memories, strict=True)]
                  if reads is not None and self.started_empty else None)
        load = self.write_load_summary()
        return {"rows_touched_share": sum(rows) / len(rows),
                "write_load": _mean_of(load, "write_load"),
                "write_load_nominal": _mean_of(load, "write_load_nominal"),
                "write_load_per_layer": [layer["write_load"] for layer in load],
                "touched_background_share": sum(shares) / len(shares) if shares else None,
                "background_read_change": sum(change) / len(change) if change else None}

    def write_load_summary(self) -> list[dict[str, Any]]:
        """Per layer: write load, nominal write load (none for ``selector=all``, which
        ignores ``top_t``), distinct writes and rows touched."""
        top_t = None if self.selector == "all" else self.top_t
        return self.write_load.summary(top_t, self.touched)

    # -- outputs -------------------------------------------------------------------------
    def save_trained(self, directory: Path) -> Path:
        """The memory with only the value rows this run changed (the rest: the starting point)."""
        start = self.base_checkpoint
        cfg = memory_config(self.model)
        if start is None and cfg is not None and cfg.value_init == "zero":
            start = "zero"
        if start is None:  # nowhere to take the other rows from: write the whole tables
            return save_memory(self.model, Path(directory) / "memory")
        return save_memory(self.model, Path(directory) / "memory", rows=self.touched,
                           untouched_from=start)

    def on_fit_end(self) -> None:
        """Under data parallelism, check that every rank ended with the same value tables."""
        self.ranks_agree: bool | None = None
        if not distributed():
            return
        local = torch.stack([m.values.detach().double().sum() for m in self.memories]
                            + [t.double().sum() for t in self.touched])
        gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        self.ranks_agree = all(torch.equal(g, gathered[0]) for g in gathered)
        if not self.ranks_agree:
            raise RuntimeError("SMF ranks diverged: value tables differ across DDP ranks")

    def extra_results(self) -> dict[str, Any]:
        rows = [int(t.sum()) for t in self.touched]
        row_bytes = [m.values.shape[1] * m.values.element_size() for m in self.memories]
        return {
            **super().extra_results(),  # replay: the background-preserving term, when on
            "smf": {
                "selector": self.selector,
                "top_t": self.top_t,
                "optimizer": self.optimizer_name,
                "train_gate": self.train_gate,
                "gate_lr": self.gate_lr,
                "count_tokens": self.count_tokens,
                "lr_unit": self.lr_unit,
                "written_weight": self.written_weight,
                "row_max_change": self.row_max_change,
                "rows_bounded_per_layer": (list(self.row_bound.rows_bounded)
                                           if self.row_bound is not None else None),
                "learned_loss": self.learned_loss,
                "steps_skipped": self.steps_skipped,
                "updated_rows_per_layer": rows,
                # distinct (fact, row) writes / slots per layer, beside top_t x facts / slots
                "write_load": self.write_load_summary(),
                "write_units": self.write_load.units,
                "slots_per_layer": [m.n_slots for m in self.memories],
                "bytes_changed": sum(r * b for r, b in zip(rows, row_bytes, strict=True)),
                "background_batches": self.background.n_batches if self.background else None,
                # is the memory spread over its slots, or collapsed onto a few (pkm.py)?
                "background_unit": self.background.meta.get("unit", "batch")
                if self.background else None,
                # is the memory spread over its slots (pkm.py), and does idf discriminate?
                "background_key_usage": [
                    {k: layer[k] for k in ("coverage", "top1pct_read_share", "df_eq_n",
                                           "idf_below_0.1")}
                    for layer in self.background.summary()["layers"]
                ] if self.background else None,
                # how specific the updated rows are (smf/diagnostics.py), per layer
                "diagnostics": self.diagnostics.summary(self.touched),
                "world_size": dist.get_world_size() if distributed() else 1,
                "ranks_agree": getattr(self, "ranks_agree", None),
            }
        }
