"""Shared fixtures: the real tokenizer, a tiny random model, the offline data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from smfexp.data.sources import resolve_data_dir

    found = resolve_data_dir(os.environ.get("SMFEXP_DATA_DIR") or None)
    if found is None:
        for candidate in (ROOT / "data", ROOT.parent / "shared" / "data"):
            if candidate.is_dir():
                return candidate
        pytest.skip("offline data directory not found (run `make setup`)")
    return found


@pytest.fixture(scope="session")
def tokenizer():
    from smfexp.models.loading import ModelSpec, load_tokenizer

    return load_tokenizer(ModelSpec(name="tiny", source="tiny"))


@pytest.fixture()
def tiny_model():
    from smfexp.models.loading import ModelSpec, load_model

    model, _ = load_model(ModelSpec(name="tiny", source="tiny"))
    return model
