"""Run the ``activation`` CLI in-process the way a user would, capturing output and exit code."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str) -> CliResult:
    """Invoke ``activation ARGS…`` through the real entry point (error handling included)."""
    from rich.console import Console

    import activation.cli as cli
    from activation import console

    out, err = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = ["activation", *args]
    old_console, old_err = console.out, console.err
    console.out = Console(file=out, width=200, force_terminal=False)
    console.err = Console(file=err, width=200, force_terminal=False)
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
        console.out, console.err = old_console, old_err
    return CliResult(code, out.getvalue(), err.getvalue())
