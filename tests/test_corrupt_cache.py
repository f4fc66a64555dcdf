"""Corrupt cache entries are rebuilt with a warning: never used, never a crash.

Every stage (retrofit checkpoint, background statistics, cached base scores, converted
embedded model) goes through one cache (``smfexp.utils.cache``); each is damaged the ways
disks and people damage files: truncated, overwritten with garbage, bytes flipped behind an
intact header, a file deleted, the config edited.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from smfexp.models.loading import ModelSpec, load_model
from smfexp.utils.cache import MANIFEST, WARNING, manifest_problem, write_manifest
from smfexp.utils.io import cache_root

SPEC = {"name": "tiny", "source": "tiny"}
MEMORY = {"layers": [1, 2], "n_keys": 16, "knn": 4, "k_dim": 32, "heads": 2}
RETRO = {
    "steps": 2,
    "lr": 1e-2,
    "batch_size": 4,
    "max_length": 32,
    "warmup_steps": 0,
    "parts": ["wiki"],
    "max_docs": 40,
    "heldout_docs": 4,
    "heldout_batches": 1,
    "seed": 0,
    "precision": "32-true",
}
BACKGROUND = {"batch_size": 4, "max_length": 32, "parts": ["wiki"], "n": 3, "unit": "batch",
              "seed": 0}


def _use_cache(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Point the cache at ``root``; the converted embedded model (the tokenizer) is shared."""
    models = cache_root() / "models"
    root.mkdir(parents=True, exist_ok=True)
    if models.exists() and not (root / "models").exists():
        (root / "models").symlink_to(models.resolve())
    mp.setenv("SMFEXP_CACHE", str(root))


# --------------------------------------------------------------------------- corruptions
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:  # same size, so a size check alone cannot tell
    size = path.stat().st_size
    path.write_bytes((bytes(range(256)) * (size // 256 + 1))[:size])


def flip_tail(path: Path) -> None:  # header intact, tensor bytes changed
    data = bytearray(path.read_bytes())
    for i in range(1, 33):
        data[-i] ^= 0xFF
    path.write_bytes(bytes(data))


def not_json(path: Path) -> None:
    path.write_text('{"key": {"model": ', encoding="utf-8")


def delete(path: Path) -> None:
    path.unlink()


# --------------------------------------------------------------------------- retrofit
def _memory_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if ".memory." in n or n.endswith(".gate")
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, data_dir):
    """One real tiny retrofit, built once; every test works on a copy of its cache."""
    from smfexp.stages.background import background_statistics
    from smfexp.stages.retrofit import ensure_retrofit

    root = tmp_path_factory.mktemp("pristine") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        _use_cache(mp, root)
        model, tok = load_model(ModelSpec(**SPEC))
        directory, report = ensure_retrofit(
            model, tok, SPEC, MEMORY, RETRO, data_dir=str(data_dir), progress=False
        )
        stats = background_statistics(
            model, tok, directory.name, BACKGROUND, str(data_dir), progress=False
        )
    return {
        "root": root,
        "directory": directory.relative_to(root),
        "report": report,
        "memory": _memory_state(model),
        "stats": stats,
    }


@pytest.fixture()
def cache(pristine, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(pristine["root"], root, symlinks=True)
    _use_cache(monkeypatch, root)
    return root


@pytest.fixture()
def retrofit_runs(monkeypatch) -> list[int]:
    from smfexp.stages import retrofit

    runs: list[int] = []
    train = retrofit._train_retrofit

    def counted(*args, **kwargs):
        runs.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(retrofit, "_train_retrofit", counted)
    return runs


def _retrofit(data_dir: Path):
    from smfexp.stages.retrofit import ensure_retrofit

    model, tok = load_model(ModelSpec(**SPEC))
    directory, report = ensure_retrofit(
        model, tok, SPEC, MEMORY, RETRO, data_dir=str(data_dir), progress=False
    )
    return model, directory, report


def _edit_key(path: Path) -> None:
    report = json.loads(path.read_text())
    report["key"]["retrofit"]["steps"] = 999
    path.write_text(json.dumps(report))


RETROFIT_CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "weights truncated": ("memory.safetensors", truncate),
    "weights garbage": ("memory.safetensors", garbage),
    "weights flipped": ("memory.safetensors", flip_tail),
    "weights deleted": ("memory.safetensors", delete),
    "config edited": ("retrofit.json", _edit_key),
    "manifest not json": (MANIFEST, not_json),
}


@pytest.mark.parametrize("case", sorted(RETROFIT_CORRUPTIONS))
def test_corrupt_retrofit_is_rebuilt(case, pristine, cache, retrofit_runs, data_dir, caplog):
    name, corrupt = RETROFIT_CORRUPTIONS[case]
    corrupt(cache / pristine["directory"] / name)
    with caplog.at_level(logging.WARNING):
        model, directory, report = _retrofit(data_dir)
    assert retrofit_runs == [1], "a corrupt entry must be rebuilt"
    assert WARNING in caplog.text and str(directory) in caplog.text
    assert manifest_problem(directory, report["key"]) is None  # the rebuilt entry is intact
    assert report["heldout_loss"] == pytest.approx(pristine["report"]["heldout_loss"])
    for n, p in _memory_state(model).items():  # same seed, same memories as the first build
        torch.testing.assert_close(p, pristine["memory"][n], msg=n)


def test_intact_retrofit_is_reused(pristine, cache, retrofit_runs, data_dir, caplog):
    with caplog.at_level(logging.WARNING):
        model, _, report = _retrofit(data_dir)
    assert retrofit_runs == [] and WARNING not in caplog.text
    assert report == pristine["report"]
    for n, p in _memory_state(model).items():
        assert torch.equal(p, pristine["memory"][n]), n


def test_retrofit_without_manifest_is_rebuilt(pristine, cache, retrofit_runs, data_dir, caplog):
    """The manifest is written last: without one the entry is unfinished or foreign."""
    directory = cache / pristine["directory"]
    (directory / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        _, _, report = _retrofit(data_dir)
    assert retrofit_runs == [1] and WARNING in caplog.text
    assert manifest_problem(directory, report["key"]) is None


# --------------------------------------------------------------------------- background stats
def _background(pristine, data_dir: Path, runs: list[int], monkeypatch):
    from smfexp.stages import background
    from smfexp.stages.retrofit import ensure_retrofit

    compute = background.compute_background_stats

    def counted(*args, **kwargs):
        runs.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(background, "compute_background_stats", counted)
    model, tok = load_model(ModelSpec(**SPEC))
    directory, _ = ensure_retrofit(
        model, tok, SPEC, MEMORY, RETRO, data_dir=str(data_dir), progress=False
    )
    return background.background_statistics(
        model, tok, directory.name, BACKGROUND, str(data_dir), progress=False
    )


def _edit_meta(path: Path) -> None:
    from smfexp.smf.background import BackgroundStats

    stats = BackgroundStats.load(path)
    stats.meta["key"]["n"] = 999
    stats.save(path)


BACKGROUND_CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "garbage": garbage,
    "flipped": flip_tail,
    "deleted": delete,
    "config edited": _edit_meta,
}


@pytest.mark.parametrize("case", sorted(BACKGROUND_CORRUPTIONS))
def test_corrupt_background_stats_are_rebuilt(case, pristine, cache, data_dir, monkeypatch, caplog):
    (path,) = (cache / "background").glob("*/background.safetensors")
    BACKGROUND_CORRUPTIONS[case](path)
    runs: list[int] = []
    with caplog.at_level(logging.WARNING):
        stats = _background(pristine, data_dir, runs, monkeypatch)
    assert runs == [1]
    assert str(path.parent) in caplog.text and "rebuilding" in caplog.text
    expected = pristine["stats"]
    assert stats.n_batches == expected.n_batches
    for got, want in zip(stats.df + stats.reads, expected.df + expected.reads, strict=True):
        assert torch.equal(got, want)
    runs.clear()
    _background(pristine, data_dir, runs, monkeypatch)  # the rebuilt file is reused
    assert runs == []


def test_every_file_of_an_entry_is_checked(pristine, cache, data_dir, monkeypatch):
    (summary,) = (cache / "background").glob("*/background.json")
    not_json(summary)  # a summary for people browsing the cache: damaged, the entry is rebuilt
    runs: list[int] = []
    stats = _background(pristine, data_dir, runs, monkeypatch)
    assert runs == [1] and torch.equal(stats.reads[0], pristine["stats"].reads[0])


# --------------------------------------------------------------------------- cached scores
@pytest.fixture()
def scorer(data_dir, tmp_path, monkeypatch):
    """A ForgettingCallback on the tiny model whose scoring calls are counted."""
    from smfexp.callbacks.forgetting import ForgettingCallback
    from smfexp.data.modules import TargetSpec
    from smfexp.eval import EvalConfig
    from smfexp.tasks import medmcqa

    _use_cache(monkeypatch, tmp_path / "cache")
    model, tok = load_model(ModelSpec(**SPEC))
    target = TargetSpec("medmcqa", medmcqa.load_rows(data_dir, "validation").rows[:2])
    eval_cfg = EvalConfig(probes=["gsm8k"], limit=2, progress=False, data_dir=str(data_dir))
    callback = ForgettingCallback(eval_cfg, target, tok, cache_key={"test": "corrupt-cache"})
    calls: list[int] = []
    score = callback.score_own

    def counted(m, *args):
        calls.append(1)
        return score(m, *args)

    callback.score_own = counted  # the draw's own part of the starting scores (the target)
    return callback, model, calls


OWN_KEY = {"test": "corrupt-cache", "stage": "stage", "items": True, "part": "own"}


def _scores_file() -> Path:
    """The cached entry of the target's starting scores (the probes' is a separate one)."""
    (path,) = [p for p in (cache_root() / "scores").glob("*/scores.json")
               if "target" in json.loads(p.read_text())]
    return path


def _edit_scores(path: Path) -> None:
    cached = json.loads(path.read_text())
    cached["target"]["acc"] = 1.0 - cached["target"]["acc"]
    path.write_text(json.dumps(cached))


def _edit_score_key(path: Path) -> None:
    manifest = json.loads((path.parent / MANIFEST).read_text())
    manifest["key"] = "another run"
    (path.parent / MANIFEST).write_text(json.dumps(manifest))


def _wrong_types(path: Path) -> None:
    cached = json.loads(path.read_text())
    cached["target"] = "high"
    path.write_text(json.dumps(cached))
    # the key the scorer fixture caches under: a matching manifest, only the types are wrong
    write_manifest(path.parent, OWN_KEY)


SCORE_CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "garbage": garbage,  # not even UTF-8
    "not an object": lambda p: p.write_text("[1, 2, 3]"),
    "scores edited": _edit_scores,
    "config edited": _edit_score_key,
    "wrong types": _wrong_types,
    "deleted": delete,
}


@pytest.mark.parametrize("case", sorted(SCORE_CORRUPTIONS))
def test_corrupt_scores_are_recomputed(case, scorer, caplog):
    callback, model, calls = scorer
    first = callback._cached_scores(model, "stage")
    assert callback._cached_scores(model, "stage") == first and calls == [1]  # cached
    SCORE_CORRUPTIONS[case](_scores_file())
    with caplog.at_level(logging.WARNING):
        again = callback._cached_scores(model, "stage")
    assert calls == [1, 1] and again == first
    if case != "deleted":
        assert WARNING in caplog.text
    assert callback._cached_scores(model, "stage") == first and calls == [1, 1]


# --------------------------------------------------------------------------- embedded model
SOURCE_KEY = {"gguf": "model.gguf", "size": 400}


def _fake_conversion(directory: Path, key: dict = SOURCE_KEY) -> None:
    """A small entry shaped like a cached conversion (real safetensors, no real model)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file(
        {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)},
        str(directory / "model.safetensors"),
    )
    (directory / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (directory / "tokenizer.json").write_text(json.dumps({"model": {}}))
    write_manifest(directory, key)


def _manifest_without_files(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["files"] = {}
    path.write_text(json.dumps(manifest))


def _same_size_garbage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def _json_same_size(path: Path) -> None:
    path.write_text("x" * path.stat().st_size)


EMBEDDED_CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "weights truncated": ("model.safetensors", truncate, "model.safetensors"),
    "weights deleted": ("model.safetensors", delete, "model.safetensors is missing"),
    "header garbage": ("model.safetensors", _same_size_garbage_header, "checksum"),
    "weights garbage": ("model.safetensors", garbage, "checksum"),
    "config garbage": ("config.json", _json_same_size, "config.json"),
    "config deleted": ("config.json", delete, "config.json is missing"),
    "manifest not json": (MANIFEST, not_json, MANIFEST),
    "manifest deleted": (MANIFEST, delete, MANIFEST),
    "manifest empty list": (MANIFEST, lambda p: p.write_text("[]"), MANIFEST),
    "manifest lists nothing": (MANIFEST, _manifest_without_files, MANIFEST),
}


def test_intact_conversion_passes(tmp_path):
    _fake_conversion(tmp_path / "conv")
    assert manifest_problem(tmp_path / "conv", SOURCE_KEY) is None
    other_gguf = {**SOURCE_KEY, "size": 401}
    assert "another config" in manifest_problem(tmp_path / "conv", other_gguf)


@pytest.mark.parametrize("case", sorted(EMBEDDED_CORRUPTIONS))
def test_corrupt_conversion_fails_its_check(case, tmp_path):
    directory = tmp_path / "conv"
    _fake_conversion(directory)
    name, corrupt, reason = EMBEDDED_CORRUPTIONS[case]
    corrupt(directory / name)
    problem = manifest_problem(directory, SOURCE_KEY)
    assert problem is not None and reason in problem


def test_large_files_are_checked_by_structure_not_rehashed(tmp_path, monkeypatch):
    """Weights above HASH_LIMIT are not hashed on every load; truncation is still caught."""
    from smfexp.utils import cache as cache_module

    directory = tmp_path / "conv"
    _fake_conversion(directory)
    monkeypatch.setattr(cache_module, "HASH_LIMIT", 0)
    flip_tail(directory / "model.safetensors")
    assert manifest_problem(directory, SOURCE_KEY) is None  # the documented trade-off
    truncate(directory / "model.safetensors")
    assert "model.safetensors" in manifest_problem(directory, SOURCE_KEY)


def test_generic_entries_are_built_once_and_rebuilt_when_damaged(tmp_path, monkeypatch, caplog):
    from smfexp.utils.cache import load_or_build

    monkeypatch.setenv("SMFEXP_CACHE", str(tmp_path / "cache"))
    builds: list[int] = []

    def build(directory: Path) -> None:
        builds.append(1)
        (directory / "value.json").write_text(json.dumps({"x": 1}))

    def load(directory: Path) -> dict:
        return json.loads((directory / "value.json").read_text())

    first, entry = load_or_build("demo", {"k": 1}, build, load)
    again, _ = load_or_build("demo", {"k": 1}, build, load)
    assert first == again == {"x": 1} and builds == [1]
    (entry / "value.json").write_text('{"x": 2}')  # edited behind the cache's back
    with caplog.at_level(logging.WARNING):
        fixed, _ = load_or_build("demo", {"k": 1}, build, load)
    assert fixed == {"x": 1} and builds == [1, 1] and WARNING in caplog.text
    load_or_build("demo", {"k": 2}, build, load)  # another key: another entry
    assert builds == [1, 1, 1] and len(list((tmp_path / "cache" / "demo").iterdir())) == 2


def test_corrupt_conversion_is_rebuilt(tmp_path, monkeypatch, caplog):
    """``embedded_model_dir`` converts again (here: a stand-in converter) after a failed check."""
    from smfexp.models import loading
    from smfexp.utils.cache import entry_dir

    source = tmp_path / "pkg" / "model.gguf"
    source.parent.mkdir()
    source.write_bytes(b"GGUF" * 100)
    monkeypatch.setenv("SMFEXP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "_embedded_gguf", lambda spec: source)
    spec = ModelSpec(name="fake", source="embedded")
    key = loading.embedded_key(source)
    target = entry_dir("models", key, "fake")
    _fake_conversion(target, key)
    assert loading.embedded_model_dir(spec) == target  # intact: reused, nothing converted

    good = {p.name: p.read_bytes() for p in target.iterdir() if p.name != MANIFEST}
    converted: list[str] = []

    class _Converted:
        def __init__(self, files: dict[str, bytes]) -> None:
            self.files, self.config, self.hf_quantizer = files, object(), None

        def save_pretrained(self, directory, **kwargs) -> None:
            for name, data in self.files.items():
                (Path(directory) / name).write_bytes(data)

    class _Auto:
        def __init__(self, kind: str, files: dict[str, bytes]) -> None:
            self.kind, self.files = kind, files

        def from_pretrained(self, *args, **kwargs) -> _Converted:
            converted.append(self.kind)
            return _Converted(self.files)

    weights = {k: v for k, v in good.items() if k in ("model.safetensors", "config.json")}
    rest = {k: v for k, v in good.items() if k not in weights}
    monkeypatch.setattr(loading, "AutoModelForCausalLM", _Auto("model", weights))
    monkeypatch.setattr(loading, "AutoTokenizer", _Auto("tokenizer", rest))
    truncate(target / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        assert loading.embedded_model_dir(spec) == target
    assert sorted(converted) == ["model", "tokenizer"] and WARNING in caplog.text
    assert manifest_problem(target, key) is None


def test_a_second_builder_keeps_the_entry_the_first_one_finished(tmp_path, monkeypatch):
    """Two DDP ranks build the same entry at once: the one finishing second must neither fail
    nor replace the complete entry under the first one's feet."""
    from smfexp.utils.cache import load_or_build

    monkeypatch.setenv("SMFEXP_CACHE", str(tmp_path / "cache"))

    def load(directory: Path) -> dict:
        return json.loads((directory / "value.json").read_text())

    def build_by(rank: int):
        def build(directory: Path) -> None:
            if rank == 0:  # while rank 0 builds, rank 1 builds and finishes the same entry
                load_or_build("demo", {"k": 1}, build_by(1), load)
            (directory / "value.json").write_text(json.dumps({"rank": rank}))
        return build

    value, entry = load_or_build("demo", {"k": 1}, build_by(0), load)
    assert value == {"rank": 1} and [p.name for p in entry.parent.iterdir()] == [entry.name]


def test_probe_scores_are_shared_by_every_fact_draw(data_dir, tmp_path, monkeypatch):
    """Two draws (other target facts) score the forgetting probes of the base model once."""
    from smfexp.callbacks.forgetting import ForgettingCallback
    from smfexp.data.modules import TargetSpec
    from smfexp.eval import EvalConfig
    from smfexp.tasks import medmcqa

    _use_cache(monkeypatch, tmp_path / "cache")
    model, tok = load_model(ModelSpec(**SPEC))
    rows = medmcqa.load_rows(data_dir, "validation").rows
    eval_cfg = EvalConfig(probes=["gsm8k"], limit=2, progress=False, data_dir=str(data_dir))
    scored: list[str] = []
    for draw, facts in (("a", rows[:2]), ("b", rows[2:4])):
        callback = ForgettingCallback(eval_cfg, TargetSpec("medmcqa", facts), tok,
                                      cache_key={"test": "shared", "target": draw})
        probes = callback.score_probes
        callback.score_probes = lambda m, probes=probes, draw=draw: (scored.append(draw),
                                                                     probes(m))[1]
        start = callback._cached_scores(model, None)
        assert set(start.scores) == {"target", "gsm8k"}
    assert scored == ["a"]  # draw b read draw a's probe scores
