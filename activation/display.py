"""Tables the commands print, readable at 80 columns and when piped (a log, a cron mail).

Rich shortens a cell that does not fit to ``s…``; a number or a segment name cut that way is useless. Every
column gets at least the width of its longest unbreakable piece (a whole number, an id; a word where the
column may wrap), so nothing is ever cut; when even that does not fit, the table is printed wider instead.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from rich.measure import Measurement
from rich.table import Table


def add_columns(
    table: Table,
    headers: Sequence[str],
    cells: Sequence[Sequence[str]],
    *,
    left: Collection[int] = (0,),
    wrap: Collection[int] = (),
    grow: int | None = None,
) -> None:
    """Add ``headers`` as columns sized so no cell of ``cells`` is cut: columns in ``left`` are left-aligned
    (the others right-aligned: numbers); columns in ``wrap`` may break their cells between words; column
    ``grow`` (prose) takes the width the others leave."""
    for i, header in enumerate(headers):
        pieces = [w for row in cells for w in (row[i].split() if i in wrap else [row[i]])]
        widest = max([len(p) for p in pieces] + [len(w) for w in header.split()], default=1)
        table.add_column(
            header,
            justify="left" if i in left else "right",
            min_width=widest,  # a cell no wider than this is never broken; a header may wrap between words
            ratio=1 if i == grow else None,
        )


def print_table(console: Any, table: Table) -> None:
    """Print ``table`` at the console's width, or wider when its unbreakable cells need it."""
    # measured without the console's limit: a measurement is clamped to the width it is given
    needed = Measurement.get(console, console.options.update_width(10_000), table).minimum
    console.print(table, width=max(console.width, needed), crop=False)
