"""Load transaction files into the warehouse: clean, check, aggregate order lines to orders, de-duplicate.

Formats (``fmt``):

* ``online-retail`` — UCI Online Retail (``.csv`` or ``.xlsx``; columns InvoiceNo, StockCode, Description,
  Quantity, InvoiceDate, UnitPrice, CustomerID, Country; the Online Retail II names Invoice, Price and
  ``Customer ID`` are accepted too). Rows are dropped, first matching rule wins: no CustomerID, cancellation
  (InvoiceNo starts with ``C``), zero or negative quantity, zero or negative price. amount = Quantity ×
  UnitPrice, summed per InvoiceNo (one order per invoice). ``17850.0`` becomes ``17850``. Country goes to the
  order and to the customer.
* ``cdnow`` — the CDNOW master file: whitespace-separated ``customer_id YYYYMMDD quantity amount``, with or
  without a header line; each line is one order. Its id is ``cdnow-<customer>-<YYYYMMDD>-<n>`` where ``n``
  counts that customer's orders on that day in file order, so ids do not depend on the header or on line
  numbers and re-ingesting the file (or a longer copy of it) finds the same orders.
* ``csv`` / ``parquet`` — any file with a column mapping (``--mapping FILE``, YAML)::

      kind: orders              # orders (default) | events | customers
      columns:                  # warehouse column: column in your file
        order_id: InvoiceNo     # orders: order_id, customer_id, ordered_at and amount are required;
        customer_id: CustomerID #   amount may instead be quantity + unit_price (amount = their product)
        ordered_at: InvoiceDate # optional: status, coupon_code, country, city, category (stored on the order)
        amount: Total           #   and email, first_name, country, city, unsubscribed (stored on the customer)
      date_format: "%d/%m/%Y %H:%M"   # optional strptime format; default ISO 8601, then M/D/YYYY [H:MM[:SS]]
      delimiter: ";"                  # optional, csv only (default: detected)
      encoding: latin-1               # optional, csv only (default: UTF-8, falling back to Latin-1)
      source: shop-export             # optional label stored in orders.source / customers.source

  Several lines with the same order id are order lines: they are summed into one order (the last non-empty
  status, coupon, country, city and category win). ``kind: events`` loads ``contact_events`` (e.g. support
  tickets, for the ``contact_bands`` scheme) with columns customer_id, occurred_at and optional event_id,
  event_type (or a constant ``event_type:`` key); without an event_id the id is derived like CDNOW's.
  ``kind: customers`` loads customer attributes only (customer_id, email, first_name, country, city,
  unsubscribed, created_at).

Re-ingesting: orders and events are de-duplicated by id. An id already in the warehouse with identical values is
left alone; with different values (e.g. a status changed to Returned) the warehouse row is replaced by the
file's — the newest ingest wins. Customers are upserted: values present in the file replace stored ones,
missing values never erase stored ones, and ``unsubscribed`` is sticky (an ingest never resubscribes anyone).

Every ingest is one transaction: the file is read and checked into staging tables first (DuckDB reads the file
itself; for PostgreSQL the staged rows are streamed with ``COPY``), then merged. Any problem raises
:class:`InputError` / :class:`ConfigError` naming the file, column, example lines and the fix, and nothing is
written.
"""

from __future__ import annotations

import codecs
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import yaml
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from activation.dialect import is_duckdb, is_postgres
from activation.errors import ConfigError, InputError
from activation.settings import Settings

FORMATS = ("online-retail", "cdnow", "csv", "parquet")
KINDS = ("orders", "events", "customers")

_REQUIRED = {
    "orders": ("order_id", "customer_id", "ordered_at"),
    "events": ("customer_id", "occurred_at"),
    "customers": ("customer_id",),
}
_OPTIONAL = {
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
_TIMESTAMPS = {"ordered_at", "occurred_at", "created_at"}
_NUMBERS = {"amount", "quantity", "unit_price"}
_BOOLEANS = {"unsubscribed"}
_CUSTOMER_ATTRS = ("email", "first_name", "country", "city", "unsubscribed")
_ORDER_ATTRS = ("status", "coupon_code", "country", "city", "category")
_MAPPING_KEYS = {"kind", "columns", "date_format", "delimiter", "encoding", "source", "event_type"}
_DEFAULT_DATE_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y", "%Y%m%d")
_EXAMPLES = 5
_MUST_HAVE = {"order_id", "event_id", "amount", "quantity", "unit_price"}

_ONLINE_RETAIL_COLUMNS = {
    "order_id": ("InvoiceNo", "Invoice"),
    "customer_id": ("CustomerID", "Customer ID"),
    "ordered_at": ("InvoiceDate",),
    "quantity": ("Quantity",),
    "unit_price": ("UnitPrice", "Price"),
    "country": ("Country",),
}


@dataclass(frozen=True)
class Mapping:
    """How a file's columns map to warehouse columns (see the module docstring for the YAML form)."""

    kind: str
    columns: dict[str, str]
    date_format: str | None = None
    delimiter: str | None = None
    encoding: str | None = None
    source: str | None = None
    event_type: str | None = None


@dataclass
class IngestReport:
    """What one ingest read, dropped, kept and wrote."""

    path: Path
    fmt: str
    kind: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rows_kept: int = 0
    orders: int = 0
    orders_inserted: int = 0
    orders_updated: int = 0
    customers: int = 0
    customers_inserted: int = 0
    customers_updated: int = 0
    events: int = 0
    events_inserted: int = 0
    events_updated: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    seconds: float = 0.0

    @property
    def orders_unchanged(self) -> int:
        return self.orders - self.orders_inserted - self.orders_updated

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) pairs of the quality report, in display order."""
        out = [
            ("file", str(self.path)),
            ("format", f"{self.fmt} ({self.kind})"),
            ("rows read", f"{self.rows_read:,}"),
        ]
        out += [(f"dropped: {rule}", f"{n:,}") for rule, n in self.dropped.items()]
        out.append(("rows kept", f"{self.rows_kept:,}"))
        if self.kind == "orders":
            out.append(
                (
                    "orders",
                    f"{self.orders:,} ({self.orders_inserted:,} new, {self.orders_updated:,} updated, "
                    f"{self.orders_unchanged:,} unchanged)",
                )
            )
        if self.kind == "events":
            out.append(
                ("events", f"{self.events:,} ({self.events_inserted:,} new, {self.events_updated:,} updated)")
            )
        out.append(
            (
                "customers",
                f"{self.customers:,} ({self.customers_inserted:,} new, {self.customers_updated:,} updated)",
            )
        )
        if self.first_at is not None and self.last_at is not None:
            out.append(("date range", f"{self.first_at:%Y-%m-%d} .. {self.last_at:%Y-%m-%d}"))
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        out.append(("time", f"{self.seconds:.2f} s ({rate:,.0f} rows/s)"))
        return out


def load_mapping(path: Path | str) -> Mapping:
    """Parse and validate a mapping YAML file.

    Raises:
        ConfigError: the file is missing, not YAML, or has unknown keys / missing required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"mapping file {path} does not exist", fix="pass --mapping with the path of a YAML mapping file"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            f"mapping file {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}",
            fix="fix the YAML syntax (see the mapping example in the README)",
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise ConfigError(
            f"mapping file {path} must be a YAML mapping with a 'columns:' section",
            fix="write e.g. 'columns: {order_id: OrderID, customer_id: CustomerID, ordered_at: Date, amount: Total}'",
        )
    unknown = sorted(set(data) - _MAPPING_KEYS)
    if unknown:
        raise ConfigError(
            f"mapping file {path} has unknown keys: {', '.join(map(str, unknown))}",
            fix=f"use only {', '.join(sorted(_MAPPING_KEYS))}",
        )
    kind = str(data.get("kind") or "orders")
    if kind not in KINDS:
        raise ConfigError(
            f"mapping file {path}: kind {kind!r} is not one of {', '.join(KINDS)}",
            fix="set kind: orders, events or customers",
        )
    columns = {str(k): v for k, v in data["columns"].items()}
    allowed = set(_REQUIRED[kind]) | set(_OPTIONAL[kind])
    unknown_cols = sorted(set(columns) - allowed)
    if unknown_cols:
        raise ConfigError(
            f"mapping file {path}: unknown column keys for kind {kind}: {', '.join(unknown_cols)}",
            fix=f"map only these warehouse columns: {', '.join(sorted(allowed))}",
        )
    bad = [k for k, v in columns.items() if not isinstance(v, str | int) or str(v).strip() == ""]
    if bad:
        raise ConfigError(
            f"mapping file {path}: columns {', '.join(bad)} must name a column of the file",
            fix="give each mapped key the column name as a string, or remove the key",
        )
    missing = [k for k in _REQUIRED[kind] if k not in columns]
    if kind == "orders" and "amount" not in columns and not {"quantity", "unit_price"} <= set(columns):
        missing.append("amount (or quantity + unit_price)")
    if kind == "orders" and "amount" in columns and ({"quantity", "unit_price"} & set(columns)):
        raise ConfigError(
            f"mapping file {path} maps both amount and quantity/unit_price",
            fix="map either amount, or quantity and unit_price (amount = quantity × unit_price)",
        )
    if missing:
        raise ConfigError(
            f"mapping file {path} does not map required columns for kind {kind}: {', '.join(missing)}",
            fix="add them under 'columns:' as '<warehouse column>: <column in your file>'",
        )
    delimiter = data.get("delimiter")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ConfigError(f"mapping file {path}: delimiter must be one character", fix="e.g. delimiter: ';'")
    return Mapping(
        kind=kind,
        columns={k: str(v) for k, v in columns.items()},
        date_format=str(data["date_format"]) if data.get("date_format") else None,
        delimiter=delimiter,
        encoding=str(data["encoding"]) if data.get("encoding") else None,
        source=str(data["source"]) if data.get("source") else None,
        event_type=str(data["event_type"]) if data.get("event_type") else None,
    )


def ingest_file(
    engine: Engine, settings: Settings, path: Path | str, fmt: str, mapping_path: Path | str | None = None
) -> IngestReport:
    """Load ``path`` (``fmt``: online-retail, cdnow, csv, parquet) into the warehouse atomically.

    Raises:
        ConfigError: wrong format, or a missing / malformed mapping.
        InputError: the file is missing, empty, unreadable or has bad values; nothing is written.
    """
    started = time.perf_counter()
    path = Path(path)
    fmt = (fmt or "").strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r} for {path}", fix=f"use one of: {', '.join(FORMATS)}")
    if not path.is_file():
        raise InputError(f"input file {path} does not exist", fix="check the path")
    if path.stat().st_size == 0:
        raise InputError(f"input file {path} is empty", fix="export the data again; the file has no bytes")
    if fmt in ("csv", "parquet"):
        if mapping_path is None:
            raise ConfigError(
                f"--format {fmt} needs a column mapping for {path}",
                fix="pass --mapping FILE.yaml (see the mapping example in the README)",
            )
        mapping = load_mapping(mapping_path)
        if mapping.delimiter and fmt == "parquet":
            raise ConfigError(
                f"mapping file {mapping_path}: delimiter applies to csv only", fix="remove the delimiter key"
            )
    elif mapping_path is not None:
        raise ConfigError(
            f"--mapping is only used with --format csv or parquet, not {fmt}",
            fix=f"drop --mapping, the {fmt} columns are fixed",
        )
    else:
        mapping = Mapping(kind="orders", columns={})
    report = IngestReport(path=path, fmt=fmt, kind=mapping.kind)
    source = mapping.source or fmt
    if is_duckdb(engine):
        with engine.begin() as conn:
            con = conn.connection.driver_connection
            # a failure rolls the transaction back, and with it the temp tables created in it
            _stage(con, path, fmt, mapping, source, report)
            _merge(conn, report)
            _drop_temp(con)
    else:
        con = duckdb.connect()
        try:
            _stage(con, path, fmt, mapping, source, report)
            with engine.begin() as conn, tempfile.TemporaryDirectory(prefix="rfm-ingest-") as tmp:
                if is_postgres(conn):
                    # one ingest at a time: two concurrent loads of one file would both see its orders as new
                    conn.execute(
                        text("LOCK TABLE orders, customers, contact_events IN SHARE ROW EXCLUSIVE MODE")
                    )
                _push_to_remote(con, conn, Path(tmp))
                _merge(conn, report)
                _drop_remote_temp(conn)
        finally:
            con.close()
    report.seconds = time.perf_counter() - started
    return report


# --- reading ---------------------------------------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _read_error(path: Path, fmt: str, exc: Exception) -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(
        f"cannot read {path} as {fmt}: {first}",
        fix=f"check that the file really is {fmt} (or pass the right --format: {', '.join(FORMATS)})",
    )


def _load_raw(con: Any, path: Path, fmt: str, mapping: Mapping) -> dict[str, str]:
    """Create ``_ingest_raw`` (columns of the file + ``_line``) and return its column types."""
    p = _lit(str(path))
    try:
        if fmt == "parquet":
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW _ingest_raw_src AS SELECT * FROM read_parquet({p}, file_row_number=true)"
            )
            con.execute(
                "CREATE OR REPLACE TEMP VIEW _ingest_raw AS SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS _line FROM _ingest_raw_src"
            )
        elif fmt == "cdnow":
            con.register("_ingest_arrow", _read_cdnow(path))
            con.execute("CREATE OR REPLACE TEMP TABLE _ingest_raw AS SELECT * FROM _ingest_arrow")
            con.unregister("_ingest_arrow")
        elif fmt == "online-retail" and path.suffix.lower() == ".xls":
            raise InputError(
                f"{path} is an old-style .xls workbook, which cannot be read",
                fix="open it and save it as .xlsx or .csv, then ingest that file",
            )
        elif fmt == "online-retail" and path.suffix.lower() in (".xlsx", ".xlsm"):
            con.register("_ingest_arrow", _read_xlsx(path))
            con.execute("CREATE OR REPLACE TEMP TABLE _ingest_raw AS SELECT * FROM _ingest_arrow")
            con.unregister("_ingest_arrow")
        else:
            opts = "all_varchar=true, header=true, null_padding=true"
            if mapping.delimiter:
                opts += f", delim={_lit(mapping.delimiter)}"
            read = f"CREATE OR REPLACE TEMP TABLE _ingest_raw_src AS SELECT * FROM read_csv({p}, {opts}"
            # spreadsheet exports (e.g. the UCI Online Retail csv) are often Latin-1, not UTF-8
            encoding = mapping.encoding or ("utf-8" if _is_utf8(path) else "latin-1")
            con.execute(f"{read}, encoding={_lit(encoding)})")
            # insertion order is preserved, so rowids follow the data lines (the header is line 1); inside a
            # transaction they start at a large offset, hence the subtraction
            first = con.execute("SELECT coalesce(min(rowid), 0) FROM _ingest_raw_src").fetchone()[0]
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW _ingest_raw AS SELECT *, rowid - {first} + 2 AS _line FROM _ingest_raw_src"
            )
    except (duckdb.Error, OSError, ValueError) as exc:
        raise _read_error(path, fmt, exc) from exc
    return {row[0]: row[1] for row in con.execute("DESCRIBE _ingest_raw").fetchall()}


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as fh:
        try:
            while chunk := fh.read(1 << 22):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _read_cdnow(path: Path) -> pa.Table:
    cols: list[list[str]] = [[], [], [], []]
    lines: list[int] = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            parts = raw.split()
            if not parts:
                continue
            if not lines and not cols[0] and not all(re.fullmatch(r"[-+0-9.]+", x) for x in parts):
                continue  # a header line
            if len(parts) != 4:
                raise InputError(
                    f"{path} line {lineno}: expected 4 whitespace-separated fields "
                    f"(customer_id YYYYMMDD quantity amount), found {len(parts)}: {raw.strip()[:80]!r}",
                    fix="check that this is the CDNOW master file, or use --format csv with a mapping",
                )
            for i in range(4):
                cols[i].append(parts[i])
            lines.append(lineno)
    if not lines:
        raise InputError(
            f"input file {path} has no data lines", fix="export the data again; only a header was found"
        )
    names = ["customer_id", "date", "quantity", "amount"]
    arrays = {n: pa.array(c, pa.string()) for n, c in zip(names, cols, strict=True)}
    arrays["_line"] = pa.array(lines, pa.int64())
    return pa.table(arrays)


def _read_xlsx(path: Path) -> pa.Table:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many unrelated types for a bad file
        raise _read_error(path, "xlsx", exc) from exc
    try:
        rows = wb.worksheets[0].iter_rows(values_only=True)
        header = next(rows, None)
        if header is None:
            raise InputError(f"input file {path} is empty (no header row)", fix="export the sheet again")
        names = [str(h).strip() if h is not None else f"column{i + 1}" for i, h in enumerate(header)]
        cols: list[list[str | None]] = [[] for _ in names]
        lines: list[int] = []
        for lineno, row in enumerate(rows, start=2):
            if row is None or all(v is None for v in row):
                continue
            for i in range(len(names)):
                v = row[i] if i < len(row) else None
                cols[i].append(_cell_text(v))
            lines.append(lineno)
    finally:
        wb.close()
    arrays = {n: pa.array(c, pa.string()) for n, c in zip(names, cols, strict=True)}
    arrays["_line"] = pa.array(lines, pa.int64())
    return pa.table(arrays)


def _cell_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# --- staging ---------------------------------------------------------------------------------------------


def _resolve_columns(path: Path, fmt: str, mapping: Mapping, available: dict[str, str]) -> dict[str, str]:
    """target -> column of the file; raises when a named column is not in the file."""
    names = [c for c in available if c != "_line"]
    if fmt == "online-retail":
        out, missing = {}, []
        for target, options in _ONLINE_RETAIL_COLUMNS.items():
            found = next((o for o in options if o in available), None)
            if found is None:
                missing.append(options[0])
            else:
                out[target] = found
        if missing:
            raise InputError(
                f"{path} is missing Online Retail columns: {', '.join(missing)} (found: {', '.join(names)})",
                fix="use the UCI Online Retail export (InvoiceNo, StockCode, Description, Quantity, InvoiceDate, "
                "UnitPrice, CustomerID, Country) or --format csv with a mapping",
            )
        return out
    if fmt == "cdnow":
        return {
            "customer_id": "customer_id",
            "ordered_at": "date",
            "quantity": "quantity",
            "amount": "amount",
        }
    missing = [f"{t}: {s}" for t, s in mapping.columns.items() if s not in available]
    if missing:
        lower = {n.lower().strip(): n for n in names}
        hints = [
            f"{s!r} → {lower[s.lower().strip()]!r}"
            for s in (m.split(": ", 1)[1] for m in missing)
            if s.lower().strip() in lower
        ]
        raise InputError(
            f"{path} has no column(s) named in the mapping: {', '.join(missing)} (the file has: {', '.join(names)})",
            fix="fix the names under 'columns:' in the mapping file"
            + (f" (did you mean {', '.join(hints)}?)" if hints else ""),
        )
    return dict(mapping.columns)


def _is_text(ctype: str) -> bool:
    return ctype.upper() in ("VARCHAR", "TEXT", "STRING")


def _text(col: str, ctype: str = "VARCHAR") -> str:
    if _is_text(ctype):
        return f"NULLIF(trim({_q(col)}), '')"
    return f"CAST({_q(col)} AS VARCHAR)"


def _present(col: str, ctype: str) -> str:
    return f"{_text(col, ctype)} IS NOT NULL" if _is_text(ctype) else f"{_q(col)} IS NOT NULL"


def _id_expr(col: str, ctype: str) -> str:
    # spreadsheets turn numeric ids into floats: 17850.0 is customer 17850
    t = ctype.upper()
    if t in ("FLOAT", "DOUBLE", "REAL") or t.startswith("DECIMAL"):
        c = _q(col)
        return f"CASE WHEN {c} = trunc({c}) THEN CAST(CAST({c} AS BIGINT) AS VARCHAR) ELSE CAST({c} AS VARCHAR) END"
    if not _is_text(ctype):
        return _text(col, ctype)
    x = _text(col)
    return f"CASE WHEN contains({x}, '.') THEN regexp_replace({x}, '^(-?[0-9]+)\\.0+$', '\\1') ELSE {x} END"


def _ts_expr(col: str, ctype: str, date_format: str | None) -> str:
    t = ctype.upper()
    if t.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"CAST(timezone('UTC', {_q(col)}) AS TIMESTAMP)"
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"CAST({_q(col)} AS TIMESTAMP)"
    s = _text(col, ctype)
    if date_format:
        return f"CAST(try_strptime({s}, {_lit(date_format)}) AS TIMESTAMP)"
    fmts = "[" + ", ".join(_lit(f) for f in _DEFAULT_DATE_FORMATS) + "]"
    # a time with a UTC offset ("2024-01-01 10:00:00+02:00", "…Z") is converted to UTC, as timezone-aware
    # parquet columns are; without an offset the time is taken as it is written
    with_offset = f"regexp_matches({s}, {_lit(_OFFSET_RE)})"
    return (
        f"CASE WHEN {with_offset} THEN CAST(timezone('UTC', TRY_CAST({s} AS TIMESTAMPTZ)) AS TIMESTAMP) "
        f"ELSE COALESCE(TRY_CAST({s} AS TIMESTAMP), CAST(try_strptime({s}, {fmts}) AS TIMESTAMP)) END"
    )


_OFFSET_RE = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"


def _num_expr(col: str, ctype: str) -> str:
    if ctype.upper() in ("VARCHAR", "TEXT", "STRING"):
        return f"TRY_CAST({_text(col)} AS DOUBLE)"
    return f"TRY_CAST({_q(col)} AS DOUBLE)"


def _bool_expr(col: str, ctype: str) -> str:
    if ctype.upper() == "BOOLEAN":
        return _q(col)
    s = f"lower({_text(col, ctype)})"
    return (
        f"CASE WHEN {s} IN ('true', 't', 'yes', 'y', '1', '1.0') THEN true "
        f"WHEN {s} IN ('false', 'f', 'no', 'n', '0', '0.0') THEN false END"
    )


def _typed_expr(target: str, col: str, ctype: str, mapping: Mapping, fmt: str) -> str:
    if target in ("order_id", "customer_id", "event_id"):
        if fmt == "cdnow" and target == "customer_id":
            s = _text(col)
            return f"COALESCE(CAST(TRY_CAST({s} AS BIGINT) AS VARCHAR), {s})"
        return _id_expr(col, ctype)
    if target in _TIMESTAMPS:
        return _ts_expr(col, ctype, "%Y%m%d" if fmt == "cdnow" else mapping.date_format)
    if target in _NUMBERS:
        return _num_expr(col, ctype)
    if target in _BOOLEANS:
        return _bool_expr(col, ctype)
    return _text(col, ctype)


def _check_values(
    con: Any, path: Path, cols: dict[str, str], exprs: dict[str, str], types: dict[str, str], mapping: Mapping
) -> None:
    """Unparseable dates, amounts, flags and empty required values → one InputError with example lines."""
    checks: list[tuple[str, str, str]] = []  # (message, condition, column)
    for target, col in cols.items():
        raw_present = _present(col, types[col])
        if target in _TIMESTAMPS or target in _NUMBERS or target in _BOOLEANS:
            what = (
                "date" if target in _TIMESTAMPS else ("number" if target in _NUMBERS else "true/false value")
            )
            checks.append(
                (
                    f"column {col!r} ({target}) has values that are not a {what}",
                    f"{raw_present} AND ({exprs[target]}) IS NULL",
                    col,
                )
            )
        # an empty customer id is a drop rule (guest checkouts), any other required value must be there
        if target in _MUST_HAVE or (target in _REQUIRED[mapping.kind] and target != "customer_id"):
            checks.append((f"column {col!r} ({target}) has empty values", f"NOT ({raw_present})", col))
        if target in _NUMBERS:
            checks.append(
                (
                    f"column {col!r} ({target}) has non-finite values",
                    f"isinf(({exprs[target]})) OR isnan(({exprs[target]}))",
                    col,
                )
            )
    if not checks:
        return
    counts = con.execute(
        "SELECT "
        + ", ".join(f"count(*) FILTER (WHERE {cond})" for _, cond, _ in checks)
        + " FROM _ingest_raw"
    ).fetchone()
    problems = []
    for (message, cond, col), n in zip(checks, counts, strict=True):
        if not n:
            continue
        rows = con.execute(
            f"SELECT _line, CAST({_q(col)} AS VARCHAR) FROM _ingest_raw WHERE {cond} ORDER BY _line LIMIT {_EXAMPLES}"
        ).fetchall()
        examples = "; ".join(f"line {line}: {val!r}" for line, val in rows)
        problems.append(f"{message} in {n:,} row(s), e.g. {examples}")
    if problems:
        fix = "correct or remove those rows"
        if any("date" in p for p in problems):
            fix += "; for other date layouts set date_format (strptime, e.g. '%d/%m/%Y %H:%M') in the mapping"
        raise InputError(f"{path}: " + " | ".join(problems), fix=fix)


def _drop_rules(fmt: str, exprs: dict[str, str], cols: dict[str, str]) -> list[tuple[str, str]]:
    """(rule label, condition) — the first matching rule drops a row."""
    rules = [
        (
            f"no {cols['customer_id']}" if fmt == "online-retail" else "no customer id",
            f"({exprs['customer_id']}) IS NULL",
        )
    ]
    if fmt == "online-retail":
        rules += [
            ("cancellation (InvoiceNo starts with C)", f"upper({exprs['order_id']}) LIKE 'C%'"),
            ("zero or negative quantity", f"({exprs['quantity']}) <= 0"),
            ("zero or negative price", f"({exprs['unit_price']}) <= 0"),
        ]
    return rules


def _stage(con: Any, path: Path, fmt: str, mapping: Mapping, source: str, report: IngestReport) -> None:
    """Read, check and clean the file into ``_stage_orders`` / ``_stage_customers`` / ``_stage_events``."""
    types = _load_raw(con, path, fmt, mapping)
    cols = _resolve_columns(path, fmt, mapping, types)
    exprs = {t: _typed_expr(t, c, types[c], mapping, fmt) for t, c in cols.items()}
    report.rows_read = con.execute("SELECT count(*) FROM _ingest_raw").fetchone()[0]
    if report.rows_read == 0:
        raise InputError(
            f"input file {path} has no data rows", fix="export the data again; only a header was found"
        )
    _check_values(con, path, cols, exprs, types, mapping)

    if mapping.kind == "orders":
        amount = exprs.get("amount") or f"({exprs['quantity']}) * ({exprs['unit_price']})"
        if fmt == "cdnow":
            c, d = exprs["customer_id"], exprs["ordered_at"]
            exprs["order_id"] = (
                f"'cdnow-' || ({c}) || '-' || strftime({d}, '%Y%m%d') || '-' || "
                f"CAST(row_number() OVER (PARTITION BY {c}, {d} ORDER BY _line) AS VARCHAR)"
            )
        exprs["amount"] = amount
    if mapping.kind == "events" and "event_type" not in exprs:
        exprs["event_type"] = _lit(mapping.event_type) if mapping.event_type else "CAST(NULL AS VARCHAR)"
    rules = _drop_rules(fmt, exprs, cols)
    reason = "CASE " + " ".join(f"WHEN {cond} THEN {_lit(label)}" for label, cond in rules) + " END"
    select = ", ".join(f"{e} AS {_q(t)}" for t, e in exprs.items() if t not in ("quantity", "unit_price"))
    when = {"orders": "ordered_at", "events": "occurred_at", "customers": "created_at"}[mapping.kind]
    span = f"min({when}), max({when})" if when in exprs else "NULL, NULL"
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW _ingest_all AS SELECT _line, {select}, {reason} AS _drop FROM _ingest_raw"
    )
    counts = {
        r[0]: r[1:]
        for r in con.execute(f"SELECT _drop, count(*), {span} FROM _ingest_all GROUP BY _drop").fetchall()
    }
    report.dropped = {label: int(counts[label][0]) if label in counts else 0 for label, _ in rules}
    report.rows_kept = int(counts[None][0]) if None in counts else 0
    if None in counts:
        report.first_at, report.last_at = counts[None][1], counts[None][2]
    if report.rows_kept == 0:
        raise InputError(
            f"{path}: every one of the {report.rows_read:,} rows was dropped ({_fmt_counts(report.dropped)})",
            fix="check the file and the --format; nothing was loaded",
        )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _ingest_typed AS SELECT * EXCLUDE (_drop) FROM _ingest_all WHERE _drop IS NULL"
    )
    present = set(exprs)
    if mapping.kind == "orders":
        _stage_orders(con, path, present, source)
        report.orders = con.execute("SELECT count(*) FROM _stage_orders").fetchone()[0]
    elif mapping.kind == "events":
        _stage_events(con, path, "event_id" in cols, source)
        report.events = con.execute("SELECT count(*) FROM _stage_events").fetchone()[0]
    if mapping.kind != "events":
        _stage_customers(con, path, mapping.kind, present, source)
        report.customers = con.execute("SELECT count(*) FROM _stage_customers").fetchone()[0]


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in counts.items()) or "no rules"


def _last(col: str, present: set[str]) -> str:
    if col not in present:
        return f"CAST(NULL AS {'BOOLEAN' if col in _BOOLEANS else 'VARCHAR'}) AS {col}"
    return f"arg_max({col}, _line) FILTER (WHERE {col} IS NOT NULL) AS {col}"


def _stage_orders(con: Any, path: Path, present: set[str], source: str) -> None:
    lines_per_order = con.execute("SELECT count(*) - count(DISTINCT order_id) FROM _ingest_typed").fetchone()[
        0
    ]
    if lines_per_order == 0:  # one line per order: no aggregation, not even a copy (big files)
        attrs = ", ".join(c if c in present else f"CAST(NULL AS VARCHAR) AS {c}" for c in _ORDER_ATTRS)
        con.execute(
            f"""CREATE OR REPLACE TEMP VIEW _stage_orders AS
            SELECT order_id, customer_id, ordered_at, round(amount, 4) AS amount, {attrs}, {_lit(source)} AS source
            FROM _ingest_typed"""
        )
        return
    attrs = ", ".join(_last(c, present) for c in _ORDER_ATTRS)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _stage_orders AS
        SELECT order_id, min(customer_id) AS customer_id, min(ordered_at) AS ordered_at,
               round(sum(amount), 4) AS amount, {attrs}, {_lit(source)} AS source,
               max(customer_id) AS _customer_max, min(_line) AS _line
        FROM _ingest_typed GROUP BY order_id"""
    )
    conflicts = con.execute(
        f"SELECT order_id, customer_id, _customer_max, _line FROM _stage_orders WHERE customer_id <> _customer_max "
        f"ORDER BY _line LIMIT {_EXAMPLES}"
    ).fetchall()
    if conflicts:
        n = con.execute("SELECT count(*) FROM _stage_orders WHERE customer_id <> _customer_max").fetchone()[0]
        examples = "; ".join(
            f"order {o!r} (from line {line}): customers {a!r} and {b!r}" for o, a, b, line in conflicts
        )
        raise InputError(
            f"{path}: {n:,} order id(s) belong to more than one customer, e.g. {examples}",
            fix="each order id must have a single customer id; fix the export or map a different order id column",
        )
    con.execute("ALTER TABLE _stage_orders DROP COLUMN _customer_max")
    con.execute("ALTER TABLE _stage_orders DROP COLUMN _line")


def _stage_events(con: Any, path: Path, has_id: bool, source: str) -> None:
    if has_id:
        event_id = "event_id"
    else:
        event_id = (
            "customer_id || '-' || coalesce(event_type, '') || '-' || strftime(occurred_at, '%Y%m%d%H%M%S') || '-' || "
            "CAST(row_number() OVER (PARTITION BY customer_id, event_type, occurred_at ORDER BY _line) AS VARCHAR)"
        )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _stage_events AS
        SELECT event_id, arg_max(customer_id, _line) AS customer_id, arg_max(event_type, _line) AS event_type,
               arg_max(occurred_at, _line) AS occurred_at
        FROM (SELECT {event_id} AS event_id, customer_id, event_type, occurred_at, _line FROM _ingest_typed)
        GROUP BY event_id"""
    )


def _stage_customers(con: Any, path: Path, kind: str, present: set[str], source: str) -> None:
    """One row per customer seen in the file: attributes from its last line in file order; a value empty
    there comes from the customer's last line that has one."""
    attrs = [c for c in _CUSTOMER_ATTRS if c in present]
    when = {"orders": "ordered_at", "events": "occurred_at", "customers": "created_at"}[kind]
    created = f"min({when})" if when in present else "CAST(NULL AS TIMESTAMP)"
    select = ", ".join(
        f"t.{c}" if c in present else f"CAST(NULL AS {'BOOLEAN' if c in _BOOLEANS else 'VARCHAR'}) AS {c}"
        for c in _CUSTOMER_ATTRS
    )
    # last line per customer, then a join: far cheaper than one arg_max per attribute on big files
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _stage_customers AS
        WITH last AS (
            SELECT customer_id, max(_line) AS _line, {created} AS created_at, count(*) AS _lines
            FROM _ingest_typed GROUP BY customer_id
        )
        SELECT l.customer_id, {select}, l.created_at, {_lit(source)} AS source, l._lines
        FROM last l JOIN _ingest_typed t ON t._line = l._line"""
    )
    gaps = " OR ".join(f"{c} IS NULL" for c in attrs)
    if (
        gaps
        and con.execute(f"SELECT count(*) FROM _stage_customers WHERE _lines > 1 AND ({gaps})").fetchone()[0]
    ):
        fill = ", ".join(_last(c, present) for c in attrs)
        sets = ", ".join(f"{c} = COALESCE(s.{c}, f.{c})" for c in attrs)
        con.execute(
            f"""UPDATE _stage_customers AS s SET {sets}
            FROM (SELECT customer_id, {fill} FROM _ingest_typed
                  WHERE customer_id IN (SELECT customer_id FROM _stage_customers WHERE _lines > 1 AND ({gaps}))
                  GROUP BY customer_id) f
            WHERE f.customer_id = s.customer_id"""
        )
    con.execute("ALTER TABLE _stage_customers DROP COLUMN _lines")


def _drop_temp(con: Any) -> None:
    """Drop this module's temp objects (the warehouse connection is pooled and reused)."""
    views = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE temporary AND (view_name LIKE '\\_ingest%' ESCAPE '\\' "
        "OR view_name LIKE '\\_stage%' ESCAPE '\\')"
    )
    for (name,) in views.fetchall():
        con.execute(f"DROP VIEW temp.{name}")
    tables = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE temporary AND (table_name LIKE '\\_ingest%' ESCAPE '\\' "
        "OR table_name LIKE '\\_stage%' ESCAPE '\\')"
    )
    for (name,) in tables.fetchall():
        con.execute(f"DROP TABLE temp.{name}")


# --- writing ---------------------------------------------------------------------------------------------

_STAGE_COLUMNS = {
    "_stage_orders": ("order_id", "customer_id", "ordered_at", "amount", *_ORDER_ATTRS, "source"),
    "_stage_customers": ("customer_id", *_CUSTOMER_ATTRS, "created_at", "source"),
    "_stage_events": ("event_id", "customer_id", "event_type", "occurred_at"),
}
_STAGE_DDL = {
    "order_id": "VARCHAR",
    "customer_id": "VARCHAR",
    "ordered_at": "TIMESTAMP",
    "amount": "DOUBLE PRECISION",
    "status": "VARCHAR",
    "coupon_code": "VARCHAR",
    "country": "VARCHAR",
    "city": "VARCHAR",
    "category": "VARCHAR",
    "source": "VARCHAR",
    "email": "VARCHAR",
    "first_name": "VARCHAR",
    "unsubscribed": "BOOLEAN",
    "created_at": "TIMESTAMP",
    "event_id": "VARCHAR",
    "event_type": "VARCHAR",
    "occurred_at": "TIMESTAMP",
}


def _staged(con: Any) -> list[str]:
    names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()}
    names |= {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()}
    return [t for t in _STAGE_COLUMNS if t in names]


def _push_to_remote(con: Any, conn: Connection, tmp: Path) -> None:
    """Stream the staged tables into temp tables of a non-DuckDB warehouse (PostgreSQL: COPY)."""
    for table in _staged(con):
        cols = _STAGE_COLUMNS[table]
        ddl = ", ".join(f"{c} {_STAGE_DDL[c]}" for c in cols)
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(text(f"CREATE TEMP TABLE {table} ({ddl})"))
        if is_postgres(conn):
            csv_path = tmp / f"{table}.csv"
            con.execute(
                f"COPY (SELECT {', '.join(cols)} FROM {table}) TO {_lit(str(csv_path))} (FORMAT csv, HEADER false)"
            )
            raw: Any = conn.connection.driver_connection
            with (
                raw.cursor() as cur,
                cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN (FORMAT csv)") as copy,
            ):
                with csv_path.open("rb") as fh:
                    while chunk := fh.read(1 << 20):
                        copy.write(chunk)
            csv_path.unlink()
        else:
            result = con.execute(f"SELECT {', '.join(cols)} FROM {table}")
            insert = text(
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"
            )
            while rows := result.fetchmany(10_000):
                conn.execute(insert, [dict(zip(cols, r, strict=True)) for r in rows])


def _drop_remote_temp(conn: Connection) -> None:
    for table in (*_STAGE_COLUMNS, "_ingest_changed"):
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


def _scalar(conn: Connection, sql: str) -> int:
    return int(conn.execute(text(sql)).scalar() or 0)


def _merge_keyed(
    conn: Connection, target: str, stage: str, key: str, cols: tuple[str, ...], compare: tuple[str, ...]
) -> tuple[int, int]:
    """Insert new ids, replace ids whose values changed; returns (inserted, updated)."""
    if _is_empty(conn, target):  # first load: nothing to compare with
        conn.execute(text(f"INSERT INTO {target} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {stage}"))
        return _scalar(conn, f"SELECT count(*) FROM {stage}"), 0
    differs = " OR ".join(f"s.{c} IS DISTINCT FROM t.{c}" for c in compare)
    conn.execute(text("DROP TABLE IF EXISTS _ingest_changed"))
    conn.execute(
        text(
            f"CREATE TEMP TABLE _ingest_changed AS SELECT DISTINCT s.{key} AS k FROM {stage} s "
            f"JOIN {target} t ON t.{key} = s.{key} WHERE {differs}"
        )
    )
    updated = _scalar(conn, "SELECT count(*) FROM _ingest_changed")
    if updated:
        conn.execute(text(f"DELETE FROM {target} WHERE {key} IN (SELECT k FROM _ingest_changed)"))
    before = _scalar(
        conn,
        f"SELECT count(*) FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.{key} = s.{key})",
    )
    if before:
        conn.execute(
            text(
                f"INSERT INTO {target} ({', '.join(cols)}) SELECT {', '.join('s.' + c for c in cols)} FROM {stage} s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.{key} = s.{key})"
            )
        )
    conn.execute(text("DROP TABLE IF EXISTS _ingest_changed"))
    return before - updated, updated


def _is_empty(conn: Connection, table: str) -> bool:
    return conn.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first() is None


def _merge_customers(conn: Connection) -> tuple[int, int]:
    """Upsert: file values replace stored ones, missing values keep them, unsubscribed stays true once set."""
    new = {
        "email": "COALESCE(s.email, c.email)",
        "first_name": "COALESCE(s.first_name, c.first_name)",
        "country": "COALESCE(s.country, c.country)",
        "city": "COALESCE(s.city, c.city)",
        "unsubscribed": "(c.unsubscribed OR COALESCE(s.unsubscribed, false))",
        "created_at": "LEAST(c.created_at, s.created_at)",
    }
    differs = " OR ".join(f"{expr} IS DISTINCT FROM c.{col}" for col, expr in new.items())
    updated = _scalar(
        conn,
        f"SELECT count(*) FROM customers c JOIN _stage_customers s ON s.customer_id = c.customer_id WHERE {differs}",
    )
    if updated:
        sets = ", ".join(f"{col} = {expr}" for col, expr in new.items())
        conn.execute(
            text(
                f"UPDATE customers AS c SET {sets} FROM _stage_customers s WHERE s.customer_id = c.customer_id AND ({differs})"
            )
        )
    inserted = _scalar(
        conn,
        "SELECT count(*) FROM _stage_customers s WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)",
    )
    if inserted:
        conn.execute(
            text(
                "INSERT INTO customers (customer_id, email, first_name, country, city, unsubscribed, created_at, source) "
                "SELECT s.customer_id, s.email, s.first_name, s.country, s.city, COALESCE(s.unsubscribed, false), "
                "s.created_at, s.source FROM _stage_customers s "
                "WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = s.customer_id)"
            )
        )
    return inserted, updated


def _merge(conn: Connection, report: IngestReport) -> None:
    if report.kind == "orders":
        cols = _STAGE_COLUMNS["_stage_orders"]
        report.orders_inserted, report.orders_updated = _merge_keyed(
            conn,
            "orders",
            "_stage_orders",
            "order_id",
            cols,
            tuple(c for c in cols if c not in ("order_id", "source")),
        )
    elif report.kind == "events":
        cols = _STAGE_COLUMNS["_stage_events"]
        report.events_inserted, report.events_updated = _merge_keyed(
            conn, "contact_events", "_stage_events", "event_id", cols, cols[1:]
        )
    if report.kind != "events":
        report.customers_inserted, report.customers_updated = _merge_customers(conn)
