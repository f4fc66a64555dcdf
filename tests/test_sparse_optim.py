"""Row-exact sparse optimizers: untouched rows bit-identical, lazy state, resume, convergence."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.dense_masked import DenseMaskedAdamW
from smfexp.smf.sparse_optim import (
    RowSparseAdam,
    RowSparseSGD,
    clip_grad_norm_,
    selected_grad_rows,
)

N_ROWS, DIM = 64, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny ops: OpenMP thread hand-offs dominate (and thrash on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


OPTIMIZERS = {
    "sgd_momentum": lambda ps: RowSparseSGD(ps, lr=0.1, momentum=0.9),
    "adam": lambda ps: RowSparseAdam(ps, lr=0.05, betas=(0.9, 0.99), eps=1e-8),
    "adamw": lambda ps: RowSparseAdam(ps, lr=0.05, weight_decay=0.1),
}


def _sparse_backward(table: nn.Parameter, idx: torch.Tensor, target: torch.Tensor) -> None:
    """embedding_bag(sparse=True) forward/backward: table.grad becomes uncoalesced COO."""
    table.grad = None
    out = F.embedding_bag(idx, table, mode="sum", sparse=True)
    F.mse_loss(out, target).backward()


def _reads(gen: torch.Generator, bags: int = 6, per_bag: int = 5, hi: int = N_ROWS):
    return torch.randint(0, hi, (bags, per_bag), generator=gen)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_rows_outside_selection_union_are_bit_identical(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    table = nn.Parameter(torch.randn(N_ROWS, DIM, generator=gen))
    start = table.detach().clone()
    opt = OPTIMIZERS[name]([table])
    union: set[int] = set()
    for _ in range(6):
        idx = _reads(gen)
        _sparse_backward(table, idx, torch.randn(idx.shape[0], DIM, generator=gen))
        assert table.grad.is_sparse
        read = torch.unique(idx)
        sel = read[torch.randperm(len(read), generator=gen)[:4]]
        union |= set(sel.tolist())
        opt.set_selected_rows(table, sel)
        opt.step()
    outside = torch.tensor(sorted(set(range(N_ROWS)) - union))
    inside = torch.tensor(sorted(union))
    assert torch.equal(table.detach()[outside], start[outside])  # bit-identical
    assert bool((table.detach()[inside] != start[inside]).any(dim=1).all())  # all moved


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_row_selected_earlier_does_not_move_later(name: str) -> None:
    """No momentum leak: row 3 selected at step 1 only; at step 2 it must not move."""
    table = nn.Parameter(torch.randn(N_ROWS, DIM, generator=torch.Generator().manual_seed(1)))
    opt = OPTIMIZERS[name]([table])
    idx = torch.tensor([[3, 5, 7]])
    target = torch.ones(1, DIM)
    _sparse_backward(table, idx, target)
    opt.set_selected_rows(table, torch.tensor([3, 5]))
    opt.step()
    after1 = table.detach().clone()
    _sparse_backward(table, idx, target)  # row 3 is read (has a grad) but not selected
    opt.set_selected_rows(table, torch.tensor([5]))
    opt.step()
    assert torch.equal(table.detach()[3], after1[3])
    assert torch.equal(table.detach()[7], after1[7])
    assert not torch.equal(table.detach()[5], after1[5])


def test_dense_masked_adamw_leaks_momentum() -> None:
    """Documents the flaw of the reference approach: the same schedule moves row 3 again."""
    table = nn.Parameter(torch.randn(N_ROWS, DIM, generator=torch.Generator().manual_seed(1)))
    opt = DenseMaskedAdamW([table], lr=0.05)
    idx, target = torch.tensor([[3, 5, 7]]), torch.ones(1, DIM)
    _sparse_backward(table, idx, target)
    opt.set_selected_rows(table, torch.tensor([3, 5]))
    opt.step()
    after1 = table.detach().clone()
    _sparse_backward(table, idx, target)
    opt.set_selected_rows(table, torch.tensor([5]))
    opt.step()
    assert not torch.equal(table.detach()[3], after1[3])  # moved although unselected
    assert torch.equal(table.detach()[7], after1[7])  # never selected: no moments yet
    assert opt.state[table]["exp_avg"].shape == (N_ROWS, DIM)  # dense state


def test_matches_torch_optimizers_when_every_row_is_selected() -> None:
    """With all rows selected each step the update is torch's SGD / AdamW update."""
    gen = torch.Generator().manual_seed(2)
    init = torch.randn(N_ROWS, DIM, generator=gen)
    grads = [torch.randn(N_ROWS, DIM, generator=gen) for _ in range(4)]
    pairs = [
        (
            lambda p: RowSparseSGD([p], lr=0.1, momentum=0.9, weight_decay=0.01),
            lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01),
        ),
        (
            lambda p: RowSparseAdam([p], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
            lambda p: torch.optim.AdamW([p], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
        ),
    ]
    for ours_fn, ref_fn in pairs:
        a, b = nn.Parameter(init.clone()), nn.Parameter(init.clone())
        ours, ref = ours_fn(a), ref_fn(b)
        for g in grads:
            a.grad, b.grad = g.clone(), g.clone()  # dense grads are supported too
            ours.set_selected_rows(a, torch.arange(N_ROWS))
            ours.step()
            ref.step()
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_per_row_bias_correction() -> None:
    """A row first selected at step 3 gets Adam's first-step update (~lr * sign(grad))."""
    table = nn.Parameter(torch.zeros(N_ROWS, DIM))
    opt = RowSparseAdam([table], lr=0.01)
    for rows in ([0], [0], [0, 9]):
        table.grad = torch.ones(N_ROWS, DIM)
        opt.set_selected_rows(table, torch.tensor(rows))
        opt.step()
    torch.testing.assert_close(table.detach()[9], torch.full((DIM,), -0.01))
    assert opt.state[table]["row_step"][: opt.state[table]["n_used"]].tolist() == [3, 1]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_roundtrip_gives_identical_steps(name: str) -> None:
    gen = torch.Generator().manual_seed(3)
    table = nn.Parameter(torch.randn(N_ROWS, DIM, generator=gen))
    opt = OPTIMIZERS[name]([table])
    steps = []
    for _ in range(5):
        idx = _reads(gen)
        steps.append((idx, torch.randn(idx.shape[0], DIM, generator=gen)))
    for idx, tgt in steps[:3]:
        _sparse_backward(table, idx, tgt)
        opt.set_selected_rows(table, torch.unique(idx)[:6])
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    table2 = nn.Parameter(table.detach().clone())
    opt2 = OPTIMIZERS[name]([table2])
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    st = opt2.state[table2]
    assert st["row_to_slot"].dtype == torch.int64 and st["slot_rows"].dtype == torch.int64
    for idx, tgt in steps[3:]:
        for t, o in ((table, opt), (table2, opt2)):
            _sparse_backward(t, idx, tgt)
            o.set_selected_rows(t, torch.unique(idx)[-7:])  # includes rows with no state yet
            o.step()
    assert torch.equal(table.detach(), table2.detach())


def test_state_is_lazy_and_proportional_to_touched_rows() -> None:
    n_rows = 100_000
    table = nn.Parameter(torch.zeros(n_rows, DIM))
    opt = RowSparseAdam([table], lr=0.01)
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        idx = _reads(gen, hi=n_rows)
        _sparse_backward(table, idx, torch.randn(idx.shape[0], DIM, generator=gen))
        opt.set_selected_rows(table, torch.unique(idx)[:10])
        opt.step()
    touched = opt.touched_rows(table).numel()
    assert 10 <= touched <= 50
    st = opt.state[table]
    for name in ("exp_avg", "exp_avg_sq"):
        assert touched * DIM <= st[name].numel() <= 2 * touched * DIM
    # Only the row->slot index map is per table row (int64, 1/DIM of a value tensor).
    assert st["row_to_slot"].numel() == n_rows
    assert opt.state_bytes() < 8 * n_rows + 64 * touched * DIM
    sd = opt.state_dict()["state"][0]
    assert "row_to_slot" not in sd and sd["exp_avg"].shape == (touched, DIM)


def test_sgd_without_momentum_keeps_no_state_and_follows_scheduler() -> None:
    table = nn.Parameter(torch.zeros(N_ROWS, DIM))
    opt = RowSparseSGD([table], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    for expected_lr in (1.0, 0.5, 0.25):
        assert opt.param_groups[0]["lr"] == expected_lr
        before = table.detach()[2].clone()
        table.grad = torch.ones(N_ROWS, DIM)
        opt.set_selected_rows(table, torch.tensor([2]))
        opt.step()
        sched.step()
        torch.testing.assert_close(table.detach()[2], before - expected_lr)
    assert len(opt.state) == 0


def test_a_gradient_without_a_selection_is_an_error_and_moves_nothing() -> None:
    table = nn.Parameter(torch.zeros(N_ROWS, DIM))
    idx = torch.tensor([[1, 2]])
    _sparse_backward(table, idx, torch.ones(1, DIM))
    with pytest.raises(RuntimeError, match="set_selected_rows"):
        RowSparseSGD([table], lr=0.1).step()
    assert int(table.detach().abs().sum()) == 0


def test_selected_rows_without_grad_are_skipped_and_duplicates_summed() -> None:
    values = torch.arange(12.0).reshape(4, 3)
    grad = torch.sparse_coo_tensor(
        torch.tensor([[2, 0, 2]]), values[:3], (10, 3), check_invariants=True
    )  # uncoalesced
    rows, g = selected_grad_rows(grad, torch.tensor([0, 2, 5]))
    assert rows.tolist() == [0, 2]  # 5 was selected but never read
    torch.testing.assert_close(g, torch.stack([values[1], values[0] + values[2]]))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_tiny_regression_loss_goes_down(name: str) -> None:
    gen = torch.Generator().manual_seed(5)
    table = nn.Parameter(0.1 * torch.randn(200, 16, generator=gen))
    idx = torch.randint(0, 200, (32, 4), generator=gen)
    target = torch.randn(32, 16, generator=gen)
    opt = (
        RowSparseSGD([table], lr=0.5, momentum=0.5)
        if name == "sgd"
        else (RowSparseAdam([table], lr=0.05))
    )
    losses = []
    for _ in range(60):
        table.grad = None
        loss = F.mse_loss(F.embedding_bag(idx, table, mode="sum", sparse=True), target)
        loss.backward()
        losses.append(loss.item())
        opt.set_selected_rows(table, torch.unique(idx))  # the "all" selector
        opt.step()
    assert losses[-1] < 0.2 * losses[0]


def test_optimizer_deepcopy_and_reject_non_2d() -> None:
    with pytest.raises(ValueError):
        RowSparseAdam([nn.Parameter(torch.zeros(3))], lr=0.1)
    table = nn.Parameter(torch.zeros(4, 2))
    opt = RowSparseSGD([table], lr=0.1)
    with pytest.raises(KeyError):
        opt.set_selected_rows(nn.Parameter(torch.zeros(4, 2)), torch.tensor([0]))
    copy.deepcopy(opt.state_dict())


def test_clip_grad_norm_handles_uncoalesced_sparse_grads() -> None:
    gen = torch.Generator().manual_seed(6)
    table = nn.Parameter(torch.randn(N_ROWS, DIM, generator=gen))
    scale = nn.Parameter(torch.tensor(2.0))  # a dense param clipped jointly (e.g. gate g)
    idx = torch.tensor([[1, 1, 2], [2, 3, 1]])  # duplicates: uncoalesced grad
    out = F.embedding_bag(idx, table, mode="sum", sparse=True) * scale
    F.mse_loss(out, torch.ones(2, DIM)).backward()
    dense = table.grad.to_dense()
    expected = torch.sqrt(dense.square().sum() + scale.grad.square())
    total = clip_grad_norm_([table, scale], max_norm=0.1)
    torch.testing.assert_close(total, expected)
    clipped = torch.sqrt(table.grad.to_dense().square().sum() + scale.grad.square())
    torch.testing.assert_close(clipped, torch.tensor(0.1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        table.grad.to_dense(), dense * (0.1 / expected), rtol=1e-4, atol=1e-7
    )
    opt = RowSparseSGD([table], lr=1.0)  # a coalesced grad works in the optimizer too
    opt.set_selected_rows(table, torch.tensor([2]))
    before = table.detach().clone()
    opt.step()
    torch.testing.assert_close(table.detach()[2], before[2] - table.grad.to_dense()[2])
