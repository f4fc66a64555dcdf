"""What every training stage shares, below both the SMF stages and the finetuning methods.

- :mod:`~smfexp.training.loss`: the causal-LM loss on the loss-bearing positions only;
- :mod:`~smfexp.training.module`: :class:`CausalLMModule`, the Lightning module basics
  (loss, optimizer + warmup schedule, finite checks, trainable-only checkpoints).

The retrofit (:mod:`smfexp.stages.retrofit`) and the methods (:mod:`smfexp.methods`) both build
on it; it imports neither, so stage 1 does not depend on the methods it prepares inputs for.
"""
