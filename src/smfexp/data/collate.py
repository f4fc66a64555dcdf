"""Tokenise prompt/target pairs once and pad batches: the one collator every benchmark shares."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
LOSS_ON = ("target", "all")
OVERLONG = ("drop", "truncate", "error")


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    target: str,
    loss_on: str = "target",
    append_eos: bool = True,
    add_bos: bool = False,
) -> TokenizedExample:
    """Encode prompt and target separately (as lm-eval does) so the loss boundary is exact."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if add_bos and tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    if append_eos and tokenizer.eos_token_id is not None:
        target_ids = [*target_ids, tokenizer.eos_token_id]
    ids = prompt_ids + target_ids
    if loss_on == "target":
        labels = [IGNORE_INDEX] * len(prompt_ids) + list(target_ids)
    elif loss_on == "all":
        labels = list(ids)
    else:
        raise ValueError(f"loss_on={loss_on!r}; valid: {', '.join(LOSS_ON)}")
    return TokenizedExample(ids, labels)


def fit_length(
    examples: Sequence[TokenizedExample], max_length: int, policy: str, name: str,
    quiet: bool = False,
) -> list[TokenizedExample]:
    """Apply the over-long policy: drop / truncate (from the left, keeping the target) / error.

    ``quiet``: return what is left (possibly nothing) without warning, for callers that apply
    the policy to many small groups (one fact's phrasings) and report once.
    """
    if policy not in OVERLONG:
        raise ValueError(f"overlong={policy!r}; valid: {', '.join(OVERLONG)}")
    if max_length < 1:  # ids[-0:] would keep everything
        raise ValueError(f"{name}: max_length={max_length} must be a positive number of tokens")
    kept: list[TokenizedExample] = []
    over = 0
    for ex in examples:
        if len(ex.input_ids) <= max_length:
            kept.append(ex)
            continue
        over += 1
        if policy == "error":
            raise ValueError(
                f"{name}: an example has {len(ex.input_ids)} tokens > max_length={max_length}; "
                f"raise data.max_length or set data.overlong=drop|truncate"
            )
        if policy == "truncate":
            kept.append(TokenizedExample(ex.input_ids[-max_length:], ex.labels[-max_length:]))
    if over and not quiet:
        verb = "dropped" if policy == "drop" else "truncated"
        log.warning(
            "%s: %s %d of %d examples longer than %d tokens",
            name,
            verb,
            over,
            len(examples),
            max_length,
        )
    if not kept and not quiet:
        raise ValueError(f"{name}: no examples left after applying max_length={max_length}")
    return kept


class PadCollator:
    """Right-pad a list of :class:`TokenizedExample` into model inputs; padding carries no loss."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, batch: Sequence[TokenizedExample]) -> dict[str, Any]:
        length = max(len(ex.input_ids) for ex in batch)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = (length + m - 1) // m * m
        input_ids = torch.full((len(batch), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex.input_ids)
            input_ids[i, :n] = torch.tensor(ex.input_ids)
            labels[i, :n] = torch.tensor(ex.labels)
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
