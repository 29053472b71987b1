"""What the commands print: tables readable at 80 columns and when piped (a log, a cron mail), and the
JSON documents of `--json` (:func:`print_json`).

Rich shortens a cell that does not fit to ``s…``; a number or a segment name cut that way is useless. Every
column gets at least the width of its longest unbreakable piece (a whole number, an id; a word where the
column may wrap), so nothing is ever cut; when even that does not fit, the table is printed wider instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Sequence
from datetime import date, datetime
from pathlib import Path
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


# --- machine-readable output (--json) --------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: dates ISO 8601, paths as strings, NaN and missing as null, numpy scalars
    as numbers, dataclasses as objects."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    try:
        if value != value:  # NaN, NaT
            return None
    except (TypeError, ValueError):  # pandas.NA (and arrays) refuse to be a bool
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / pandas scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def print_json(console: Any, command: str, document: dict[str, Any]) -> None:
    """Print one JSON document for ``--json`` on the console's stream (stdout), nothing else: logs, warnings
    and progress go to stderr. Its first key, ``command``, names the command that wrote it."""
    console.file.write(
        json.dumps({"command": command, **jsonable(document)}, indent=2, allow_nan=False) + "\n"
    )
    console.file.flush()
