"""The training loss: next-token cross-entropy computed only where a label is scored.

A plain ``model(labels=...)`` projects every position onto the vocabulary: for 8 x 256 tokens
and SmolLM2's 49k vocabulary that is a 400 MB logits tensor, its fp32 copy and its gradient -
more memory than the rest of an SMF step - although SFT batches score a few tokens per row.
Here the decoder runs once, only the loss-bearing positions are kept, and the vocabulary
projection + cross-entropy run in 128-position chunks that compute their gradient on the spot (the
fused-linear-cross-entropy idea), so no [tokens, vocab] tensor ever exists. Same mean loss
and gradients as the model's own; models whose logits are not ``lm_head(hidden)`` (logit
soft-capping / scaling) fall back to the model's loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

CHUNK_TOKENS = 128  # positions per vocabulary projection (128 x 49k fp32 = 25 MB); 512 held
                   # 4x the buffer and was no faster (845 vs 712 ms, 2040 positions, busy CPU)


def loss_bearing_mask(labels: Tensor) -> Tensor:
    """Positions whose output is scored: logits[t] predicts labels[t + 1]."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def _causal_lm(model: nn.Module) -> nn.Module:
    """The HF causal LM inside a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_chunked_loss(model: nn.Module) -> bool:
    """True if logits are exactly ``lm_head(decoder(x))`` (Llama, Qwen2, Mistral, ...)."""
    lm = _causal_lm(model)
    config = getattr(lm, "config", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if config is None or not hasattr(lm, "get_decoder") or head is None:
        return False
    if lm.get_decoder() is lm:  # e.g. Llama 4: no separate decoder to run without the head
        return False
    if getattr(head, "bias", None) is not None:
        return False
    return not any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale",
                                                      "logits_scaling"))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ W^T, target_i), gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        need_w = ctx.needs_input_grad[1]
        device = hidden.device.type
        # The matmuls run in the autocast dtype if autocast is on (as lm_head would), with the
        # weight cast once per call, not once per chunk (a frozen weight is not in autocast's
        # cast cache); the softmax / cross-entropy run in fp32.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) \
            else hidden.dtype
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(device, enabled=False):
            for start in range(0, hidden.shape[0], CHUNK_TOKENS):
                h = hidden[start : start + CHUNK_TOKENS].to(dtype)
                t = targets[start : start + CHUNK_TOKENS]
                logits = (h @ w.t()).float()
                target_logit = logits.gather(1, t.unsqueeze(1)).squeeze(1)
                # softmax in place: one [chunk, vocab] fp32 buffer (logsumexp would add one)
                peak = logits.amax(dim=1, keepdim=True)
                norm = logits.sub_(peak).exp_().sum(dim=1, keepdim=True)
                total += (peak + norm.log()).squeeze(1).sub_(target_logit).sum()
                dlogits = logits.div_(norm)
                dlogits[torch.arange(t.numel(), device=t.device), t] -= 1.0
                dlogits = dlogits.to(dtype)
                grad_h[start : start + CHUNK_TOKENS] = dlogits @ w
                if grad_w is not None:
                    grad_w += (dlogits.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
        ctx.need_w = need_w
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        grad_w = grad_w * grad_total if ctx.need_w else None
        return grad_h * grad_total.to(grad_h.dtype), grad_w, None


class FrozenWeightCasts:
    """Low-precision copies of the frozen linear weights, made once per autocast dtype.

    Autocast casts a weight to bf16 on every use, and caches the cast only for weights that
    require grad: with a frozen backbone (SMF, LoRA) each training forward re-casts every
    weight of the model, which costs more than the bf16 matmuls save on small fact batches.
    The copy is the very cast autocast would make, so the loss and the gradients are
    bit-identical; the fp32 weights stay the model's (scoring, checkpoints).
    """

    def __init__(self) -> None:
        self._key: tuple[str, torch.dtype] | None = None
        self._decoder: dict[str, Tensor] = {}
        self._head: Tensor | None = None

    def clear(self) -> None:
        self._key, self._decoder, self._head = None, {}, None

    def get(self, decoder: nn.Module, head: nn.Module) -> tuple[dict[str, Tensor], Tensor | None]:
        """(decoder weights by name, head weight or None) for the active autocast; nothing
        when autocast is off or runs in fp32."""
        device = head.weight.device.type
        if not torch.is_autocast_enabled(device):
            return {}, None
        dtype = torch.get_autocast_dtype(device)
        if dtype == torch.float32:
            return {}, None
        if self._key != (device, dtype):
            self._decoder = {
                f"{name}.weight": module.weight.detach().to(dtype)
                for name, module in decoder.named_modules()
                if isinstance(module, nn.Linear) and not module.weight.requires_grad
                and module.weight.dtype == torch.float32}
            frozen_head = not head.weight.requires_grad and head.weight.dtype == torch.float32
            self._head = head.weight.detach().to(dtype) if frozen_head else None
            self._key = (device, dtype)
        return self._decoder, self._head


def causal_lm_loss(model: nn.Module, batch: dict[str, Tensor],
                   casts: FrozenWeightCasts | None = None) -> Tensor:
    """Mean next-token cross-entropy over the labelled tokens (HF's causal-LM loss).
    ``casts``: reuse low-precision copies of the frozen weights under autocast."""
    labels = batch["labels"]
    if not supports_chunked_loss(model):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=labels).loss
    lm = _causal_lm(model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    weights, head_weight = casts.get(decoder, head) if casts is not None else ({}, None)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    hidden = (functional_call(decoder, weights, args=(), kwargs=inputs) if weights
              else decoder(**inputs)).last_hidden_state
    keep = loss_bearing_mask(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    weight = head_weight if head_weight is not None else head.weight
    total = _ChunkedLinearCrossEntropy.apply(hidden[keep], weight, targets)
    return total / targets.numel()
