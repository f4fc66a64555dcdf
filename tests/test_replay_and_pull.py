"""Issue 32's baselines and SMF's background-preserving term: replay beside every batch (full
finetuning, LoRA, SMF through its sparse mask), the L2 / EWC pull toward the base weights,
their one-line errors and the run key of runs without them."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_smf_levers import _smf
from torch.utils.data import DataLoader

from smfexp.checkpointing import run_key
from smfexp.data.collate import PadCollator, TokenizedExample
from smfexp.data.facts import FactsDataModule
from smfexp.data.replay import REPLAY, TRAIN, ReplayStream, with_replay
from smfexp.methods.full import FullFinetune
from smfexp.methods.lora import LoRAFinetune
from smfexp.methods.smf import SparseMemoryFinetune
from smfexp.training.fisher import diagonal_fisher
from smfexp.training.loss import causal_lm_loss
from smfexp.training.penalty import BasePull

REPLAY_ON = {"replay_k": 2, "replay_length": 32, "replay_source": ["wiki"]}


def _facts(tokenizer, data_dir) -> FactsDataModule:
    data = FactsDataModule(tokenizer, data_dir=str(data_dir), n_facts=3, phrasings_per_step=4,
                           steps_per_fact=2)
    data.setup()
    return data


def _trainer(steps: int, callbacks=(), **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=list(callbacks), **kwargs)


def _full(tokenizer, **kwargs) -> FullFinetune:
    from smfexp.models.loading import ModelSpec, load_model

    torch.manual_seed(0)
    model, _ = load_model(ModelSpec(name="tiny", source="tiny"))
    settings = {"lr": 1e-3, "warmup_steps": 0, "schedule": "constant", "grad_clip": None,
                **kwargs}
    return FullFinetune(model, tokenizer, **settings)


class _Record(Callback):
    """Each step's batch, and the gradients the optimizer is about to step with."""

    def __init__(self) -> None:
        self.batches: list = []
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(copy.deepcopy(batch))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().clone()
                           for n, p in pl_module.model.named_parameters() if p.grad is not None})


# --------------------------------------------------------------------------- the replay order
def _blocks(n: int) -> list[TokenizedExample]:
    return [TokenizedExample([i, i + 1], [i, i + 1]) for i in range(n)]


def test_replay_stream_depends_on_the_batch_number_alone() -> None:
    """Batch b replays positions b*k .. b*k+k-1 of per-pass permutations: every block once
    per pass, and any batch's blocks computable without the batches before it."""
    stream = ReplayStream(_blocks(5), k=2, seed=3, collator=PadCollator(0))
    first_pass = stream.positions(0) + stream.positions(1) + stream.positions(2)[:1]
    assert sorted(first_pass) == list(range(5))
    fresh = ReplayStream(_blocks(5), k=2, seed=3, collator=PadCollator(0))
    assert fresh.positions(7) == stream.positions(7)
    assert ReplayStream(_blocks(5), 2, 4, PadCollator(0)).positions(0) != stream.positions(0) \
        or ReplayStream(_blocks(5), 2, 4, PadCollator(0)).positions(1) != stream.positions(1)


def test_a_resumed_loader_replays_what_the_whole_run_replayed() -> None:
    """Epoch 1 continues the replay order after epoch 0's batches, and re-entering epoch 1
    after 2 batches pairs each remaining batch with the very blocks the whole run gave it."""
    stream = ReplayStream(_blocks(50), k=3, seed=0, collator=PadCollator(0))
    train = DataLoader(list(range(8)), batch_size=2)  # 4 batches an epoch

    def run(epoch: int, position=None) -> list[tuple[list[int], list[int]]]:
        combined = with_replay(train, stream, position)
        for loader in combined.flattened:
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
        return [(b[TRAIN].tolist(), b[REPLAY]["input_ids"][:, 0].tolist())
                for b, _, _ in combined]

    epoch0, epoch1 = run(0), run(1)
    assert epoch1[0][1] == [stream.blocks[i].input_ids[0] for i in stream.positions(4)]
    resumed = run(1, (1, 2))  # (the training loader here is a plain one: it restarts)
    assert [r for _, r in resumed] == [r for _, r in epoch1[2:]]
    assert epoch0[0][1] != epoch1[0][1]


# --------------------------------------------------------------------------- dense replay
@pytest.mark.parametrize("fact_weight", [1.0, 0.0])
def test_replay_loss_is_part_of_the_stepped_gradient(tokenizer, data_dir, fact_weight):
    """Full finetuning's first step: the gradient stepped is that of fact_weight x fact loss
    + 0.5 x the replay loss on the batches the step got, computed here by hand on the same
    model; fact_weight 0 (the replay-only control) steps with the replay's alone."""
    module = _full(tokenizer, replay_weight=0.5, fact_weight=fact_weight, **REPLAY_ON)
    start = copy.deepcopy(module.model)
    record = _Record()
    data = _facts(tokenizer, data_dir)
    _trainer(1, [record]).fit(module, datamodule=data)
    batch = record.batches[0]
    assert batch[REPLAY]["input_ids"].shape == (2, 32)
    assert batch[TRAIN]["input_ids"].shape[0] == 4  # one fact's phrasings
    start.train()
    loss = 0.5 * causal_lm_loss(start, batch[REPLAY])
    if fact_weight:
        loss = loss + fact_weight * causal_lm_loss(start, batch[TRAIN])
    loss.backward()
    for name, param in start.named_parameters():
        assert torch.allclose(record.grads[0][name], param.grad, atol=1e-6, rtol=1e-4), name
    recorded = {"k": 2, "weight": 0.5, "length": 32, "parts": ["wiki"], "seed": 0}
    if fact_weight != 1.0:
        recorded["fact_weight"] = fact_weight
    assert module.extra_results()["replay"] == recorded
    assert data.info["replay"]["blocks"] > 0
    assert _full(tokenizer).extra_results() == {}  # off: results as before


def test_a_resumed_replay_run_replays_the_same_blocks(tokenizer, data_dir, tmp_path):
    """4 steps straight vs a run checkpointed during step 2 (as runs are: mid-epoch) and
    resumed to 4: the resumed steps get the same fact batches with the same replayed blocks,
    and end on the same weights."""
    whole_record = _Record()
    whole = _full(tokenizer, **REPLAY_ON)
    _trainer(4, [whole_record]).fit(whole, datamodule=_facts(tokenizer, data_dir))
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1,
                            filename="step{step}", auto_insert_metric_name=False)
    _trainer(3, [saver], default_root_dir=tmp_path, enable_checkpointing=True).fit(
        _full(tokenizer, **REPLAY_ON), datamodule=_facts(tokenizer, data_dir))
    checkpoint = tmp_path / "step2.ckpt"
    resumed_record = _Record()
    second = _full(tokenizer, **REPLAY_ON)
    _trainer(4, [resumed_record], default_root_dir=tmp_path).fit(
        second, datamodule=_facts(tokenizer, data_dir), ckpt_path=str(checkpoint),
        weights_only=False)
    assert len(resumed_record.batches) == 2
    for mine, theirs in zip(whole_record.batches[2:], resumed_record.batches, strict=True):
        for part in (TRAIN, REPLAY):
            assert torch.equal(mine[part]["input_ids"], theirs[part]["input_ids"])
    replays = [b[REPLAY]["input_ids"] for b in whole_record.batches]
    assert not torch.equal(replays[0], replays[1])  # each step replays new blocks
    for (name, p), q in zip(whole.model.named_parameters(), second.model.parameters(),
                            strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_lora_replays_too(tokenizer, data_dir, tiny_model):
    module = LoRAFinetune(tiny_model, tokenizer, lr=1e-3, warmup_steps=0, rank=4, alpha=8,
                          **REPLAY_ON)
    record = _Record()
    _trainer(1, [record]).fit(module, datamodule=_facts(tokenizer, data_dir))
    assert REPLAY in record.batches[0] and module.extra_results()["replay"]["k"] == 2


# --------------------------------------------------------------------------- SMF: sparse mask
def _changed_rows(module, before) -> list[torch.Tensor]:
    return [(m.values.detach() != b).any(dim=1).nonzero().squeeze(1)
            for m, b in zip(module.memories, before, strict=True)]


def test_smf_background_term_moves_only_the_rows_selected_for_the_fact(tokenizer, data_dir):
    """One step with and without the background batch: the same rows change (its reads
    select none, and rows it alone reads stay put); of them, exactly those the background
    batch also read move differently (its gradient reaches them through the sparse mask);
    weight 0 is the run without it, bit for bit. No clipping, so the steps compare row by row.
    (tfidf picks rows general text seldom reads, so the term has few rows to act on.)"""
    runs = {}
    for name, extra in (("off", {}), ("on", {**REPLAY_ON, "replay_k": 4, "replay_weight": 5.0}),
                        ("zero", {**REPLAY_ON, "replay_weight": 0.0})):
        module, data, _ = _smf(tokenizer, data_dir, grad_clip=None, **extra)
        before = [m.values.detach().clone() for m in module.memories]
        reads: list[torch.Tensor] = []
        backward = module._background_backward

        def record_reads(background, batch_idx, module=module, backward=backward, reads=reads):
            backward(background, batch_idx)
            reads.extend(torch.bincount(m.last_indices.reshape(-1), minlength=m.n_slots)
                         for m in module.memories)

        module._background_backward = record_reads
        record = _Record()
        _trainer(1, [record]).fit(module, datamodule=data)
        runs[name] = (module, _changed_rows(module, before), record, reads)
    off, on, zero = runs["off"], runs["on"], runs["zero"]
    assert REPLAY in on[2].batches[0] and not off[3]
    moved_by_background = 0
    for layer, rows in enumerate(off[1]):
        assert rows.numel() == 6  # top_t
        assert torch.equal(on[1][layer], rows) and torch.equal(zero[1][layer], rows)
        assert on[3][layer].sum() > 0  # the background batch read this layer's memory
        differ = (on[0].memories[layer].values != off[0].memories[layer].values).any(dim=1)
        assert torch.equal(differ.nonzero().squeeze(1), rows[on[3][layer][rows] > 0])
        moved_by_background += int(differ.sum())
        assert torch.equal(zero[0].memories[layer].values, off[0].memories[layer].values)
    assert moved_by_background > 0
    assert on[0].extra_results()["replay"]["weight"] == 5.0
    assert "replay" not in off[0].extra_results()


# --------------------------------------------------------------------------- the pull
def test_pull_value_and_gradient_match_a_hand_computation() -> None:
    """1/2 sum (l2 + ewc F)(w - w0)^2 and its gradient (l2 + ewc F)(w - w0), on two tensors;
    L2 alone is the same with F = 1."""
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([[0.0], [-1.0]]))
    params = {"a": a, "b": b}
    fisher = {"a": torch.tensor([2.0, 0.0]), "b": torch.tensor([[1.0], [1.0]])}
    pull = BasePull(params, l2=0.5, ewc=3.0, fisher=fisher)
    l2 = BasePull(params, l2=0.5)
    with torch.no_grad():
        a += torch.tensor([1.0, -2.0])
        b += torch.tensor([[3.0], [0.5]])
    # factors: a (6.5, 0.5), b (3.5, 3.5); diffs: a (1, -2), b (3, 0.5)
    value = pull(params)
    assert value.item() == pytest.approx(0.5 * (6.5 * 1 + 0.5 * 4 + 3.5 * 9 + 3.5 * 0.25))
    value.backward()
    assert torch.allclose(a.grad, torch.tensor([6.5, -1.0]))
    assert torch.allclose(b.grad, torch.tensor([[10.5], [1.75]]))
    a.grad = b.grad = None
    l2(params).backward()
    assert torch.allclose(a.grad, torch.tensor([0.5, -1.0]))
    assert torch.allclose(b.grad, torch.tensor([[1.5], [0.25]]))
    assert pull.distance(params) == pytest.approx((1 + 4 + 9 + 0.25) ** 0.5)


def test_fisher_is_the_mean_squared_per_sequence_gradient_normalised(tiny_model, tokenizer):
    collate = PadCollator(tokenizer.pad_token_id)
    sequences = [collate([TokenizedExample(ids, ids)]) for ids in ([5, 9, 13, 2], [7, 7, 1])]
    params = dict(tiny_model.named_parameters())
    fisher = diagonal_fisher(tiny_model, params, sequences, "cpu")
    assert all(p.grad is None for p in params.values())
    squares = {n: torch.zeros_like(p) for n, p in params.items()}
    tiny_model.eval()
    for batch in sequences:
        grads = torch.autograd.grad(causal_lm_loss(tiny_model, batch), list(params.values()),
                                    allow_unused=True)
        for (n, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                squares[n] += g.pow(2) / 2
    mean = sum(float(s.sum()) for s in squares.values()) / sum(s.numel() for s in squares.values())
    for n in params:
        assert torch.allclose(fisher[n], squares[n] / mean, rtol=1e-4, atol=1e-6), n
    total = sum(float(f.sum()) for f in fisher.values())
    assert total / sum(f.numel() for f in fisher.values()) == pytest.approx(1.0, rel=1e-5)


def test_full_finetuning_steps_with_the_pull(tokenizer, data_dir):
    """The pull anchors at the base weights, its gradient is (l2 + ewc F)(w - w0) with F the
    Fisher taken before training (mean 1), and results.json records it."""
    module = _full(tokenizer, l2_to_base=0.7, ewc=0.3, ewc_batches=2, replay_source=["wiki"],
                   replay_length=16)
    base = copy.deepcopy(module.model)
    record = _Record()
    _trainer(2, [record]).fit(module, datamodule=_facts(tokenizer, data_dir))
    pull = module.pull
    assert pull is not None and len(pull.anchors) == len(list(base.parameters()))
    for anchor, p in zip(pull.anchors, base.parameters(), strict=True):
        assert torch.equal(anchor, p)
    model = module.model  # the pull's gradient at the trained weights
    model.zero_grad(set_to_none=True)
    named = dict(model.named_parameters())
    penalty = pull(named)
    penalty.backward()
    factors = pull.factors()
    for (name, p), anchor, factor in zip(named.items(), pull.anchors, factors, strict=True):
        assert torch.allclose(p.grad, factor * (p.detach() - anchor), atol=1e-7), name
    fisher_mean = (sum(float((f - 0.7).sum()) / 0.3 for f in factors)
                   / sum(f.numel() for f in factors))
    assert fisher_mean == pytest.approx(1.0, rel=1e-4)
    assert set(record.grads[1]) == set(named)
    results = module.extra_results()["base_pull"]
    assert results["l2_to_base"] == 0.7 and results["ewc"] == 0.3 and results["ewc_batches"] == 2
    assert results["distance_to_base"] > 0
    assert "replay" not in module.extra_results()


def test_the_pull_enters_the_stepped_gradient(tokenizer, data_dir):
    """Step 1 starts at the base weights, where the pull is 0; step 2's stepped gradient is
    the fact loss's plus l2 (w - w0), recomputed here at the weights step 1 left."""
    module = _full(tokenizer, l2_to_base=50.0)
    base = copy.deepcopy(module.model)

    class AtStep2(_Record):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
            if batch_idx == 1:
                self.weights = copy.deepcopy(pl_module.model)

    record = AtStep2()
    _trainer(2, [record]).fit(module, datamodule=_facts(tokenizer, data_dir))
    at = record.weights
    at.train()
    causal_lm_loss(at, record.batches[1]).backward()
    for (name, p), b in zip(at.named_parameters(), base.parameters(), strict=True):
        expected = p.grad + 50.0 * (p.detach() - b)
        assert torch.allclose(record.grads[1][name], expected, atol=1e-6, rtol=1e-4), name


# --------------------------------------------------------------------------- errors and keys
@pytest.mark.parametrize(("cls", "args", "message"), [
    (FullFinetune, {"replay_k": -1}, "method.replay_k"),
    (FullFinetune, {"replay_k": 1.5}, "method.replay_k"),
    (LoRAFinetune, {"replay_weight": -0.1}, "method.replay_weight"),
    (LoRAFinetune, {"replay_length": 1}, "method.replay_length"),
    (SparseMemoryFinetune, {"replay_source": ["wiki", "nope"]}, "method.replay_source"),
    (SparseMemoryFinetune, {"replay_source": []}, "method.replay_source"),
    (FullFinetune, {"l2_to_base": -1}, "method.l2_to_base"),
    (FullFinetune, {"ewc": "lots"}, "method.ewc"),
    (FullFinetune, {"ewc_batches": 0}, "method.ewc_batches"),
    (FullFinetune, {"fact_weight": -1}, "method.fact_weight"),
    (LoRAFinetune, {"fact_weight": 0, "replay_k": 0}, "method.fact_weight"),
    (FullFinetune, {"learned_loss": 0}, "method.learned_loss"),
    (LoRAFinetune, {"learned_loss": "low"}, "method.learned_loss"),
])
def test_invalid_values_are_one_line_errors(cls, args, message) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")) as err:
        cls.check_arguments(args)
    assert "\n" not in str(err.value)


def test_the_corpus_is_checked_only_where_it_is_read() -> None:
    """Off, replay_source is not read (a bad corpus setting it echoes is named where it is
    set); replay or EWC on, it is checked."""
    bad = {"replay_source": ["nope"]}
    LoRAFinetune.check_arguments({**bad, "replay_k": 0})
    FullFinetune.check_arguments({**bad, "replay_k": 0, "ewc": 0.0})
    for cls, on in ((LoRAFinetune, {"replay_k": 1}), (FullFinetune, {"replay_k": 0, "ewc": 1})):
        with pytest.raises(ValueError, match=r"method\.replay_source"):
            cls.check_arguments({**bad, **on})


def test_the_levers_are_arguments_of_their_methods_only() -> None:
    from smfexp.run_config import Target

    replay = {"replay_k", "replay_weight", "replay_length", "replay_source", "replay_seed"}
    for target in ("full", "lora", "smf"):
        Target.from_node({"_target_": f"smfexp.methods.{target}."
                          + {"full": "FullFinetune", "lora": "LoRAFinetune",
                             "smf": "SparseMemoryFinetune"}[target],
                          **{k: v for k, v in REPLAY_ON.items() if k in replay}}, "method")
    Target.from_node({"_target_": "smfexp.methods.full.FullFinetune", "ewc": 1.0}, "method")
    with pytest.raises(ValueError, match=r"^method\.ewc is not an argument of LoRAFinetune"):
        Target.from_node({"_target_": "smfexp.methods.lora.LoRAFinetune", "ewc": 1.0},
                         "method")
    for key in ("l2_to_base", "fact_weight"):  # SMF's rows come from the fact: no control
        with pytest.raises(ValueError, match=rf"^method\.{key} is not an argument of Sparse"):
            Target.from_node({"_target_": "smfexp.methods.smf.SparseMemoryFinetune",
                              key: 1.0}, "method")


def test_runs_without_the_levers_keep_their_run_keys() -> None:
    """The new keys at their off values (and the settings only they read) leave the run key
    as it was before they existed; turned on, they change it."""
    old = {"method": {"lr": 1e-4}, "seed": 0}
    off = {"lr": 1e-4, "replay_k": 0, "replay_weight": 1.0, "replay_length": 128,
           "replay_source": ["wiki"], "replay_seed": 0, "l2_to_base": 0.0, "ewc": 0.0,
           "ewc_batches": 64, "row_max_change": None, "fact_weight": 1.0,
           "learned_loss": None}
    assert run_key({"method": off, "seed": 0}) == run_key(old)
    for change in ({"replay_k": 2}, {"ewc": 1.0}, {"l2_to_base": 0.1}, {"row_max_change": 2.0},
                   {"replay_k": 2, "fact_weight": 0.0}, {"learned_loss": 0.5}):
        assert run_key({"method": {**off, **change}, "seed": 0}) != run_key(old), change
    ewc = {**off, "ewc": 1.0}
    assert run_key({"method": {**ewc, "replay_length": 64}, "seed": 0}) != run_key(
        {"method": ewc, "seed": 0})  # the Fisher reads the corpus settings


# --------------------------------------------------------------------------- learned_loss
@pytest.mark.parametrize("method", ["full", "lora"])
def test_dense_steps_below_learned_loss_change_nothing_and_the_stream_runs_on(
        tokenizer, data_dir, tiny_model, method):
    """SMF's skip under the same protocol for the baselines: a loss no step reaches changes
    nothing, bit for bit; one every step is under leaves every weight where it started (Adam's
    moments and weight decay included) while the step count and the lr schedule run on."""
    def build(**kwargs):
        settings = {"schedule": "linear", "weight_decay": 0.1, **kwargs}
        if method == "full":
            return _full(tokenizer, **settings)
        torch.manual_seed(0)
        return LoRAFinetune(copy.deepcopy(tiny_model), tokenizer, lr=1e-3, warmup_steps=0,
                            grad_clip=None, **settings)

    def trained(module):
        return {n: p.detach().clone() for n, p in module.model.named_parameters()
                if p.requires_grad}

    free = build()
    start = trained(free)
    free_trainer = _trainer(4)
    free_trainer.fit(free, datamodule=_facts(tokenizer, data_dir))
    never = build(learned_loss=1e-9)
    _trainer(4).fit(never, datamodule=_facts(tokenizer, data_dir))
    assert all(torch.equal(p, trained(free)[n]) for n, p in trained(never).items())
    assert never.extra_results()["learned"] == {"learned_loss": 1e-9, "steps_skipped": 0}
    assert any(not torch.equal(p, start[n]) for n, p in trained(free).items())
    always = build(learned_loss=1e9)
    trainer = _trainer(4)
    trainer.fit(always, datamodule=_facts(tokenizer, data_dir))
    assert all(torch.equal(p, start[n]) for n, p in trained(always).items())
    assert always.extra_results()["learned"]["steps_skipped"] == 4
    assert trainer.global_step == free_trainer.global_step == 4
    assert (always.optimizers().param_groups[0]["lr"]
            == free.optimizers().param_groups[0]["lr"] < 1e-3)


def test_a_resumed_dense_run_keeps_its_skipped_steps(tokenizer, data_dir, tmp_path):
    module = _full(tokenizer, learned_loss=1e9)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    _trainer(2, [checkpoint], enable_checkpointing=True).fit(
        module, datamodule=_facts(tokenizer, data_dir))
    resumed = _full(tokenizer, learned_loss=1e9)
    trainer = _trainer(4)
    trainer.fit(resumed, datamodule=_facts(tokenizer, data_dir),
                ckpt_path=str(next(tmp_path.glob("*.ckpt"))))
    assert trainer.global_step == 4 and resumed.steps_skipped == 4
