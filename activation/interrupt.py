"""What a command stopped by Ctrl-C (SIGINT) says: one line, what was written and how to resume, exit 130.

The command line (:mod:`activation.cli`) prints :func:`note` when a command is interrupted; a command that
writes as it goes (a sync) tells it, with :func:`on_interrupt`, what the stop leaves behind.
"""

from __future__ import annotations

from collections.abc import Callable

#: The exit status of a command stopped by Ctrl-C, as shells report it (128 + SIGINT).
EXIT_STATUS = 130
NOTHING_WRITTEN = "interrupted; nothing was written"
_note: str | Callable[[], str] = NOTHING_WRITTEN


def on_interrupt(note: str | Callable[[], str]) -> None:
    """What the running command says if Ctrl-C stops it from now on (a callable is asked at the moment of
    the stop). Commands that write in one transaction or atomically need not call it."""
    global _note
    _note = note


def reset() -> None:
    """Back to "nothing was written" (at the start of every command)."""
    on_interrupt(NOTHING_WRITTEN)


def note() -> str:
    """The line to print for the interrupted command."""
    return _note() if callable(_note) else _note


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, also as a database reports it (DuckDB stops its query and raises "Query interrupted")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        if type(seen).__name__ == "InterruptException" or (
            isinstance(seen, RuntimeError) and "interrupted" in str(seen).lower()
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
