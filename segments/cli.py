"""Commands of this package, registered on the ``activation`` app."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    register_ingest(app)


def register_ingest(app: typer.Typer) -> None:
    """The ``ingest`` and ``demo-data`` commands."""
    app.command("ingest")(ingest_command)
    app.command("demo-data")(demo_data_command)


def ingest_command(
    path: Path = typer.Argument(..., help="File to load (csv, xlsx, txt, parquet)."),
    fmt: str = typer.Option(..., "--format", help="online-retail | cdnow | csv | parquet"),
    mapping: Path | None = typer.Option(None, "--mapping", help="Column mapping YAML (csv and parquet)."),
) -> None:
    """Load transactions (and customers when present) into the warehouse; print a quality report."""
    from rich.table import Table

    from activation import cli
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from segments.ingest import ingest_file

    settings = get_settings()
    report = ingest_file(get_engine(settings), settings, path, fmt, mapping)
    table = Table(title=f"ingest {path.name}", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    for label, value in report.lines():
        table.add_row(label, value)
    cli.console.print(table)


def demo_data_command(
    out: Path = typer.Option(..., "--out", help="Folder to write the files to (created)."),
    customers: int = typer.Option(5_000, "--customers", min=1, help="Number of customers."),
    orders: int = typer.Option(
        40_000, "--orders", min=1, help="Number of order rows (at least --customers)."
    ),
    seed: int = typer.Option(7, "--seed", help="Random seed; the same seed writes byte-identical files."),
) -> None:
    """Write a deterministic synthetic data set (orders, customers, support tickets) and its mappings."""
    from rich.table import Table

    from activation import cli
    from segments.demo_data import generate

    files = generate(out, customers=customers, orders=orders, seed=seed)
    table = Table(title=f"demo data in {out}", show_header=True)
    table.add_column("file")
    table.add_column("what")
    for path, what in files.describe():
        table.add_row(str(path), what)
    cli.console.print(table)
    cli.console.print(
        f"load it with: activation ingest {files.orders} --format parquet --mapping {files.mapping}"
    )
    cli.console.print(
        f"support tickets: activation ingest {files.tickets} --format csv --mapping {files.tickets_mapping}"
    )
