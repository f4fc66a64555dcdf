"""Atomic outputs: a reader never sees a half-written results file or cache entry."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; whatever was written there replaces ``path`` on
    success, and is removed on failure (readers never see a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON-dump ``obj`` atomically (sorted keys, NaN kept as a JSON ``NaN`` token)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success it is renamed into place.

    It never overwrites: if ``final`` appeared meanwhile (another process, e.g. a second DDP
    rank, built the same entry first) that complete copy is kept and the temp copy dropped.
    Move a damaged ``final`` aside with :func:`discard_directory` before rebuilding it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def discard_directory(path: str | os.PathLike) -> None:
    """Remove ``path`` by first renaming it aside, so no reader sees it half deleted; a copy
    another process already discarded is not an error."""
    path = Path(path)
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".trash", dir=path.parent))
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


MANIFEST = "manifest.json"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike, key: Any) -> Path:
    """Record the size and sha256 of every file of a cache entry, and a hash of its key.

    Write it last inside :func:`atomic_directory`, so its presence means the entry is complete;
    :func:`manifest_problem` checks it on load.
    """
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    return atomic_write_json(directory / MANIFEST, {"key": stable_hash(key, 64), "files": files})


def manifest_problem(directory: str | os.PathLike, key: Any) -> str | None:
    """Why a cache entry fails its integrity check, or None if every file matches its manifest.

    A missing manifest is reported as ``"no manifest"`` (entries written before manifests).
    """
    directory = Path(directory)
    try:
        meta = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no manifest"
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
        if path.stat().st_size != want.get("size"):
            return f"{rel} has {path.stat().st_size} bytes, expected {want.get('size')}"
        if file_sha256(path) != want.get("sha256"):
            return f"{rel} does not match its checksum"
    return None


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short content hash of a JSON-serialisable object (cache keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def cache_root() -> Path:
    """Where converted models, retrofits and background statistics are cached."""
    env = os.environ.get("SMFEXP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "smfexp"
