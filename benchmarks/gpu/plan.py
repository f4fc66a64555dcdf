"""What the check measures and against which targets: every size lives in the :class:`Plan`,
so the GPU run and ``--dry-run`` (tiny shapes on CPU, the same code paths) differ only here;
and the :class:`Budget` that keeps the whole check inside its time."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

GPU_TESTS = (
    "tests/test_memory.py",
    "tests/test_counting.py",
    "tests/test_sparse_optim.py",
    "tests/test_deferred_grad.py",
    "tests/test_loss.py",
    "tests/test_selectors.py",
)
DRY_TESTS = ("tests/test_deferred_grad.py", "tests/test_selectors.py")
METHODS = ("smf", "lora", "full")
REPORT_RESERVE_S = 15.0  # budget kept for writing the results file

# targets
T_SMF_VS_FULL = 0.5
T_LARGE_VS_SMALL = 1.1
T_MEMORY_VS_FULL = 1.0
T_LOGLIK_TOKENS_S = 300_000
T_GENERATED_TOKENS_S = 20_000


@dataclass(frozen=True)
class ModelShape:
    """A decoder's published sizes: enough to build it with random weights (no hub access)."""

    key: str
    label: str
    family: str  # llama | qwen2
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int
    rope_theta: float
    rms_eps: float

    def config(self, **ids: int | None) -> Any:
        """The transformers config (``ids``: bos/eos/pad token ids)."""
        from transformers import LlamaConfig, Qwen2Config

        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[self.family]
        return cls(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            vocab_size=self.vocab,
            max_position_embeddings=self.max_positions,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_eps,
            tie_word_embeddings=True,
            **ids,
        )


SMOLLM2 = ModelShape(
    "smollm2", "SmolLM2-135M", "llama", 576, 1536, 30, 9, 3, 49152, 8192, 100000.0, 1e-5
)
QWEN25 = ModelShape(
    "qwen", "Qwen2.5-0.5B", "qwen2", 896, 4864, 24, 14, 2, 151936, 32768, 1000000.0, 1e-6
)


def tiny(shape: ModelShape) -> ModelShape:
    """The same family with tiny sizes (--dry-run)."""
    return dataclasses.replace(
        shape,
        label=f"{shape.label} (tiny)",
        hidden=64,
        intermediate=128,
        layers=2,
        heads=4,
        kv_heads=2,
        vocab=1024,
    )


@dataclass(frozen=True)
class MemoryCase:
    """One memory size of the SMF step measurement."""

    key: str
    n_keys: int
    knn: int

    @property
    def slots(self) -> int:
        return self.n_keys**2


@dataclass(frozen=True)
class Plan:
    """Every size the check uses; the GPU run and --dry-run differ only here."""

    dry_run: bool
    device: str
    accelerator: str
    trainer_conf: str
    tests: tuple[str, ...]
    shapes: tuple[ModelShape, ...]
    eval_shape: ModelShape
    memory_layers: tuple[float | int, ...]
    memories: tuple[MemoryCase, MemoryCase]  # (small, large)
    memory_heads: int
    memory_k_dim: int
    top_t: int
    batch: int
    seq: int
    warmup: int
    runs: int
    ll_requests: int
    ll_tokens: int
    ll_batch: int
    gen_prompts: int
    gen_prompt_tokens: int
    gen_tokens: int
    gen_batch: int
    eval_runs: int
    test_timeout_s: float
    run_timeout_s: float
    one_sweep: bool  # the smoke runs as one multirun process (--dry-run: imports once)
    case_need_s: float  # budget a step case needs to start

    def memory_config(self, case: MemoryCase) -> dict[str, Any]:
        return {
            "layers": list(self.memory_layers),
            "n_keys": case.n_keys,
            "knn": case.knn,
            "heads": self.memory_heads,
            "k_dim": self.memory_k_dim,
            "gate_init": 1.0,
        }


def make_plan(dry_run: bool) -> Plan:
    """Full sizes on CUDA; tiny shapes and few steps on CPU for --dry-run."""
    if dry_run:
        return Plan(
            dry_run=True,
            device="cpu",
            accelerator="cpu",
            trainer_conf="cpu",
            tests=DRY_TESTS,
            shapes=(tiny(SMOLLM2), tiny(QWEN25)),
            eval_shape=tiny(SMOLLM2),
            memory_layers=(0, 1),
            memories=(MemoryCase("small", 16, 4), MemoryCase("large", 32, 8)),
            memory_heads=2,
            memory_k_dim=32,
            top_t=8,
            batch=2,
            seq=32,
            warmup=1,
            runs=2,
            ll_requests=8,
            ll_tokens=32,
            ll_batch=4,
            gen_prompts=4,
            gen_prompt_tokens=8,
            gen_tokens=8,
            gen_batch=4,
            eval_runs=2,
            test_timeout_s=120,
            run_timeout_s=300,  # three methods in one process: ~90 s idle, 150+ s on busy cores
            one_sweep=True,
            case_need_s=5,
        )
    return Plan(
        dry_run=False,
        device="cuda",
        accelerator="gpu",
        trainer_conf="gpu",
        tests=GPU_TESTS,
        shapes=(SMOLLM2, QWEN25),
        eval_shape=SMOLLM2,
        memory_layers=(0.25, 0.5, 0.75),
        # the fact stream's step: 4 phrasings of one fact (<= 64 tokens), empty memories of
        # 262K and 1M slots (knn 32, memory=empty), top_t 1024 (conf/method/smf.yaml)
        memories=(MemoryCase("small", 512, 32), MemoryCase("large", 1024, 32)),
        memory_heads=4,
        memory_k_dim=256,
        top_t=1024,
        batch=4,
        seq=64,
        warmup=2,
        runs=5,
        ll_requests=256,
        ll_tokens=512,
        ll_batch=32,
        gen_prompts=256,
        gen_prompt_tokens=32,
        gen_tokens=128,
        gen_batch=128,
        eval_runs=3,
        test_timeout_s=240,
        run_timeout_s=150,
        one_sweep=False,
        case_need_s=40,
    )


@dataclass(frozen=True)
class Budget:
    """The check's total time: children get timeouts from it, heavy cases skip when it's spent."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def timeout(self, cap: float) -> float:
        """A child's timeout: ``cap``, or what is left before the report must be written."""
        return max(1.0, min(cap, self.left() - REPORT_RESERVE_S))

    def short(self, need: float) -> str | None:
        """Why a task needing ``need`` seconds is skipped (None: there is time)."""
        left = self.left() - REPORT_RESERVE_S
        return None if left >= need else f"time budget nearly spent ({max(left, 0):.0f} s left)"
