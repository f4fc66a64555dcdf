"""What to evaluate and how: one validated dataclass shared by the CLI and the training callback."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from smfexp.utils.configs import from_node
from smfexp.utils.precision import resolve_precision

PROTOCOLS = ("harness", "paper")
PRECISIONS = ("fp32", "bf16")
AUTO = "auto"  # bf16 where the device has fast bf16 matrix units, else fp32


def _positive_int(value: Any) -> bool:
    """True for ints >= 1 (not bools): a string or float limit is a typo, not a TypeError."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class EvalConfig:
    """Scoring settings. Mirrors ``conf/eval/*.yaml``.

    - ``protocol``: ``harness`` (identical to lm-evaluation-harness 0.4.13) or ``paper``
      (the SMF comparison paper's prompts and metrics); results always record which.
    - ``limit``: rows per probe (documents for wikitext); ``None`` = the whole held-out split.
      ``limits`` overrides it per probe (e.g. ``{wikitext: 5}``: documents are long); a null
      entry means "use ``limit``".
    - ``max_length``: context window; ``None`` = the harness rule (model config, else 2048).
    - ``max_batch_tokens``: cap on padded tokens per forward pass, so long WikiText windows
      are batched by size, not by count.
    - ``max_gen_toks``: cap on generated tokens for the QA probes; ``None`` = each protocol's
      own (harness 256). A batch decodes until its last row stops, so one rambling answer
      costs the batch 256 steps; QA answers are a few tokens, so 32 changes no exact match
      whose gold answer is shorter than 32 tokens.
    """

    protocol: str = "harness"
    probes: list[str] = field(default_factory=lambda: ["medmcqa", "triviaqa", "wikitext"])
    limit: int | None = 1000
    limits: dict[str, int | None] = field(default_factory=dict)
    batch_size: int = 16
    max_length: int | None = None
    chat_template: bool = False
    precision: str = "fp32"
    progress: bool = True
    gsm8k_generate: bool = False
    data_dir: str | None = None  # conf/eval: ${paths.data_dir}, the one data location
    max_batch_tokens: int = 16384
    max_gen_toks: int | None = None
    # along the stream (training runs): score stream_limit target rows and probe rows
    # (stream_limits per probe, e.g. {wikitext: 1} document) every every_n_facts facts, of
    # stream_probes (None = every probe; a subset of probes keeps the curves cheap)
    every_n_facts: int | None = None
    stream_probes: list[str] | None = None
    stream_limit: int = 32
    stream_limits: dict[str, int | None] = field(default_factory=dict)
    stream_precision: str = "auto"  # auto: bf16 where the device has fast bf16, else fp32
    # fact streams: full scores (the before/after rows) after the first N facts, for each N
    # here (nested streams), and each quarter's facts right after it vs at the end
    nested_at: list[int] | None = None
    earlier_facts: bool = False
    # rows of the target's diagnostics: its seen-prompt variant and each quarter of
    # earlier_facts (the learning itself is scored on ``limit`` facts)
    diagnostics_limit: int = 64
    # WikiText: score the first N words of each article (None: whole articles); equal-length
    # articles weigh equally in the total and in its paired interval
    document_words: int | None = None
    # reuse the outputs of the leading blocks training leaves unchanged (SMF: those below the
    # lowest memory layer) at every scoring pass and across runs (smfexp.eval.prefix)
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.probes, str):
            self.probes = [self.probes]
        self.probes = [str(p) for p in self.probes]
        if isinstance(self.stream_probes, str):
            self.stream_probes = [self.stream_probes]
        if self.stream_probes is not None:
            self.stream_probes = [str(p) for p in self.stream_probes]
        if self.nested_at is not None:
            self.nested_at = list(self.nested_at)
        self.limits = {str(k): v for k, v in (self.limits or {}).items()}
        self.stream_limits = {str(k): v for k, v in (self.stream_limits or {}).items()}
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)
        self.validate()

    def validate(self) -> None:
        """Fail early with the valid choices.

        Probe *names* are not checked here: the scoring machinery knows no benchmark. The
        layer that does checks them (:func:`smfexp.tasks.check_probes`), so a typo still
        fails before any model loads instead of silently skipping a probe.
        """
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"eval.protocol={self.protocol!r} is not valid; choose one of {list(PROTOCOLS)}"
            )
        if len(set(self.probes)) != len(self.probes):
            raise ValueError(f"eval.probes lists a probe twice: {self.probes}")
        if self.stream_probes is not None:
            outside = [p for p in self.stream_probes if p not in self.probes]
            if outside:  # the stream scores the first rows of what before/after score
                raise ValueError(f"eval.stream_probes {outside} are not in eval.probes "
                                 f"{self.probes}; add them there or drop them here")
        if self.limit is not None and not _positive_int(self.limit):
            raise ValueError(
                f"eval.limit={self.limit!r} must be a positive integer (rows per probe) or null"
            )
        for value in self.limits.values():
            if value is not None and not _positive_int(value):
                raise ValueError(f"eval.limits values must be positive integers or null: {value!r}")
        if self.precision not in (*PRECISIONS, AUTO):
            raise ValueError(f"eval.precision={self.precision!r} is not valid; choose one of "
                             f"{[*PRECISIONS, AUTO]}")
        if self.stream_precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"eval.stream_precision={self.stream_precision!r} is not valid; "
                             f"choose one of {[*PRECISIONS, 'auto']}")
        if self.every_n_facts is not None and not _positive_int(self.every_n_facts):
            raise ValueError(f"eval.every_n_facts={self.every_n_facts!r} must be a positive "
                             f"integer or null")
        if self.nested_at is not None and not all(_positive_int(n) for n in self.nested_at):
            raise ValueError(f"eval.nested_at={self.nested_at!r} must list positive numbers of "
                             f"facts (e.g. [64, 256, 1000]) or be null")
        for name in ("diagnostics_limit", "document_words"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"eval.{name}={value!r} must be a positive integer")
        if not _positive_int(self.stream_limit):
            raise ValueError(f"eval.stream_limit={self.stream_limit!r} must be a positive integer")
        if self.max_gen_toks is not None and not _positive_int(self.max_gen_toks):
            raise ValueError(f"eval.max_gen_toks={self.max_gen_toks!r} must be a positive "
                             f"integer or null")
        for name in ("batch_size", "max_batch_tokens"):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ValueError(f"eval.{name}={value!r} must be a positive integer")
        if self.max_length is not None and not (
            _positive_int(self.max_length) and self.max_length >= 2
        ):
            raise ValueError(f"eval.max_length={self.max_length!r} must be >= 2 or null")

    @classmethod
    def from_config(cls, cfg: Any) -> EvalConfig:
        """Build from a mapping or config node; an unknown key is a one-line error."""
        return from_node(cls, cfg, "eval")

    def resolved(self, accelerator: str = "auto") -> EvalConfig:
        """A copy with ``auto`` precisions made concrete for this device (bf16 where its
        matrix units make it fast, else fp32), so caches and results name what ran."""
        def concrete(value: str) -> str:
            if value != AUTO:
                return value
            return "bf16" if "bf16" in str(resolve_precision(AUTO, accelerator)) else "fp32"

        return dataclasses.replace(self, precision=concrete(self.precision),
                                   stream_precision=concrete(self.stream_precision))

    def limit_for(self, probe: str) -> int | None:
        """Rows to take from ``probe``: its ``limits`` entry if any, else ``limit``."""
        value = self.limits.get(probe)
        return self.limit if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
