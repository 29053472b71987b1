"""The ``activation`` command line. Each package registers its own commands (``<package>/cli.py``);
this module only builds the app and turns :class:`ActivationError` into a clear message and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from activation import interrupt
from activation.errors import ActivationError
from activation.install import check_installation


def _flags_take_no_value() -> None:
    """``--dry-run <bool>`` in the help reads as if the flag took a value: show no type for on/off flags
    (typer's help prints the parameter's type for every option, flags included)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return shown(self, ctx)  # type: ignore[arg-type]

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()

app = typer.Typer(
    name="activation",
    help="RFM segments from your warehouse, offers per segment, audience sync and segment ROI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _interrupted() -> None:
    err_console.print(interrupt.note(), highlight=False, soft_wrap=True, markup=False)
    sys.exit(interrupt.EXIT_STATUS)


def _installed_version() -> str:
    from importlib.metadata import version as _version

    return _version("rfm-activation")


def _print_version(value: bool) -> None:
    if value:
        console.print(_installed_version(), highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the installed version and exit.",
    ),
) -> None:
    """RFM segments from your warehouse, offers per segment, audience sync and segment ROI."""


@app.command()
def version() -> None:
    """Print the installed version."""
    console.print(_installed_version(), highlight=False)


@app.command()
def init(
    folder: Path = typer.Argument(..., help="The project folder to create (or fill)."),
    force: bool = typer.Option(
        False, "--force", help="Overwrite templates/, prefect.yaml, .env.example, README.md."
    ),
) -> None:
    """Make a project folder: templates/ and policy.yaml to edit, prefect.yaml, .env.example, README.md."""
    from activation.project import init_project

    written = init_project(folder, force=force)
    console.print(f"wrote {len(written)} files to {folder}", highlight=False)
    console.print(
        f"next: cd {folder} && cp .env.example .env && activation templates check",
        highlight=False,
        markup=False,
    )


_setup_error: ActivationError | None = None
"""An installation that cannot work (see :mod:`activation.install`), reported by :func:`main`."""


def _register() -> None:
    global _setup_error
    try:
        check_installation()
    except ActivationError as exc:
        _setup_error = exc
        return
    from campaigns.cli import register as register_campaigns
    from connectors.cli import register as register_connectors
    from flows.cli import register as register_flows
    from outcomes.cli import register as register_outcomes
    from segments.cli import register as register_segments

    register_segments(app)
    register_campaigns(app)
    register_outcomes(app)  # outcomes collect, report roi
    register_connectors(app)
    register_flows(app)


_register()


def main() -> None:
    interrupt.reset()
    try:
        if _setup_error is not None:
            raise _setup_error
        rc = app(standalone_mode=False)
        # with standalone_mode=False click returns the code of `raise typer.Exit(n)` instead of exiting
        # (typer turns Ctrl-C into the code 130)
        if rc == interrupt.EXIT_STATUS:
            _interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except KeyboardInterrupt:
        _interrupted()
    except ActivationError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        if exc.fix:
            err_console.print(f"[bold]fix:[/] {exc.fix}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        if exc.exit_code == interrupt.EXIT_STATUS:
            _interrupted()
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as exc:
        # click (vendored by typer) usage errors: show them like click would, with their exit code
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if interrupt.is_interrupt(exc):
            _interrupted()
        raise


if __name__ == "__main__":
    main()
