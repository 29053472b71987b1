"""Where the commands print: the two consoles, the ``--json`` switch, warnings, errors and exit codes.

Every package's command module (``<package>/cli*.py``) prints through this module; none imports
:mod:`activation.cli`, which assembles them into the ``activation`` app.

* :data:`out` is standard output: tables, results, and with ``--json`` the one JSON document, nothing else;
* :data:`err` is standard error: warnings, errors, and the progress of a command whose output is JSON.

Commands look both up when they print (``console.out.print(...)``) and never keep them, so a test can swap
them for consoles writing to buffers.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from activation import display, interrupt
from activation.errors import ActivationError

EXIT_PROBLEMS = 1
"""The command ran and reports problems it found (``templates check``, a failed preview), or was aborted."""
EXIT_BAD_INPUT = 2
"""An :class:`ActivationError`: bad input, configuration or state; the message names the thing and the fix."""
EXIT_INTERRUPTED = interrupt.EXIT_STATUS
"""Stopped by Ctrl-C (128 + SIGINT)."""

out = Console()
err = Console(stderr=True)

JSON_HELP = "Print one JSON document (docs/json.md); logs go to stderr."
JSON_OPTION: Any = typer.Option(False, "--json", help=JSON_HELP)
"""The ``--json`` switch of a command (docs/json.md): ``as_json: bool = console.JSON_OPTION``."""


def print_json(command: str, document: dict[str, Any]) -> None:
    """The one JSON document of ``command`` on :data:`out` (see :func:`activation.display.print_json`)."""
    display.print_json(out, command, document)


def print_table(table: Table) -> None:
    """``table`` on :data:`out`, never cutting a cell (see :func:`activation.display.print_table`)."""
    display.print_table(out, table)


def warn(message: str) -> None:
    """``warning: <message>`` on :data:`err`."""
    err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_error(exc: ActivationError) -> None:
    """``error: <message>`` and ``fix: <fix>`` on :data:`err`."""
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.fix:
        err.print(f"[bold]fix:[/] {escape(exc.fix)}", highlight=False, soft_wrap=True)


def exit_interrupted() -> NoReturn:
    """Say what the interrupted command leaves behind (:func:`activation.interrupt.note`); exit 130."""
    err.print(interrupt.note(), highlight=False, soft_wrap=True, markup=False)
    sys.exit(EXIT_INTERRUPTED)
