"""Errors a destination raises, sorted by what the sync should do about them.

::

    ActivationError (activation.errors)
    └── DestinationError               anything a destination reports; never contains a secret
        ├── FatalDestinationError      stop the sync now: nothing else can succeed until someone fixes it
        │   ├── AuthError              401/403: the API key or token is wrong or lacks a scope
        │   ├── RemoteNotFoundError    the list/audience (or another configured object) does not exist
        │   ├── BadRequestError        the API rejected a whole call (a bug or a limit): not retried
        │   └── RetriesExhaustedError  a retriable error persisted past ``max_retries``
        ├── RetriableError             try the same call again after a delay (backoff + jitter)
        │   ├── RateLimitedError       429 (honours ``Retry-After``)
        │   ├── ServerError            5xx, including empty 5xx bodies
        │   └── TransportError         dropped connection, reset, timeout
        └── SkippableError             one member cannot be written: skip it, record why, carry on
            └── ComplianceError        "Member In Compliance State": unsubscribed/cleaned, never resubscribed

The sync retries only :class:`RetriableError`, records :class:`SkippableError` per member in the sync log
and stops on :class:`FatalDestinationError` (state already committed per confirmed batch is kept, so a
rerun converges).
"""

from __future__ import annotations

from activation.errors import ActivationError


class DestinationError(ActivationError):
    """Base class of every destination error."""

    def __init__(self, message: str, *, fix: str | None = None, status: int | None = None) -> None:
        super().__init__(message, fix=fix)
        self.status = status


class FatalDestinationError(DestinationError):
    """The sync cannot continue."""


class AuthError(FatalDestinationError):
    """Credentials are missing, wrong or lack a scope."""


class RemoteNotFoundError(FatalDestinationError):
    """A configured remote object (list, audience) does not exist."""


class BadRequestError(FatalDestinationError):
    """The API rejected a whole call."""


class RetriesExhaustedError(FatalDestinationError):
    """A retriable error kept happening."""


class RetriableError(DestinationError):
    """Transient: the same call may succeed later. ``retry_after`` is the server's hint in seconds."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, fix=fix, status=status)
        self.retry_after = retry_after


class RateLimitedError(RetriableError):
    """429 Too Many Requests."""


class ServerError(RetriableError):
    """5xx from the API."""


class TransportError(RetriableError):
    """The connection dropped or timed out."""


class SkippableError(DestinationError):
    """One member cannot be written; the others can."""

    def __init__(self, message: str, *, email: str | None = None, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.email = email


class ComplianceError(SkippableError):
    """The member unsubscribed or was cleaned; the API refuses to resubscribe them (and so do we)."""
