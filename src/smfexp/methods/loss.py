"""Old import path of :mod:`smfexp.training.loss`, kept while callers move there.

The loss sits below both the retrofit and the methods now; new code imports it from
``smfexp.training.loss`` (tuning ``CHUNK_TOKENS`` must be done there, too).
"""

from smfexp.training.loss import (
    CHUNK_TOKENS,
    FrozenWeightCasts,
    _causal_lm,
    causal_lm_loss,
    loss_bearing_mask,
    supports_chunked_loss,
)

__all__ = [
    "CHUNK_TOKENS",
    "FrozenWeightCasts",
    "_causal_lm",
    "causal_lm_loss",
    "loss_bearing_mask",
    "supports_chunked_loss",
]
