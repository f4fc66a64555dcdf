"""SMF's levers of issue 32: the write load, the bound on a row's change, count_tokens=fact."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tiny_smf import tiny_smf

from smfexp.data.facts import FactsDataModule
from smfexp.methods.smf import SparseMemoryFinetune, count_mask, fact_token_mask
from smfexp.smf.row_bound import RowStarts, bound_rows
from smfexp.smf.selectors import tfidf_scores, top_t
from smfexp.smf.write_load import WriteLoad


# --------------------------------------------------------------------------- write load
def test_write_load_counts_distinct_fact_row_pairs() -> None:
    """Fact 0 writes {1,2,3} then {2,3,4} (4 distinct rows), fact 1 writes {3,4,5}: 7 (fact,
    row) writes over 10 slots, nominal 3 rows x 2 facts / 10, rows touched {1..5}."""
    load = WriteLoad([10])
    for unit, rows in ((0, [1, 2, 3]), (0, [2, 3, 4]), (1, [3, 4, 5])):
        load.step(unit)
        load.add(0, torch.tensor(rows))
    touched = torch.zeros(10, dtype=torch.bool)
    touched[[1, 2, 3, 4, 5]] = True
    [layer] = load.summary(3, [touched])
    assert layer == {"write_load": pytest.approx(0.7), "write_load_nominal": pytest.approx(0.6),
                     "distinct_writes": 7, "rows_touched": 5, "slots": 10}
    assert load.units == 2
    assert load.summary(None, [touched])[0]["write_load_nominal"] is None  # selector=all


def test_write_load_state_round_trips_mid_fact() -> None:
    """Restored between two steps of one fact, the second step's repeats are not recounted;
    a checkpoint that never recorded it gives an unknown load, not 0."""
    load = WriteLoad([10])
    load.step(0)
    load.add(0, torch.tensor([1, 2]))
    resumed = WriteLoad([10])
    resumed.load_state_dict(load.state_dict())
    for target in (load, resumed):
        target.step(0)
        target.add(0, torch.tensor([2, 3]))
    assert resumed.writes == load.writes == [3]
    old = WriteLoad([10])
    old.load_state_dict(None)
    assert old.summary(3, [torch.zeros(10, dtype=torch.bool)])[0]["write_load"] is None


# --------------------------------------------------------------------------- row bound
def test_a_row_past_the_bound_ends_exactly_on_it_and_rows_within_stay() -> None:
    dim = 4
    start = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    table = start.clone()
    table[0] += torch.tensor([3.0, 4.0, 0.0, 0.0])  # moved by norm 5: RMS 2.5 per element
    table[1] += torch.tensor([0.1, 0.0, 0.0, 0.0])  # within the bound
    table[2] += torch.tensor([9.0, 0.0, 0.0, 0.0])  # beyond it, but not written this step
    before = table.clone()
    max_rms = 1.0 * dim ** -0.5  # row_max_change 1: an L2 norm of 1 per row
    rows = torch.tensor([0, 1])
    assert bound_rows(table, rows, start[rows], max_rms) == 1
    change = table[0] - start[0]
    assert change.norm().item() == pytest.approx(1.0, rel=1e-6)  # exactly at the bound
    assert torch.allclose(change, torch.tensor([0.6, 0.8, 0.0, 0.0]))  # same direction
    assert torch.equal(table[1], before[1]) and torch.equal(table[2], before[2])


def test_row_starts_keep_the_first_value_of_written_rows_only() -> None:
    table = torch.arange(12.0).reshape(6, 2)
    starts = RowStarts(6, 2, zero=False)
    starts.remember(table, torch.tensor([4, 1]))
    table[4] += 100.0
    starts.remember(table, torch.tensor([4, 5]))  # row 4 keeps its first value
    assert torch.equal(starts.of(torch.tensor([1, 4, 5]), table),
                       torch.tensor([[2.0, 3.0], [8.0, 9.0], [10.0, 11.0]]))
    assert starts.n == 3  # not a copy of the table
    restored = RowStarts(6, 2, zero=False)
    restored.load_state_dict(starts.state_dict())
    assert torch.equal(restored.of(torch.tensor([5, 1]), table), starts.of(torch.tensor([5, 1]),
                                                                           table))
    empty = RowStarts(6, 2, zero=True)  # an empty memory: the start is 0, nothing is kept
    empty.remember(table, torch.tensor([0]))
    assert empty.n == 0 and torch.equal(empty.of(torch.tensor([0]), table), torch.zeros(1, 2))


def test_row_max_change_is_checked_before_any_model_loads() -> None:
    SparseMemoryFinetune.check_arguments({"row_max_change": None})
    SparseMemoryFinetune.check_arguments({"row_max_change": 2})
    for bad in (0, -1.0, "far", float("inf")):
        with pytest.raises(ValueError, match=r"method\.row_max_change"):
            SparseMemoryFinetune.check_arguments({"row_max_change": bad})
    with pytest.raises(ValueError, match=r"method\.count_tokens=.*fact"):
        SparseMemoryFinetune.check_arguments({"count_tokens": "subject"})


# --------------------------------------------------------------------------- count_tokens=fact
def test_fact_tokens_are_the_last_prompt_token_and_the_answer() -> None:
    """Row 0: prompt of 3, answer of 2, then padding; row 1: prompt of 1, answer of 3."""
    ignore = -100
    labels = torch.tensor([[ignore, ignore, ignore, 7, 8, ignore],
                           [ignore, 5, 6, 9, ignore, ignore]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    batch = {"labels": labels, "attention_mask": attention}
    expected = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(fact_token_mask(labels), expected)
    assert torch.equal(count_mask(batch, "fact"), expected)
    # loss: the positions predicting an answer token - the answer's last token is not one
    assert torch.equal(count_mask(batch, "loss"),
                       torch.tensor([[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool))
    assert count_mask(batch, "attention") is attention


# --------------------------------------------------------------------------- on a tiny model
def _smf(tokenizer, data_dir, **smf) -> tuple[SparseMemoryFinetune, FactsDataModule, object]:
    return tiny_smf(tokenizer, data_dir, {"steps_per_fact": 2}, **smf)


def _trainer(steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


def _fit(module, data, steps: int) -> None:
    _trainer(steps, enable_checkpointing=False).fit(module, datamodule=data)


def test_count_tokens_fact_selects_from_the_fact_positions_reads(tokenizer, data_dir):
    module, data, stats = _smf(tokenizer, data_dir, count_tokens="fact")
    batch = next(iter(data.train_dataloader()))
    counts = [torch.zeros(m.n_slots, dtype=torch.int64) for m in module.memories]
    hooks = []
    for layer, memory in enumerate(module.memories):
        def record(mod, args, out, layer=layer):
            mask = fact_token_mask(batch["labels"])
            counts[layer] += torch.bincount(mod.last_indices[mask].reshape(-1),
                                            minlength=mod.n_slots)
        hooks.append(memory.register_forward_hook(record))
    before = [m.values.detach().clone() for m in module.memories]
    _fit(module, data, 1)
    for h in hooks:
        h.remove()
    for layer, memory in enumerate(module.memories):
        changed = (memory.values.detach() != before[layer]).any(dim=1).nonzero().squeeze(1)
        expected = top_t(*tfidf_scores(counts[layer], stats.layer(layer)), 6).indices
        assert torch.equal(changed, expected), layer


def test_row_bound_holds_after_every_step_and_off_changes_nothing(tokenizer, data_dir):
    """row_rms steps of lr 1 move a layer's rows by an L2 norm of 1 on average; with
    row_max_change 0.5 every row ends within 0.5 (L2) of its start, the rows that hit it
    exactly on it. A bound never reached, and the default (off, which keeps no starting
    values), give the same tables bit for bit."""
    step = {"lr_unit": "row_rms", "lr": 1.0}
    free, data, _ = _smf(tokenizer, data_dir, **step)
    start = [m.values.detach().clone() for m in free.memories]
    _fit(free, data, 3)
    assert free.row_bound is None
    bounded, data, _ = _smf(tokenizer, data_dir, row_max_change=0.5, **step)
    _fit(bounded, data, 3)
    for layer, memory in enumerate(bounded.memories):
        norms = (memory.values.detach() - start[layer]).norm(dim=1)
        assert norms.max().item() <= 0.5 * (1 + 1e-5)
        assert (norms > 0.5 * (1 - 1e-5)).sum() > 0  # the bound bit
        assert (norms[norms > 0] < 0.5 * (1 - 1e-5)).sum() > 0  # and not on every row
    assert all(n > 0 for n in bounded.extra_results()["smf"]["rows_bounded_per_layer"])
    loose, data, _ = _smf(tokenizer, data_dir, row_max_change=1e9, **step)
    _fit(loose, data, 3)
    for mine, theirs in zip(free.memories, loose.memories, strict=True):
        assert torch.equal(mine.values, theirs.values)


def test_write_load_of_a_run_and_of_its_resume_agree(tokenizer, data_dir, tmp_path):
    """3 facts x 2 steps: the checkpoint after step 3 splits fact 1's steps; the resumed run
    reports the write load (and memory fill) of the uninterrupted one."""
    levers = {"lr_unit": "row_rms", "lr": 1.0, "row_max_change": 0.5}
    whole, data, _ = _smf(tokenizer, data_dir, **levers)
    _fit(whole, data, 5)
    first, data, _ = _smf(tokenizer, data_dir, **levers)
    trainer = _trainer(3, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(first, datamodule=data)
    trainer.save_checkpoint(tmp_path / "step3.ckpt", weights_only=False)
    second, data, _ = _smf(tokenizer, data_dir, **levers)
    _trainer(5, default_root_dir=tmp_path, enable_checkpointing=False).fit(
        second, datamodule=data, ckpt_path=str(tmp_path / "step3.ckpt"), weights_only=False)
    a, b = whole.extra_results()["smf"], second.extra_results()["smf"]
    assert a["write_load"] == b["write_load"] and a["write_units"] == b["write_units"] == 3
    assert a["rows_bounded_per_layer"] == b["rows_bounded_per_layer"]
    for layer in a["write_load"]:
        assert layer["distinct_writes"] >= layer["rows_touched"] > 0
        assert layer["write_load_nominal"] == pytest.approx(6 * 3 / layer["slots"])
    assert whole.memory_fill() == second.memory_fill()
    for mine, theirs in zip(whole.memories, second.memories, strict=True):
        assert torch.equal(mine.values, theirs.values)


def test_steps_below_learned_loss_write_nothing_and_the_stream_runs_on(tokenizer, data_dir):
    """A loss no step reaches (learned_loss 1e-9) changes nothing, bit for bit; one every step
    is under (1e9) skips all 4 steps: the tables stay where they started, no row counts as
    written, and the step count and the lr schedule run on as in the run that trained."""
    step = {"lr_unit": "row_rms", "lr": 1.0, "schedule": "linear"}
    free, data, _ = _smf(tokenizer, data_dir, **step)
    start = [m.values.detach().clone() for m in free.memories]
    free_trainer = _trainer(4, enable_checkpointing=False)
    free_trainer.fit(free, datamodule=data)
    never, data, _ = _smf(tokenizer, data_dir, learned_loss=1e-9, **step)
    _fit(never, data, 4)
    for mine, theirs in zip(free.memories, never.memories, strict=True):
        assert torch.equal(mine.values, theirs.values)
    assert never.steps_skipped == 0
    always, data, _ = _smf(tokenizer, data_dir, learned_loss=1e9, **step)
    trainer = _trainer(4, enable_checkpointing=False)
    trainer.fit(always, datamodule=data)
    for memory, before in zip(always.memories, start, strict=True):
        assert torch.equal(memory.values.detach(), before)
    smf = always.extra_results()["smf"]
    assert smf["steps_skipped"] == 4 and smf["updated_rows_per_layer"] == [0, 0]
    assert trainer.global_step == free_trainer.global_step == 4
    assert (always.optimizers().param_groups[0]["lr"]
            == free.optimizers().param_groups[0]["lr"] < 1.0)


def test_learned_loss_must_be_a_positive_loss() -> None:
    with pytest.raises(ValueError, match="learned_loss"):
        SparseMemoryFinetune.check_arguments({"learned_loss": 0})
