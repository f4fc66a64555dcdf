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


def holds_finished_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds the results.json of a run that finished (``status: ok``)."""
    try:
        return json.loads((Path(run_dir) / "results.json").read_text()).get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        return False


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
