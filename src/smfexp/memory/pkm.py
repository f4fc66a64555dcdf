"""Product-key memory layer (Lample et al. 2019) with the Memory+ output gate (Berges et al. 2024).

One forward, for hidden states ``x`` of shape [B, T, D]:

1. ``q = query_proj(x)`` split into ``heads`` queries of ``k_dim``; each query is split in two
   halves of ``k_dim / 2``.
2. Each half is scored against its own ``n_keys`` sub-keys; the top ``knn`` of each half are kept.
3. Pairs of the two lists are the candidates, score = sum; their top ``knn`` are exactly the
   top ``knn`` over all ``n_keys**2`` slots (a slot outside the two per-half top lists is beaten
   by ``knn`` slots built from them). With both lists sorted, the pair of ranks (a, b) is beaten
   by the (a+1)(b+1)-1 pairs of lower ranks, so only pairs with (a+1)(b+1) <= knn can make the
   cut: 50 candidates instead of 256 for knn 16.
4. slot = i1 * n_keys + i2; softmax over the ``knn`` kept scores.
5. One ``embedding_bag`` over all tokens and heads gathers the score-weighted sum of value rows.
6. Memory+: ``out_proj(bag * silu(gate_proj(x)))``.

The value table is the only large tensor and the one sparse finetuning updates, so it is a
plain float32 ``nn.Parameter`` whose gradient can be made sparse (``sparse_grad``): an
optimizer then sees only the rows this step read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from smfexp.memory.deferred import ValueGradSink, deferred_embedding_bag

QUERY_NORMS = ("none", "layer", "batch")
# "zero": an empty memory - its output is exactly 0, so the model with it attached *is* the base
# model, and every row SMF writes holds only what was written into it
VALUE_INITS = ("normal", "zero")


class ProductKeyMemory(nn.Module):
    """A key-value memory with ``n_keys**2`` slots read through product keys."""

    def __init__(
        self,
        hidden_size: int,
        n_keys: int = 128,
        heads: int = 4,
        knn: int = 16,
        k_dim: int = 256,
        v_dim: int | None = None,
        query_norm: str = "none",
        value_init: str = "normal",
    ) -> None:
        super().__init__()
        if value_init not in VALUE_INITS:
            raise ValueError(f"value_init={value_init!r} is not one of {', '.join(VALUE_INITS)}")
        self.value_init = value_init
        if k_dim % 2:
            raise ValueError(f"k_dim must be even (two halves per query), got {k_dim}")
        if not 0 < knn <= n_keys:
            raise ValueError(f"knn must be in [1, n_keys={n_keys}], got {knn}")
        self.hidden_size = hidden_size
        self.n_keys, self.heads, self.knn, self.k_dim = n_keys, heads, knn, k_dim
        self.v_dim = v_dim or hidden_size
        half = k_dim // 2

        self.query_proj = nn.Linear(hidden_size, heads * k_dim, bias=False)
        # "batch" (Lample et al.'s BatchNorm): standardising every query dimension over tokens
        # removes the direction all hidden states share, which otherwise sends most tokens to
        # the same few slots. Measured on SmolLM2 with 262K slots: the plain retrofit reads 2-3%
        # of the slots, its top 1% taking 91-97% of all reads. "layer" (per-token LayerNorm)
        # does not remove that shared direction.
        if query_norm not in QUERY_NORMS:
            raise ValueError(f"query_norm={query_norm!r} is not one of {', '.join(QUERY_NORMS)}")
        self.query_norm: nn.Module | None = (
            nn.LayerNorm(k_dim) if query_norm == "layer"
            else nn.BatchNorm1d(heads * k_dim) if query_norm == "batch" else None
        )
        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, half))
        self.values = nn.Parameter(torch.empty(n_keys * n_keys, self.v_dim))
        self.gate_proj = nn.Linear(hidden_size, self.v_dim, bias=False)
        self.out_proj = nn.Linear(self.v_dim, hidden_size, bias=False)

        # Rank pairs (a, b) with (a+1)(b+1) <= knn: the only pairs that can reach the top-knn.
        pairs = [(a, b) for a in range(knn) for b in range(knn) if (a + 1) * (b + 1) <= knn]
        self.register_buffer("_rank_a", torch.tensor([a for a, _ in pairs]), persistent=False)
        self.register_buffer("_rank_b", torch.tensor([b for _, b in pairs]), persistent=False)

        # Runtime switches and read-out for callers (not parameters, not saved).
        self.sparse_grad = False
        # When set, the value gradient is not materialised: backward leaves what builds any
        # row's gradient in the sink (SMF builds just the selected rows; see deferred.py).
        self.value_grad_sink: ValueGradSink | None = None
        self.last_indices: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None
        self.reset_parameters()

    @property
    def n_slots(self) -> int:
        return self.n_keys * self.n_keys

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Keys uniform in +-1/sqrt(half) (Lample et al.), values N(0, 1/v_dim) (or 0)."""
        bound = 1.0 / math.sqrt(self.k_dim // 2)
        self.keys.uniform_(-bound, bound)
        if self.value_init == "zero":
            self.values.zero_()
        else:
            self.values.normal_(0.0, self.v_dim**-0.5)
        for lin in (self.query_proj, self.gate_proj, self.out_proj):
            lin.reset_parameters()
        if self.query_norm is not None:
            self.query_norm.reset_parameters()

    @torch.no_grad()
    def calibrate_query_norm(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Accumulate the exact mean / variance of the queries of ``x`` [..., hidden] (real
        tokens where ``mask`` is 1) into the BatchNorm running statistics.

        Call :meth:`start_calibration` first. Used when the query path does not train (an
        untrained, or zero-valued, memory): batch statistics would otherwise never be set.
        """
        q = self.query_proj(x.to(self.query_proj.weight.dtype)).reshape(-1, self.heads
                                                                         * self.k_dim)
        if mask is not None:
            q = q[mask.reshape(-1).bool()]
        q = q.double()
        n, total, squares = self._calibration
        self._calibration = (n + q.shape[0], total + q.sum(0), squares + (q * q).sum(0))
        mean = self._calibration[1] / self._calibration[0]
        var = self._calibration[2] / self._calibration[0] - mean * mean
        bn = self.query_norm
        assert isinstance(bn, nn.BatchNorm1d)
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.clamp_min(bn.eps).float())

    def start_calibration(self) -> None:
        zeros = torch.zeros(self.heads * self.k_dim, dtype=torch.float64,
                            device=self.query_proj.weight.device)
        self._calibration = (0, zeros, zeros.clone())

    def _standardise(self, q: torch.Tensor) -> torch.Tensor:
        """BatchNorm over all tokens of ``q`` [..., heads * k_dim], in fp32.

        Batch statistics (and running-statistic updates) only while the query path trains,
        i.e. in the retrofit. SMF and evaluation use the frozen running statistics, so the
        slots a token reads never depend on the other tokens of its batch.
        """
        bn = self.query_norm
        assert isinstance(bn, nn.BatchNorm1d)
        use_batch = self.training and self.query_proj.weight.requires_grad
        if use_batch and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        out = F.batch_norm(q.reshape(-1, q.shape[-1]).float(), bn.running_mean, bn.running_var,
                           bn.weight, bn.bias, training=use_batch, momentum=bn.momentum,
                           eps=bn.eps)
        return out.to(q.dtype).view_as(q)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores, slot indices), each [..., heads, knn], of the top-knn slots per head."""
        heads, knn, half = self.heads, self.knn, self.k_dim // 2
        q = self.query_proj(x)
        if isinstance(self.query_norm, nn.BatchNorm1d):
            q = self._standardise(q)
        q = q.unflatten(-1, (heads, self.k_dim))  # [..., h, k_dim]
        if isinstance(self.query_norm, nn.LayerNorm):
            q = self.query_norm(q)
        q = q.unflatten(-1, (2, half))  # [..., h, 2, half]
        keys = self.keys.to(q.dtype)
        # [..., h, 2, n_keys]: both halves of every head in one batched matmul.
        sub_scores = torch.einsum("...hsd,hskd->...hsk", q, keys)
        s, i = sub_scores.topk(knn, dim=-1)  # sorted, [..., h, 2, knn]
        a, b = self._rank_a, self._rank_b
        cand = s[..., 0, :].index_select(-1, a) + s[..., 1, :].index_select(-1, b)  # [..., h, P]
        best, pick = cand.topk(knn, dim=-1)  # [..., h, knn]
        i1 = i[..., 0, :].gather(-1, a[pick])
        i2 = i[..., 1, :].gather(-1, b[pick])
        return best, i1 * self.n_keys + i2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Memory+ read of ``x`` [..., hidden] -> [..., hidden] (same dtype as ``x``)."""
        if not torch.is_autocast_enabled(x.device.type):
            x_in = x.to(self.query_proj.weight.dtype)
        else:
            x_in = x
        scores, idx = self.lookup(x_in)
        weights = scores.float().softmax(dim=-1)  # softmax in fp32 whatever the autocast
        lead = idx.shape[:-2]
        idx = idx.flatten(-2)  # [..., heads*knn]
        weights = weights.flatten(-2)
        self.last_indices = idx.detach()
        self.last_weights = weights.detach()
        # One bag per token over all heads' reads: summing over heads is free inside the bag.
        flat_idx = idx.reshape(-1, idx.shape[-1])
        flat_w = weights.reshape(-1, idx.shape[-1]).to(self.values.dtype)
        if self.value_grad_sink is not None and torch.is_grad_enabled():
            bag = deferred_embedding_bag(flat_idx, self.values, flat_w, self.value_grad_sink)
        else:
            bag = F.embedding_bag(flat_idx, self.values, per_sample_weights=flat_w, mode="sum",
                                  sparse=self.sparse_grad)
        bag = bag.view(*lead, self.v_dim)
        gate = F.silu(self.gate_proj(x_in))
        out = self.out_proj(bag.to(gate.dtype) * gate)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden_size}, n_keys={self.n_keys} ({self.n_slots} slots), "
            f"heads={self.heads}, knn={self.knn}, k_dim={self.k_dim}, v_dim={self.v_dim}, "
            f"sparse_grad={self.sparse_grad}, deferred_grad={self.value_grad_sink is not None}"
        )
