"""The ``activation`` command line: the root app, assembled from each package's commands
(``<package>/cli*.py``, each with a ``register(app)``), and :func:`main`, which turns an
:class:`ActivationError` into its message and fix and exit code 2. Nothing imports this module back: the
commands print through :mod:`activation.console`."""

from __future__ import annotations

import sys
from importlib.metadata import version as installed_version
from pathlib import Path

import typer
from typer.core import TyperOption

from activation import console, interrupt
from activation.errors import ActivationError
from activation.install import check_installation


def _flags_take_no_value() -> None:
    """``--dry-run <bool>`` in the help reads as if the flag took a value: show no type for on/off flags
    (typer's help prints the parameter's type for every option, flags included)."""
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


def _installed_version() -> str:
    return installed_version("rfm-activation")


def _print_version(value: bool) -> None:
    if value:
        console.out.print(_installed_version(), highlight=False)
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
    console.out.print(_installed_version(), highlight=False)


@app.command()
def init(
    folder: Path = typer.Argument(..., help="The project folder to create (or fill)."),
    force: bool = typer.Option(
        False, "--force", help="Overwrite templates/, prefect.yaml, .env.example, README.md."
    ),
) -> None:
    """Make a project folder: templates/ and policy.yaml to edit, prefect.yaml, .env.example, README.md."""
    from activation.project import init_project  # pydantic: imported by the command, not by --help

    written = init_project(folder, force=force)
    console.out.print(f"wrote {len(written)} files to {folder}", highlight=False)
    console.out.print(
        f"next: cd {folder} && cp .env.example .env && activation templates check",
        highlight=False,
        markup=False,
    )


_setup_error: ActivationError | None = None
"""An installation that cannot work (see :mod:`activation.install`), reported by :func:`main`."""


def _assemble(root: typer.Typer) -> None:
    """Add every package's commands to ``root``, in the order ``activation --help`` lists them."""
    global _setup_error
    try:
        check_installation()
    except ActivationError as exc:
        _setup_error = exc
        return
    # imported only once the check passed: a package of the same name from another distribution would fail
    # somewhere inside these imports, far from the cause the check names
    from campaigns import cli as campaigns_cli
    from connectors import cli as connectors_cli
    from flows import cli as flows_cli
    from outcomes import cli as outcomes_cli
    from segments import cli as segments_cli
    from segments import cli_models
    from studio import cli as studio_cli

    segments_cli.register(root)
    cli_models.register(root)
    campaigns_cli.register(root)
    outcomes_cli.register(root)  # outcomes collect, report roi
    connectors_cli.register(root)
    flows_cli.register(root)
    studio_cli.register(root)  # studio


_assemble(app)


def main() -> None:
    interrupt.reset()
    try:
        if _setup_error is not None:
            raise _setup_error
        rc = app(standalone_mode=False)
        # with standalone_mode=False click returns the code of `raise typer.Exit(n)` instead of exiting
        # (typer turns Ctrl-C into the code 130)
        if rc == console.EXIT_INTERRUPTED:
            console.exit_interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except KeyboardInterrupt:
        console.exit_interrupted()
    except ActivationError as exc:
        console.print_error(exc)
        sys.exit(console.EXIT_BAD_INPUT)
    except typer.Exit as exc:
        if exc.exit_code == console.EXIT_INTERRUPTED:
            console.exit_interrupted()
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.err.print("aborted")
        sys.exit(console.EXIT_PROBLEMS)
    except Exception as exc:
        # click (vendored by typer) usage errors: show them like click would, with their exit code
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if interrupt.is_interrupt(exc):
            console.exit_interrupted()
        raise


if __name__ == "__main__":
    main()
