"""The one cache of the project: a directory per entry, named by its key, with a manifest.

It sits below every layer because models and stages both build entries. Each entry (the
converted embedded model, the retrofit, the background statistics, the base scores) is a pure
function of its key. :func:`load_or_build` returns the entry for a key, building it into a
temporary directory that is renamed into place only when complete, so a half-written entry
is never seen. The manifest, written last, holds the key and every file's
size and sha256. On load, files up to ``HASH_LIMIT`` are hashed again; larger ones (model
weights, 1M-slot value tables: seconds to hash) are checked by size and, for safetensors, by
their header spanning the file. An entry that fails the check, or that its loader rejects,
is rebuilt with a warning - never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from smfexp.utils.io import (
    atomic_directory,
    atomic_write_json,
    cache_root,
    discard_directory,
    stable_hash,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HASH_LIMIT = 64 << 20  # bytes; larger files are checked structurally, not re-hashed
WARNING = "failed its integrity check"

T = TypeVar("T")


def entry_dir(kind: str, key: Mapping[str, Any], name: str | None = None) -> Path:
    """``<cache>/<kind>/[<name>-]<hash of key>``."""
    return cache_root() / kind / f"{name + '-' if name else ''}{stable_hash(key)}"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike, key: Any) -> Path:
    """Record the key (hashed) and the size and sha256 of every file of an entry."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    return atomic_write_json(directory / MANIFEST, {"key": stable_hash(key, 64), "files": files})


def safetensors_problem(path: Path) -> str | None:
    """A cheap structural check: the header parses and its tensors end at the end of the
    file, so truncation or a garbage header is caught without hashing the file."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > size - 8:
                return f"{path.name}: header length {n} exceeds the file"
            header = json.loads(fh.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        return f"{path.name}: unreadable header ({type(err).__name__})"
    if ends and max(ends) != size - 8 - n:
        return f"{path.name}: tensor data does not fill the file (truncated?)"
    return None


def manifest_problem(directory: str | os.PathLike, key: Any) -> str | None:
    """Why an entry must not be used, or None when every file matches its manifest."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {MANIFEST} (an unfinished or foreign entry)"
    except (OSError, ValueError) as err:
        return f"unreadable {MANIFEST} ({type(err).__name__})"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or not files:
        return f"malformed {MANIFEST}"
    if meta.get("key") != stable_hash(key, 64):
        return "it was built for another config"
    for rel, want in files.items():
        path = directory / rel
        if not isinstance(want, dict):
            return f"malformed {MANIFEST} entry for {rel}"
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != want.get("size"):
            return f"{rel} has {size} bytes, expected {want.get('size')}"
        if size <= HASH_LIMIT:
            if file_sha256(path) != want.get("sha256"):
                return f"{rel} does not match its checksum"
        elif rel.endswith(".safetensors") and (problem := safetensors_problem(path)):
            return problem
    return None


def load_or_build(
    kind: str,
    key: Mapping[str, Any],
    build: Callable[[Path], None],
    load: Callable[[Path], T],
    name: str | None = None,
    on_rebuild: Callable[[], None] | None = None,
) -> tuple[T, Path]:
    """``(load(entry), entry)`` for ``key``; ``build(tmp_dir)`` writes a missing or damaged
    entry first. ``on_rebuild`` undoes what a failed ``load`` may have half done (e.g. a
    memory half-attached to the model) before building."""
    directory = entry_dir(kind, key, name)
    if directory.exists():
        problem = manifest_problem(directory, key)
        if problem is None:
            try:
                return load(directory), directory
            except Exception as err:  # a file that passes its checksum but not its loader
                problem = f"{type(err).__name__}: {err}"
        log.warning("%s cache %s %s (%s); rebuilding", kind, directory, WARNING, problem)
        if on_rebuild is not None:
            on_rebuild()
        discard_directory(directory)
    with atomic_directory(directory) as tmp:
        build(tmp)
        write_manifest(tmp, key)
    return load(directory), directory
