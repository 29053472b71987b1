"""Errors the service raises on purpose, sorted by what the caller should do.

::

    ActivationError                 base: every message names the thing and the fix
    ├── ConfigError                 a setting, scheme, policy or mapping file is wrong: fix the file/env, rerun
    ├── InputError                  an input data file cannot be loaded as asked: fix the file or the flags
    ├── DataCheckError              warehouse data fails a blocking check before segmenting
    ├── WarehouseError              the warehouse cannot be reached or is missing something
    ├── TemplateError               a template fails to parse, lint or render within limits
    ├── NotFoundError               a snapshot / campaign / model asked for does not exist yet
    └── GuardrailError              a sync would do something suspicious; override explicitly

Destination (API) errors live in :mod:`connectors.errors` and also derive from ActivationError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ActivationError(Exception):
    """Base class. ``str(err)`` is the message; ``err.fix`` says what to do about it."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}\n  fix: {self.fix}"
        return self.message


class ConfigError(ActivationError):
    """A setting, scheme, policy or mapping is invalid."""


class InputError(ActivationError):
    """An input file cannot be read as the requested format."""


class FailedCheck(Protocol):
    """What a data check's failure carries: its name and how many rows fail it."""

    @property
    def name(self) -> str: ...

    @property
    def failures(self) -> int: ...


class DataCheckError(ActivationError):
    """Blocking data-quality failure; carries the failed checks."""

    def __init__(
        self, message: str, *, failures: Sequence[FailedCheck] | None = None, fix: str | None = None
    ) -> None:
        super().__init__(message, fix=fix)
        self.failures = failures or []


class WarehouseError(ActivationError):
    """The warehouse is unreachable or lacks a table."""


class TemplateError(ActivationError):
    """A template cannot be parsed, linted or rendered."""


class NotFoundError(ActivationError):
    """Something asked for (snapshot, campaign, model) does not exist."""


class GuardrailError(ActivationError):
    """A sync was stopped before any write by a guardrail."""


class ConflictError(ActivationError):
    """Another run of the same job (a sync to the same destination) holds it; nothing was done."""
