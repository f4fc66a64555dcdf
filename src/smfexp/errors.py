"""User-fixable errors become one readable line; every failure leaves a results.json."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from smfexp.data.sources import DataUnavailableError, MalformedDataError
from smfexp.models.loading import ModelUnavailableError
from smfexp.utils.io import atomic_write_json

log = logging.getLogger("smfexp")

USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelUnavailableError,
    DataUnavailableError,
    MalformedDataError,
    ValueError,
    NotImplementedError,
    FileNotFoundError,
)


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for errors the user can fix; None for bugs (keep the traceback)."""
    if isinstance(err, USER_ERRORS):
        if log.isEnabledFor(logging.DEBUG):
            log.exception("details")
        return str(err)
    return None


def record_failure(cfg: DictConfig, err: BaseException, message: str | None) -> None:
    """Write ``results.json`` with ``status: failed`` so reports show the job as failed."""
    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # no resolvable output dir: nothing to record into
        return
    atomic_write_json(out / "results.json", {
        "status": "failed",
        "error": message or f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(err))[-4000:],
        "method": cfg.method.get("name"),
        "selector": cfg.selector.get("name") if cfg.method.get("uses_selector") else None,
        "seed": cfg.get("seed"),
        "model": cfg.model.get("name"),
        "output_dir": str(out),
    })


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """For single-run entry points: print ``error: <message>`` and exit 2 on user errors."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {user_error_message(err)}\n(add hydra.verbose=smfexp for the traceback)",
              file=sys.stderr)
        sys.exit(2)
