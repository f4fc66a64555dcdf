"""Benchmark scoring: MedMCQA, TriviaQA, WikiText, GSM8K, NQ-open under two protocols.

``harness`` reproduces lm-evaluation-harness 0.4.13 numbers; ``paper`` follows the SMF
comparison paper. Everything is batched and length-sorted; see :mod:`smfexp.eval.core`.
"""

from smfexp.eval.base import ProbeResult
from smfexp.eval.config import PROBE_NAMES, PROTOCOLS, EvalConfig
from smfexp.eval.registry import (
    PROBES,
    evaluate_probes,
    load_probe_data,
    load_probe_rows,
    primary_metric,
    score_probe,
    score_probe_samples,
    select_probe_rows,
)

__all__ = [
    "PROBES",
    "PROBE_NAMES",
    "PROTOCOLS",
    "EvalConfig",
    "ProbeResult",
    "evaluate_probes",
    "load_probe_data",
    "load_probe_rows",
    "primary_metric",
    "score_probe",
    "score_probe_samples",
    "select_probe_rows",
]
