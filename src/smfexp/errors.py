"""User-fixable errors become one readable line; every failure leaves a results.json (never over a
finished run's)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from smfexp.utils.errors import DataUnavailableError, MalformedDataError, ModelUnavailableError
from smfexp.utils.io import atomic_write_json, holds_finished_run

if TYPE_CHECKING:  # the methods import NonFiniteError; they must not need Hydra's config lib
    from omegaconf import DictConfig

log = logging.getLogger("smfexp")


class RunInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped the run: after a checkpoint was written, or while scoring."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, when: str = "") -> None:
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        if checkpoint is None:
            text = f"interrupted by {name} {when or f'at step {step}'}; run the command again"
        else:
            text = (f"interrupted by {name} after step {step}; checkpoint {checkpoint} - run "
                    f"the same command with resume=auto to continue")
        super().__init__(text)


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/Inf: stop before it reaches the weights."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelUnavailableError,
    DataUnavailableError,
    MalformedDataError,
    ValueError,
    NotImplementedError,
    FileNotFoundError,
    NonFiniteError,
    RunInterrupted,
)


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for errors the user can fix; None for bugs (keep the traceback)."""
    if isinstance(err, USER_ERRORS):
        if log.isEnabledFor(logging.DEBUG):
            log.exception("details")
        return str(err)
    return None


def record_failure(cfg: DictConfig, err: BaseException, message: str | None) -> None:
    """Write ``results.json`` with ``status: failed`` (or ``interrupted``) so reports show the
    job as not finished, never as a number. A finished run's results in that directory are
    kept: the failure may be exactly the refusal to overwrite them (a lever swept into the
    directory another run's settings name)."""
    try:
        out = Path(cfg.paths.output_dir)
    except Exception:  # no resolvable output dir: nothing to record into
        return
    if holds_finished_run(out):
        log.error("%s holds a finished run's results: kept as they are; this job's failure "
                  "is only in its log", out)
        return
    checkpoint = out / "checkpoints" / "last.ckpt"
    atomic_write_json(out / "results.json", {
        "status": "interrupted" if isinstance(err, RunInterrupted) else "failed",
        "error": message or f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(err))[-4000:],
        "method": _method_name(cfg),
        "selector": cfg.method.get("selector"),
        "seed": cfg.get("seed"),
        "model": cfg.model.get("name"),
        # the last good checkpoint (relative to the run dir): the same command with
        # resume=auto continues from it
        "checkpoint": str(checkpoint.relative_to(out)) if checkpoint.is_file() else None,
    })


def _method_name(cfg: DictConfig) -> str | None:
    """The method's name from its class (its config has no name key), if it imports."""
    try:
        import hydra

        return str(hydra.utils.get_class(str(cfg.method._target_)).method_name)
    except Exception:  # the failure may be exactly this target: record what is known
        return None


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """For single-run entry points: print ``error: <message>`` and exit 2 on user errors."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {user_error_message(err)}\n(add hydra.verbose=smfexp for the traceback)",
              file=sys.stderr)
        sys.exit(2)

