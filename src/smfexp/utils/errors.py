"""The errors a user fixes by providing something (a dataset, a model), below every layer.

Defined here, not in the layers that raise them (``smfexp.data``, ``smfexp.models``), so that
:mod:`smfexp.errors`, which every layer imports for its own error types, can list them among
the one-line user errors without importing a layer above it.
"""

from __future__ import annotations


class DataUnavailableError(RuntimeError):
    """A dataset can be read neither from the data directory nor from the hub."""


class MalformedDataError(ValueError):
    """Too many rows of a dataset failed validation (or none were usable)."""


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here; the message says how to provide it."""
