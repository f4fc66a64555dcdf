"""Model state and tokenising for scoring: strings -> token ids with lm-evaluation-harness
0.4.13 ``HFLM`` rules exactly (``tok_encode`` / ``_encode_pair``: the context / continuation
split, the BOS-or-EOS prefix token, the max-length rule), so the ``harness`` protocol
reproduces its numbers; chat templating of a prompt; the eval/inference_mode (+ bf16 autocast)
context every scorer runs under.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from smfexp.utils.modes import eval_mode

TOKENIZER_INFINITY = 1000000000000000019884624838656  # lm_eval.models.utils
DEFAULT_MAX_LENGTH = 2048  # lm_eval HFLM._DEFAULT_MAX_LENGTH


# --------------------------------------------------------------------------- model state
@contextlib.contextmanager
def scoring_mode(model: torch.nn.Module, precision: str = "fp32") -> Iterator[None]:
    """eval() + inference_mode (+ bf16 autocast); the caller's train/eval mode is restored."""
    with eval_mode(model):
        device = model_device(model)
        autocast = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            yield


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def resolve_max_length(model: Any, tokenizer: Any, override: int | None = None) -> int:
    """The harness rule: config ``n_positions``/``max_position_embeddings``/``n_ctx``
    (nested ``text_config`` first), else the tokenizer's ``model_max_length``, else 2048."""
    if override:
        return int(override)
    config = getattr(model, "config", None)
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != TOKENIZER_INFINITY:
        return int(mml)
    return DEFAULT_MAX_LENGTH



# --------------------------------------------------------------------------- tokenising
@dataclass
class Encoder:
    """Strings -> token ids with HFLM's rules (``tok_encode`` / ``_encode_pair``)."""

    tokenizer: Any
    max_length: int

    @property
    def prefix_token_id(self) -> int:
        """BOS, or EOS when there is none: conditions the first token of a document."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def encode_many(
        self, strings: Sequence[str], add_special_tokens: bool | None = None
    ) -> list[list[int]]:
        """Batch ``tok_encode``: strings already starting with the prefix token's text get no
        extra special tokens; the rest use the tokenizer's default."""
        if not strings:
            return []
        out: list[list[int] | None] = [None] * len(strings)
        if add_special_tokens is None:
            bos_text = self.tokenizer.decode(self.prefix_token_id)
            groups: dict[bool | None, list[int]] = {}
            for i, s in enumerate(strings):
                key = False if bos_text and s.startswith(bos_text) else None
                groups.setdefault(key, []).append(i)
        else:
            groups = {add_special_tokens: list(range(len(strings)))}
        for flag, idx in groups.items():
            kwargs = {} if flag is None else {"add_special_tokens": flag}
            ids = self.tokenizer([strings[i] for i in idx], **kwargs)["input_ids"]
            for i, row in zip(idx, ids, strict=True):
                out[i] = list(row)
        return out  # type: ignore[return-value]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) -> token ids, split where the harness splits them.

        Trailing context spaces move to the continuation; the continuation's tokens are those
        of ``encode(context + continuation)`` beyond ``len(encode(context))``. An empty context
        is replaced by the prefix token.
        """
        strings: dict[str, int] = {}
        bare: dict[str, int] = {}
        plan: list[tuple[str, str] | tuple[None, str]] = []
        for context, continuation in pairs:
            if context == "":
                bare.setdefault(continuation, len(bare))
                plan.append((None, continuation))
                continue
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            strings.setdefault(context, len(strings))
            strings.setdefault(context + continuation, len(strings))
            plan.append((context, continuation))
        enc = self.encode_many(list(strings))
        bare_enc = self.encode_many(list(bare), add_special_tokens=False)
        out: list[tuple[list[int], list[int]]] = []
        for context, continuation in plan:
            if context is None:
                cont = bare_enc[bare[continuation]]
                prefix = self.prefix_token_id
                out.append(
                    ([prefix], cont) if not cont or prefix != cont[0] else (cont[:1], cont[1:])
                )
                continue
            ctx = enc[strings[context]]
            whole = enc[strings[context + continuation]]
            out.append((ctx, whole[len(ctx) :]))
        return out


def chat_prompt(tokenizer: Any, user: str, system: str | None = None) -> str:
    """Wrap a prompt as one user turn (after an optional system turn) + the assistant header,
    as the harness does with ``apply_chat_template=True``."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "eval.chat_template=true but the tokenizer has no chat template; "
            "use an instruct model or set eval.chat_template=false"
        )
    messages = [{"role": "user", "content": user}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja TemplateError: some templates reject a system turn
        if not system:
            raise
        return tokenizer.apply_chat_template(
            messages[1:], tokenize=False, add_generation_prompt=True
        )
