"""Scoring machinery, no benchmark knowledge: the benchmarks are :mod:`smfexp.tasks`.

Two protocols: ``harness`` reproduces lm-evaluation-harness 0.4.13 numbers; ``paper``
follows the SMF comparison paper. Everything is batched and length-sorted. One job per module:

- :mod:`~smfexp.eval.config`: :class:`EvalConfig`, what to evaluate and how;
- :mod:`~smfexp.eval.base`: the :class:`Probe` definition, results, held-out slicing, prompt
  wrapping;
- :mod:`~smfexp.eval.encode`: tokenising with the harness' rules, scoring mode;
- :mod:`~smfexp.eval.loglik`: batched continuation log-likelihood;
- :mod:`~smfexp.eval.rolling`: whole-document (rolling / sliding-window) log-likelihood;
- :mod:`~smfexp.eval.generate`: batched greedy generation until stop strings;
- :mod:`~smfexp.eval.normalize`: answer normalisation and matching;
- :mod:`~smfexp.eval.reference`: lm-evaluation-harness itself on the same rows (parity).
"""

from smfexp.eval.base import Probe, ProbeResult
from smfexp.eval.config import PROTOCOLS, EvalConfig

__all__ = [
    "PROTOCOLS",
    "EvalConfig",
    "Probe",
    "ProbeResult",
]
