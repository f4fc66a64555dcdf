"""Turn the errors a user can fix into one readable line instead of a traceback wall."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from smfexp.data.sources import DataUnavailableError, MalformedDataError
from smfexp.models.loading import ModelUnavailableError

log = logging.getLogger("smfexp")

USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelUnavailableError,
    DataUnavailableError,
    MalformedDataError,
    ValueError,
    NotImplementedError,
)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Print ``error: <message>`` and exit 2 for user-fixable errors; re-raise the rest."""
    try:
        yield
    except USER_ERRORS as err:
        if log.isEnabledFor(logging.DEBUG):
            log.exception("details")
        print(f"error: {err}\n(add hydra.verbose=smfexp for the traceback)", file=sys.stderr)
        sys.exit(2)
