"""Deferred value gradients (memory/deferred.py) equal autograd's, row for row."""

from __future__ import annotations

import torch

from smfexp.memory import ProductKeyMemory
from smfexp.memory.deferred import ValueGradSink


def _memory() -> ProductKeyMemory:
    torch.manual_seed(0)
    return ProductKeyMemory(32, n_keys=8, heads=2, knn=4, k_dim=16).double()


def test_selected_rows_grad_matches_autograd_over_accumulated_backwards() -> None:
    """Two micro-batches accumulate; every read row's gradient and the input gradient match."""
    reference, deferred = _memory(), _memory()
    deferred.value_grad_sink = ValueGradSink()
    xs = [torch.randn(3, 5, 32, dtype=torch.float64) for _ in range(2)]
    x_grads = []
    for mem in (reference, deferred):
        grads = []
        for x in xs:
            x = x.clone().requires_grad_()
            (mem(x) ** 2).sum().backward()  # the query path needs d(loss)/d(weights) too
            grads.append(x.grad)
        x_grads.append(grads)
    for a, b in zip(*x_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert deferred.values.grad is None  # nothing materialised
    dense = reference.values.grad
    read = dense.ne(0).any(dim=1).nonzero().squeeze(1)
    rows = torch.cat([read[::2], torch.tensor([dense.shape[0] - 1])]).unique()
    kept, block = deferred.value_grad_sink.rows_grad(rows)
    assert set(kept.tolist()) == set(rows.tolist()) & set(read.tolist())  # unread rows dropped
    torch.testing.assert_close(block, dense[kept])
    assert block.grad_fn is None  # built outside autograd: no graph kept alive over the step


def test_no_grad_and_cleared_sink_collect_nothing() -> None:
    mem = _memory()
    mem.value_grad_sink = ValueGradSink()
    with torch.no_grad():
        mem(torch.randn(2, 3, 32, dtype=torch.float64))
    assert len(mem.value_grad_sink) == 0
    mem(torch.randn(2, 3, 32, dtype=torch.float64)).sum().backward()
    assert len(mem.value_grad_sink) == 1
    mem.value_grad_sink.clear()
    kept, block = mem.value_grad_sink.rows_grad(torch.arange(4))
    assert kept.numel() == 0 and block.shape[0] == 0
