"""Checkpoints load without executing code: safetensors or ``torch.load(weights_only=True)``
only, and ``trust_remote_code`` stays off unless a model config turns it on."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from smfexp.models import loading
from smfexp.models.loading import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "smfexp"


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _keyword_is(call: ast.Call, name: str, value: Any) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
        for k in call.keywords
    )


SOURCES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(SRC)) for p in SOURCES])
def test_no_unsafe_deserialisation_in_src(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    bare_load = "from torch import load" in text
    for call in _calls(tree):
        name = _dotted(call.func)
        if name.endswith("torch.load") or (bare_load and name == "load"):
            assert _keyword_is(call, "weights_only", True), (
                f"{path}:{call.lineno}: torch.load without weights_only=True"
            )
        assert not _keyword_is(call, "trust_remote_code", True), (
            f"{path}:{call.lineno}: trust_remote_code=True hard-coded"
        )
    for node in ast.walk(tree):  # pickle can run arbitrary code on load
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not {"pickle", "cPickle", "dill", "joblib"} & {n.split(".")[0] for n in names}, (
                f"{path}:{node.lineno}: imports a pickle-based loader"
            )


def test_the_scan_catches_an_unsafe_call() -> None:
    bad = ast.parse("import torch\nstate = torch.load(path)\nok = torch.load(p, weights_only=True)")
    flagged = [
        c.lineno
        for c in _calls(bad)
        if _dotted(c.func) == "torch.load" and not _keyword_is(c, "weights_only", True)
    ]
    assert flagged == [2]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "conf" / "model").glob("*.yaml")), ids=lambda p: p.stem
)
def test_model_configs_keep_remote_code_off(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    assert cfg["trust_remote_code"] is False
    assert ModelSpec.from_config(cfg).trust_remote_code is False


def test_model_spec_defaults_to_no_remote_code() -> None:
    assert ModelSpec(name="x").trust_remote_code is False
    assert (
        ModelSpec.from_config({"name": "x", "source": "hub", "path": "a/b"}).trust_remote_code
        is False
    )


class _Recorder:
    """Stands in for AutoTokenizer / AutoModelForCausalLM and records the kwargs."""

    def __init__(self, product: Any) -> None:
        self.product = product
        self.calls: list[dict[str, Any]] = []

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.product


def _fakes(monkeypatch) -> tuple[_Recorder, _Recorder]:
    tok = SimpleNamespace(pad_token="x", eos_token="x", pad_token_id=0, padding_side="left")
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=0), eval=lambda: None)
    tokenizers, models = _Recorder(tok), _Recorder(model)
    monkeypatch.setattr(loading, "AutoTokenizer", tokenizers)
    monkeypatch.setattr(loading, "AutoModelForCausalLM", models)
    return tokenizers, models


@pytest.mark.parametrize("enabled", [False, True])
def test_loader_passes_trust_remote_code_through(enabled, tmp_path, monkeypatch) -> None:
    tokenizers, models = _fakes(monkeypatch)
    cfg = {"name": "local", "source": "local", "path": str(tmp_path)}
    if enabled:
        cfg["trust_remote_code"] = True
    loading.load_model(cfg)
    assert tokenizers.calls and models.calls
    for kwargs in tokenizers.calls + models.calls:
        assert kwargs["trust_remote_code"] is enabled


def test_hub_loader_passes_trust_remote_code_false(monkeypatch) -> None:
    tokenizers, models = _fakes(monkeypatch)
    loading.load_model({"name": "hub", "source": "hub", "path": "org/model"})
    for kwargs in tokenizers.calls + models.calls:
        assert kwargs["trust_remote_code"] is False and kwargs["local_files_only"] is True
