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

    # A missing data set is a broken setup, not a reason to pass: fail, never skip (a skip
    # would let CI go green having tested nothing that reads data).
    found = resolve_data_dir()  # raises if $SMFEXP_DATA_DIR names a folder that does not exist
    if found is None:
        for candidate in (ROOT / "data", ROOT.parent / "shared" / "data"):
            if candidate.is_dir():
                return candidate
        pytest.fail("offline data directory not found: run `make setup` (links ../shared/data "
                    "to ./data) or set SMFEXP_DATA_DIR")
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
