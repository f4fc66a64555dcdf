"""The finetuning methods' base: a causal-LM module plus what a method decides.

A method subclasses :class:`FinetuneModule` and says only what trains (``prepare_model``),
which stages it needs first (``prepare``), and, if needed, how its parameters are optimised
(``build_optimizer``) and saved (``save_trained``). Its constructor arguments are exactly its
config (``conf/method/<name>.yaml``). Gradient accumulation and clipping are method arguments
that the runner hands to the Trainer (``trainer_settings``) unless the method does them
itself. Loss, schedule, optimizer and finite checks are :class:`CausalLMModule`'s, shared with
the retrofit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smfexp.memory import MemoryConfig
from smfexp.models.loading import ModelSpec
from smfexp.stages.background import BackgroundConfig
from smfexp.stages.retrofit import RetrofitConfig
from smfexp.training.module import CausalLMModule


@dataclass(frozen=True)
class StageInputs:
    """What a method's stages are built from: the model, its memory, stage 1's budget, the
    background statistics' settings and where the data is."""

    model: ModelSpec
    memory: MemoryConfig
    retrofit: RetrofitConfig
    background: BackgroundConfig
    data_dir: str | None


@dataclass
class Prepared:
    """What a method's stages built before training (see :meth:`FinetuneModule.prepare`)."""

    kwargs: dict[str, Any] = field(default_factory=dict)  # more constructor arguments
    results: dict[str, Any] = field(default_factory=dict)  # what results.json should say
    # names what the stages added to the base model (None: the model trained is the base
    # model); the cached starting scores are keyed by it
    stage: str | None = None


class FinetuneModule(CausalLMModule):
    """Causal-LM finetuning with the method deciding which parameters train."""

    uses_memory = False  # True: needs memory layers (its stages retrofit them), see prepare

    # -- what a method decides --------------------------------------------------------
    @classmethod
    def prepare(cls, stages: StageInputs, model: PreTrainedModel,
                tokenizer: PreTrainedTokenizerBase) -> Prepared:
        """The stages this method needs before it can be built, run (or loaded from the
        cache) on ``model``. None for LoRA / full."""
        return Prepared()

    def trainer_settings(self) -> dict[str, Any]:
        """Trainer arguments that belong to the method: Lightning accumulates and clips."""
        return {"accumulate_grad_batches": self.grad_accum, "gradient_clip_val": self.grad_clip}
