"""The column mapping of ``ingest --format csv|parquet`` (a YAML file; every key is in docs/mapping.md).

:func:`load_mapping` validates the whole file and reports every problem as ``file:line: problem`` in one
:class:`ConfigError`, the way the offer policy does, with the fix pointing at docs/mapping.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activation.errors import ConfigError
from activation.yamlfile import read_yaml

DOC = "docs/mapping.md"
KINDS = ("orders", "events", "customers")
GRAINS = ("lines", "orders")
ENCODINGS = {"utf-8": "utf-8", "utf8": "utf-8", "utf-16": "utf-16", "utf16": "utf-16", "latin-1": "latin-1",
             "latin1": "latin-1", "iso-8859-1": "latin-1"}  # fmt: skip

REQUIRED = {
    "orders": ("order_id", "customer_id", "ordered_at"),
    "events": ("customer_id", "occurred_at"),
    "customers": ("customer_id",),
}
OPTIONAL = {
    "orders": (
        "amount",
        "quantity",
        "unit_price",
        "status",
        "coupon_code",
        "country",
        "city",
        "category",
        "email",
        "first_name",
        "unsubscribed",
    ),
    "events": ("event_id", "event_type"),
    "customers": ("email", "first_name", "country", "city", "unsubscribed", "created_at"),
}
# key -> the kinds it applies to
KEYS: dict[str, tuple[str, ...]] = {
    "kind": KINDS,
    "columns": KINDS,
    "grain": ("orders",),
    "date_format": KINDS,
    "delimiter": KINDS,
    "decimal": KINDS,
    "encoding": KINDS,
    "source": KINDS,  # stored on orders and customers; contact_events has no source column
    "event_type": ("events",),
    "statuses": ("orders",),
    "allow_negative_orders": ("orders",),
}


@dataclass(frozen=True)
class ColumnMapping:
    """How a file's columns map to warehouse columns, and how to read the file (see docs/mapping.md)."""

    kind: str
    columns: dict[str, str]
    grain: str = "lines"
    date_format: str | None = None
    delimiter: str | None = None
    decimal: str = "."
    encoding: str | None = None
    source: str | None = None
    event_type: str | None = None
    statuses: dict[str, str] = field(default_factory=dict)
    allow_negative_orders: bool = False
    path: str | None = None
    lines: dict[tuple[str, ...], int] = field(default_factory=dict, compare=False)

    def where(self, *key: str) -> str:
        """``file:line`` of a key (the file alone when unknown), for messages."""
        line = self.lines.get(tuple(key)) or self.lines.get(key[:1])
        return f"{self.path}:{line}" if self.path and line else str(self.path or "the mapping")


class _Issues:
    def __init__(self, file: str, lines: dict[tuple[str, ...], int]) -> None:
        self.file, self.lines, self.items = file, lines, []  # type: ignore[var-annotated]

    def add(self, key: tuple[str, ...], problem: str, fix: str) -> None:
        line = self.lines.get(key) or (self.lines.get(key[:1]) if key else None) or self.lines.get(())
        where = f"{self.file}:{line}" if line else self.file
        self.items.append((where, problem, fix))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        text = "\n".join(f"  {where}: {problem}" for where, problem, _ in self.items)
        fix = self.items[0][2]
        raise ConfigError(
            f"invalid mapping file {self.file}:\n{text}", fix=f"{fix} (every key is described in {DOC})"
        )


def load_mapping(path: Path | str) -> ColumnMapping:
    """Parse and validate a mapping YAML file.

    Raises:
        ConfigError: the file is missing, not YAML, or has unknown keys, wrong values or missing required
            columns; the message lists every ``file:line: problem``.
    """
    path = Path(path)
    file = str(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"mapping file {path} {what}",
            fix=f"pass --mapping with the path of a YAML mapping file (see {DOC})",
        )
    try:
        doc = read_yaml(
            path,
            what="mapping file",
            fix="fix the YAML syntax at that line: indentation, and quotes around values containing ': ', '#' "
            f"or '%' (see the examples in {DOC})",
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError:
        raise ConfigError(
            f"mapping file {path} is not UTF-8 text", fix=f"save it as a UTF-8 YAML file (see {DOC})"
        ) from None
    data, lines = doc.data, doc.lines
    issues = _Issues(file, lines)
    if not isinstance(data, dict):
        issues.add((), "the mapping must be a YAML mapping with a 'columns:' section",
                   "write e.g. 'columns: {order_id: OrderID, customer_id: CustomerID, ordered_at: Date, amount: Total}'")  # fmt: skip
        issues.raise_if_any()
    assert isinstance(data, dict)
    for dup in doc.duplicates:
        issues.items.append((dup.where, dup.message, dup.fix))
    kind = _check_keys(data, issues)
    columns = _check_columns(data, kind, issues)
    options = _read_options(data, issues)
    issues.raise_if_any()
    return ColumnMapping(
        kind=kind,
        columns={str(k): str(v) for k, v in columns.items()},
        **options,
        path=file,
        lines=lines,
    )


def _check_keys(data: dict[Any, Any], issues: _Issues) -> str:
    """Unknown keys, the kind, and keys that do not apply to it; returns the kind (orders when invalid)."""
    for key in sorted(set(map(str, data)) - set(KEYS)):
        close = [k for k in KEYS if k.startswith(key[:3])]
        issues.add((key,), f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                   f"use only these keys: {', '.join(KEYS)}")  # fmt: skip

    kind = data.get("kind") or "orders"
    if kind not in KINDS:
        issues.add(
            ("kind",),
            f"kind {kind!r} is not one of {', '.join(KINDS)}",
            "set kind: orders, events or customers",
        )
        kind = "orders"
    for key in data:
        if str(key) in KEYS and kind not in KEYS[str(key)]:
            issues.add((str(key),), f"{key!r} does not apply to kind {kind}",
                       f"remove it, or set the kind it is for ({', '.join(KEYS[str(key)])})")  # fmt: skip

    return str(kind)


def _check_columns(data: dict[Any, Any], kind: str, issues: _Issues) -> dict[Any, Any]:
    """The ``columns:`` section: known keys, names of the file's columns, every required one mapped."""
    columns = data.get("columns")
    if not isinstance(columns, dict):
        issues.add(("columns",), "the mapping needs a 'columns:' section mapping warehouse columns to your file's",
                   "write e.g. 'columns: {order_id: OrderID, customer_id: CustomerID, ordered_at: Date, amount: Total}'")  # fmt: skip
        columns = {}
    allowed = set(REQUIRED[kind]) | set(OPTIONAL[kind])
    for key, value in columns.items():
        if str(key) not in allowed:
            issues.add(("columns", str(key)), f"unknown column key {key!r} for kind {kind}",
                       f"map only these warehouse columns: {', '.join(sorted(allowed))}")  # fmt: skip
        elif not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
            issues.add(("columns", str(key)), f"columns.{key} must name a column of the file, got {value!r}",
                       "give each mapped key the column name as a string, or remove the key")  # fmt: skip
    mapped = {str(k) for k in columns}
    missing = [k for k in REQUIRED[kind] if k not in mapped]
    if kind == "orders" and "amount" not in mapped and not {"quantity", "unit_price"} <= mapped:
        missing.append("amount (or quantity + unit_price)")
    if kind == "orders" and "amount" in mapped and ({"quantity", "unit_price"} & mapped):
        issues.add(("columns",), "the mapping maps both amount and quantity/unit_price",
                   "map either amount, or quantity and unit_price (amount = quantity × unit_price)")  # fmt: skip
    if missing and isinstance(data.get("columns"), dict):
        issues.add(("columns",), f"required columns for kind {kind} are not mapped: {', '.join(missing)}",
                   "add them under 'columns:' as '<warehouse column>: <column in your file>'")  # fmt: skip

    return columns


def _text_value(data: dict[Any, Any], issues: _Issues, key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool) or not str(value).strip():
        issues.add((key,), f"{key} must be a text value, got {value!r}", f"write e.g. {key}: {_EXAMPLE[key]}")
        return None
    return str(value)


def _read_options(data: dict[Any, Any], issues: _Issues) -> dict[str, Any]:
    """How to read the file (grain, formats, encoding, statuses …), each checked."""
    grain = _text_value(data, issues, "grain") or "lines"
    if grain not in GRAINS:
        issues.add(("grain",), f"grain {grain!r} is not one of {', '.join(GRAINS)}",
                   "grain: lines (several rows of one order are summed) or grain: orders (one row per order)")  # fmt: skip
    date_format = _text_value(data, issues, "date_format")
    if date_format is not None and "%" not in date_format:
        issues.add(("date_format",), f"date_format {date_format!r} has no % directive",
                   "write a strptime format in quotes, e.g. date_format: '%d/%m/%Y %H:%M'")  # fmt: skip
    delimiter = data.get("delimiter")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        issues.add(("delimiter",), f"delimiter must be one character, got {delimiter!r}",
                   "write e.g. delimiter: ';' (a tab is delimiter: \"\\t\")")  # fmt: skip
        delimiter = None
    decimal = data.get("decimal", ".")
    if decimal not in (".", ","):
        issues.add(
            ("decimal",), f"decimal must be '.' or ',', got {decimal!r}", "write decimal: ',' for 24,77"
        )
        decimal = "."
    if decimal == "," and delimiter == ",":
        issues.add(("decimal",), "decimal ',' with delimiter ',' cannot be told apart",
                   "files with decimal commas are separated by ';': set delimiter: ';'")  # fmt: skip
    encoding = _text_value(data, issues, "encoding")
    if encoding is not None:
        if encoding.strip().lower() not in ENCODINGS:
            issues.add(("encoding",), f"encoding {encoding!r} is not supported",
                       "use utf-8, utf-16 or latin-1 (or re-save the file as UTF-8)")  # fmt: skip
        encoding = ENCODINGS.get(encoding.strip().lower())
    statuses = data.get("statuses") or {}
    if not isinstance(statuses, dict):
        issues.add(("statuses",), "statuses must map values of your file to known statuses",
                   "write e.g. statuses: {'In Transit': shipped, Storniert: cancelled}")  # fmt: skip
        statuses = {}
    for raw, word in statuses.items():
        if not isinstance(word, str) or not word.strip():
            issues.add(("statuses", str(raw)), f"statuses.{raw} must be a status word, got {word!r}",
                       "map each value to a counted or excluded status, e.g. shipped or cancelled")  # fmt: skip
    allow_negative = data.get("allow_negative_orders", False)
    if not isinstance(allow_negative, bool):
        issues.add(("allow_negative_orders",), f"allow_negative_orders must be true or false, got {allow_negative!r}",
                   "write allow_negative_orders: true")  # fmt: skip
        allow_negative = False
    return {
        "grain": grain,
        "date_format": date_format,
        "delimiter": delimiter,
        "decimal": decimal,
        "encoding": encoding,
        "source": _text_value(data, issues, "source"),
        "event_type": _text_value(data, issues, "event_type"),
        "statuses": {str(k).strip(): str(v).strip() for k, v in statuses.items()},
        "allow_negative_orders": allow_negative,
    }


_EXAMPLE: dict[str, Any] = {
    "grain": "orders",
    "date_format": "'%d/%m/%Y %H:%M'",
    "encoding": "utf-16",
    "source": "shop-export",
    "event_type": "ticket",
}
