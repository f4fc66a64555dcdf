"""A stream decays its lr over data.lr_horizon facts: a shorter stream is the first part of the
longer one, lr included, so nested streams (experiment=scale) stay prefixes under a decay."""

from __future__ import annotations

import lightning as L
import pytest

from smfexp.data.facts import FactsDataModule
from smfexp.methods.full import FullFinetune


class _LrLog(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _lrs(tiny_model, tokenizer, data_dir, **data) -> list[float]:
    facts = FactsDataModule(tokenizer, data_dir=str(data_dir), phrasings_per_step=2,
                            steps_per_fact=2, schedule="linear", **data)
    module = FullFinetune(tiny_model, tokenizer, lr=1e-3, warmup_steps=0, schedule="linear")
    log = _LrLog()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[log],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=facts)
    return log.lrs


def test_a_short_stream_with_a_horizon_takes_the_long_streams_first_steps(
        tiny_model, tokenizer, data_dir):
    short = _lrs(tiny_model, tokenizer, data_dir, n_facts=2, lr_horizon=6)
    # 2 facts x 2 steps of a stream whose lr decays to 0 over 6 facts x 2 steps
    assert short == pytest.approx([1e-3 * (1 - k / 12) for k in range(4)])
    # without a horizon the same stream decays over its own 4 steps
    own = _lrs(tiny_model, tokenizer, data_dir, n_facts=2)
    assert own == pytest.approx([1e-3 * (1 - k / 4) for k in range(4)])


def test_a_horizon_shorter_than_the_stream_says_what_to_change(tokenizer, data_dir):
    with pytest.raises(ValueError, match=r"data.lr_horizon=4.*data.n_facts=8"):
        FactsDataModule(tokenizer, data_dir=str(data_dir), n_facts=8, lr_horizon=4)
