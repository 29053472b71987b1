"""Commands of this package, registered on the ``activation`` app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    __import__("campaigns.cli_outcomes", fromlist=["register"]).register(app)  # outcomes collect, report roi
