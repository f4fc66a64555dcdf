"""Scoring that reuses the outputs of decoder blocks training never changes.

Sparse memory finetuning writes only memory rows, so every block below the lowest memory
layer computes the same hidden states on the same text before, during and after training.
:class:`FrozenPrefixModel` wraps the model for scoring: the log-likelihood scorers
(:mod:`smfexp.eval.loglik`, the retention probe) ask it for its body, which takes the output
of the first ``depth`` blocks for each input row from a :class:`PrefixStore` (computed once,
on the row's first batch) and runs only the blocks above. Generation goes through the wrapped
model unchanged. The store keeps rows in memory for the run and, with a directory, on disk
for every later run of the same model: the probe texts are the same for every run.

The split is used only when it provably equals the model: a short input is scored both ways
at construction (a model whose input embeddings are scaled or position-embedded, e.g. GPT-2
or Gemma, does not split this way and is scored as before).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from smfexp.eval.loglik import ScoringParts, scoring_parts

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".safetensors"


def row_key(ids: torch.Tensor) -> str:
    """A stable name for one input row (its token ids, padding included)."""
    data = ids.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def lower_fingerprint(model: nn.Module, blocks: nn.ModuleList, depth: int) -> str:
    """Hash of the weights the cached rows depend on: the input embeddings and the first
    ``depth`` blocks (a retrofit or another model gets another store)."""
    h = hashlib.blake2b(digest_size=16)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    modules = ([embeddings] if embeddings is not None else []) + list(blocks[:depth])
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class PrefixStore:
    """Lower-block outputs per input row, in memory and (with ``directory``) on disk as
    safetensors shards: one shard per :meth:`save`, written atomically; a shard that does not
    load is removed with a warning, never used."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.rows: dict[str, torch.Tensor] = {}
        self._unsaved: set[str] = set()
        self.hits = 0
        self.misses = 0
        if directory is not None and directory.is_dir():
            self._load(directory)

    def _load(self, directory: Path) -> None:
        for shard in sorted(directory.glob(f"*{SHARD_SUFFIX}")):
            try:
                self.rows.update(load_file(str(shard)))
            except Exception as err:  # truncated or garbage: rebuild its rows when needed
                log.warning("prefix cache shard %s is unreadable (%s); removing it", shard, err)
                shard.unlink(missing_ok=True)

    def get(self, key: str) -> torch.Tensor | None:
        return self.rows.get(key)

    def put(self, key: str, value: torch.Tensor) -> None:
        self.rows[key] = value.detach().to("cpu").contiguous()
        self._unsaved.add(key)

    def save(self) -> Path | None:
        """Write the rows added since the last save as one new shard (None: nothing new)."""
        if self.directory is None or not self._unsaved:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        keys = sorted(self._unsaved)
        name = hashlib.blake2b("".join(keys).encode(), digest_size=12).hexdigest()
        path = self.directory / f"{name}{SHARD_SUFFIX}"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: self.rows[k] for k in keys}, str(tmp))
        os.replace(tmp, path)
        self._unsaved.clear()
        return path


class _Stop(Exception):
    """Raised by the hook after the last frozen block: nothing above it is computed."""


class FrozenPrefixModel(nn.Module):
    """``model`` for scoring, with the first ``depth`` decoder blocks' outputs reused per row."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, depth: int,
                 store: PrefixStore) -> None:
        super().__init__()
        if not 0 < depth < len(blocks):
            raise ValueError(f"frozen depth {depth} must be within the {len(blocks)} blocks")
        self.model = model
        self.depth = depth
        self.store = store
        self._blocks = blocks
        self._split: ScoringParts | None = None
        self._checked = False

    # -- what the rest of the scoring code sees: the model ---------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def generation_config(self) -> Any:
        return getattr(self.model, "generation_config", None)

    def scoring_parts(self) -> ScoringParts:
        """Body from the cached lower blocks + the head; the plain parts if the split does
        not reproduce the model (checked once)."""
        plain = scoring_parts(self.model)
        if not self._checked:
            self._checked = True
            self._split = self._try_split(plain)
        if self._split is None:
            return plain
        return ScoringParts(body=self._body, head=plain.head, split=plain.split,
                            vocab_size=plain.vocab_size)

    # -- the split -----------------------------------------------------------------------
    def _decoder(self) -> tuple[nn.Module, str]:
        """The module holding the block list, and the attribute it is under."""
        inner = self.model.get_base_model() if callable(
            getattr(self.model, "get_base_model", None)) else self.model
        base = getattr(inner, "base_model", None)
        for module in (base, *(inner.modules() if base is None else ())):
            for name, child in (module.named_children() if module is not None else ()):
                if child is self._blocks:
                    return module, name
        raise ValueError("cannot find the decoder that holds the blocks")

    def _lower(self, ids: torch.Tensor) -> torch.Tensor:
        decoder, _ = self._decoder()
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self._blocks[self.depth - 1].register_forward_hook(stop)
        try:
            decoder(input_ids=ids, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the frozen blocks did not run")
        return captured[0]

    @contextlib.contextmanager
    def _upper_blocks(self) -> Iterator[nn.Module]:
        decoder, name = self._decoder()
        setattr(decoder, name, nn.ModuleList(list(self._blocks)[self.depth:]))
        try:
            yield decoder
        finally:
            setattr(decoder, name, self._blocks)

    def _upper(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._upper_blocks() as decoder:
            return decoder(inputs_embeds=hidden, use_cache=False).last_hidden_state

    def _body(self, ids: torch.Tensor) -> torch.Tensor:
        keys = [row_key(row) for row in ids]
        missing = [i for i, k in enumerate(keys) if self.store.get(k) is None]
        if missing:
            lower = self._lower(ids if len(missing) == len(keys) else ids[missing])
            for j, i in enumerate(missing):
                self.store.put(keys[i], lower[j if len(missing) < len(keys) else i])
        self.store.hits += len(keys) - len(missing)
        self.store.misses += len(missing)
        hidden = torch.stack([self.store.rows[k] for k in keys]).to(ids.device)
        return self._upper(hidden)

    def _try_split(self, plain: ScoringParts) -> ScoringParts | None:
        if not plain.split:
            log.info("scoring without the frozen-block cache: the model's logits are not a "
                     "head over its last hidden state")
            return None
        param = next(self.model.parameters())
        vocab = plain.vocab_size or 2
        ids = (torch.arange(3, 11, device=param.device) % vocab).unsqueeze(0)
        try:
            want = plain.body(ids).float()
            got = self._upper(self._lower(ids)).float()
        except Exception as err:  # an unusual decoder: score as before
            log.info("scoring without the frozen-block cache (%s: %s)", type(err).__name__, err)
            return None
        scale = 1.0 + float(want.abs().max())
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * scale):
            log.info("scoring without the frozen-block cache: this decoder does not take its "
                     "hidden states as input embeddings unchanged")
            return None
        return plain


def frozen_depth(model: nn.Module, blocks: nn.ModuleList) -> int:
    """How many leading decoder blocks nothing trains (0 when the input embeddings train or
    nothing does): under SMF, the blocks below the lowest memory layer."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None or any(p.requires_grad for p in embeddings.parameters()):
        return 0
    for index, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return index
    return 0
