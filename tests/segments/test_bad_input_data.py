"""The bad-input table for data: ``ingest`` (files and mappings) and ``segment`` (warehouse data that fails a
data check). Each row runs the real CLI as a user would and asserts exit status 2, a message naming the thing,
a ``fix:`` naming the remedy, and that nothing was written: the row counts of every table the commands write
and the files in the data folder and the inputs folder are the same before and after.

The warehouse is shared by every row (one DuckDB file prepared once): a row that wrote anything would show up
as changed counts in its own before/after comparison.
"""

from __future__ import annotations

import codecs
import gzip
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from activation.settings import Settings
from activation.warehouse import dispose_engines, get_engine
from segments.ingest import ingest_file
from tests.cli_helpers import run_cli

TABLES = ("orders", "customers", "contact_events", "rfm_snapshots", "snapshot_runs")
HEADER = "o,c,d,a\n"
MAP = "columns: {order_id: o, customer_id: c, ordered_at: d, amount: a}\n"
STATUS_MAP = "columns: {order_id: o, customer_id: c, ordered_at: d, amount: a, status: s}\n"
EVENTS_MAP = "kind: events\ncolumns: {customer_id: c, occurred_at: d}\n"


@dataclass
class World:
    root: Path
    inputs: Path
    data_dir: Path
    url: str
    env: dict[str, str]

    def write(self, name: str, content: str | bytes) -> str:
        path = self.inputs / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def mapping(self, name: str, content: str) -> str:
        return self.write(name, content)


def _user_table(conn: object, name: str, rows: list[tuple], amount_type: str = "DOUBLE") -> None:
    c: object = conn
    c.execute(  # type: ignore[attr-defined]
        text(
            f"CREATE TABLE {name} (id VARCHAR, cust VARCHAR, ts TIMESTAMP, total {amount_type}, state VARCHAR)"
        )
    )
    for r in rows:
        c.execute(  # type: ignore[attr-defined]
            text(f"INSERT INTO {name} VALUES (:a, :b, :c, :d, :e)"), dict(zip("abcde", r, strict=True))
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bad-input-data")
    inputs, data_dir = root / "inputs", root / "data"
    inputs.mkdir()
    url = f"duckdb:///{root / 'warehouse.duckdb'}"
    env = {
        "ACTIVATION_DATA_DIR": str(data_dir),
        "ACTIVATION_WAREHOUSE_URL": url,
        "ACTIVATION_COUPON_SECRET": "test-secret-not-for-production",
    }
    w = World(root, inputs, data_dir, url, env)
    settings = Settings(data_dir=data_dir, warehouse_url=url)
    good = root / "good.csv"
    good.write_text(HEADER + "g1,c1,2024-05-01,10\ng2,c2,2024-05-02,20\ng3,c1,2024-06-01,5\n")
    mapping = root / "good.yaml"
    mapping.write_text(MAP)
    engine = get_engine(settings)
    ingest_file(engine, settings, good, "csv", mapping)
    day = datetime(2024, 6, 1, 12)
    with engine.begin() as conn:
        _user_table(
            conn, "neg_orders", [("n1", "a", day, 10.0, "paid"), ("refund-7", "b", day, -120.5, "paid")]
        )
        _user_table(
            conn,
            "status_orders",
            [("s1", "a", day, 10.0, "paid"), ("pend-1", "b", day, 3.0, "Pending review")],
        )
        _user_table(
            conn,
            "future_orders",
            [("f1", "a", day, 10.0, "paid"), ("typo-2030", "b", datetime(2030, 1, 5), 3.0, None)],
        )
        _user_table(conn, "dup_orders", [("d1", "a", day, 10.0, None), ("d1", "b", day, 3.0, None)])
        _user_table(conn, "null_orders", [("x1", None, day, 10.0, None), ("x2", "b", day, 3.0, None)])
        _user_table(conn, "text_orders", [("t1", "a", day, "12.50", None)], amount_type="VARCHAR")
    dispose_engines()
    yield w
    dispose_engines()


def _state(w: World) -> tuple:
    engine = create_engine(w.url)  # not from the settings: some rows make them invalid on purpose
    with engine.connect() as conn:
        counts = tuple(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES)
        orders = conn.execute(text("SELECT * FROM orders ORDER BY order_id")).all()
    engine.dispose()
    files = sorted(
        str(p.relative_to(w.root))
        for base in (w.data_dir, w.inputs)
        if base.exists()
        for p in base.rglob("*")
    )
    return counts, orders, files


Row = Callable[[World], tuple[list[str], dict[str, str]]]


def ingest(data: str | bytes, mapping: str | None = MAP, name: str = "f.csv", fmt: str = "csv") -> Row:
    def build(w: World) -> tuple[list[str], dict[str, str]]:
        path = w.write(name, data)
        args = ["ingest", path, "--format", fmt]
        if mapping is not None:
            args += ["--mapping", w.mapping(name + ".yaml", mapping)]
        return args, {}

    return build


def with_mapping(mapping: str, data: str = HEADER + "1,c1,2024-01-01,5\n") -> Row:
    return ingest(data, mapping, name="m.csv")


def segment(table: str | None = None, *extra: str, **env: str) -> Row:
    def build(w: World) -> tuple[list[str], dict[str, str]]:
        settings_env = dict(env)
        if table:
            settings_env.update(
                ACTIVATION_ORDERS__TABLE=table,
                ACTIVATION_ORDERS__ORDER_ID="id",
                ACTIVATION_ORDERS__CUSTOMER_ID="cust",
                ACTIVATION_ORDERS__ORDERED_AT="ts",
                ACTIVATION_ORDERS__AMOUNT="total",
                ACTIVATION_ORDERS__STATUS="state",
            )
        return ["segment", "--as-of", "2024-06-30", "--scheme", "seed5", *extra], settings_env

    return build


def _zip_bytes() -> bytes:
    return b"PK\x03\x04" + b"\x14\x00\x00\x00\x08\x00" + os.urandom(200)


def _parquet_bytes(tmp: Path) -> bytes:
    pq.write_table(pa.table({"o": ["1"], "c": ["c1"], "d": ["2024-01-01"], "a": [5.0]}), tmp)
    return tmp.read_bytes()


UTF16_NO_BOM = (HEADER + "1,c1,2024-01-01,5\n").encode("utf-16-le")
UTF16 = codecs.BOM_UTF16_LE + UTF16_NO_BOM

CASES: dict[str, tuple[Row, list[str]]] = {
    # --- the mapping file: every problem as file:line, the fix pointing at docs/mapping.md ---------------------
    "mapping: misspelt key": (
        with_mapping(MAP + "colums: {}\n"),
        ["m.csv.yaml:2", "unknown key 'colums'", "docs/mapping.md"],
    ),
    "mapping: unknown column key": (
        with_mapping("columns: {order_id: o, customer_id: c, ordered_at: d, amount: a, price: a}\n"),
        ["m.csv.yaml:1", "unknown column key 'price'", "map only these warehouse columns"],
    ),
    "mapping: malformed yaml": (
        with_mapping("columns: {order_id: o\n  customer_id: [c\n"),
        ["not valid YAML", "m.csv.yaml:2", "docs/mapping.md"],
    ),
    "mapping: required column missing": (
        with_mapping("columns:\n  order_id: o\n  customer_id: c\n  amount: a\n"),
        ["m.csv.yaml:1", "required columns for kind orders are not mapped: ordered_at", "under 'columns:'"],
    ),
    "mapping: unknown kind": (
        with_mapping("kind: purchases\n" + MAP),
        ["m.csv.yaml:1", "kind 'purchases' is not one of orders, events, customers", "set kind:"],
    ),
    "mapping: long delimiter": (
        with_mapping(MAP + "delimiter: ';;'\n"),
        ["m.csv.yaml:2", "delimiter must be one character", "delimiter: ';'"],
    ),
    "mapping: bad decimal": (
        with_mapping(MAP + "decimal: x\n"),
        ["m.csv.yaml:2", "decimal must be '.' or ','", "decimal: ','"],
    ),
    "mapping: decimal comma with comma delimiter": (
        with_mapping(MAP + "delimiter: ','\ndecimal: ','\n"),
        ["m.csv.yaml:3", "cannot be told apart", "delimiter: ';'"],
    ),
    "mapping: unsupported encoding": (
        with_mapping(MAP + "encoding: cp1252\n"),
        ["m.csv.yaml:2", "encoding 'cp1252' is not supported", "utf-8, utf-16 or latin-1"],
    ),
    "mapping: unknown grain": (
        with_mapping(MAP + "grain: rows\n"),
        ["m.csv.yaml:2", "grain 'rows'", "grain: orders"],
    ),
    "mapping: date_format without directives": (
        with_mapping(MAP + "date_format: dd/mm/yyyy\n"),
        ["m.csv.yaml:2", "has no % directive", "'%d/%m/%Y %H:%M'"],
    ),
    "mapping: key of another kind": (
        with_mapping(MAP + "event_type: ticket\n"),
        ["m.csv.yaml:2", "'event_type' does not apply to kind orders", "set the kind it is for"],
    ),
    "mapping: statuses not a mapping": (
        with_mapping(STATUS_MAP + "statuses: [shipped]\n", HEADER.strip() + ",s\n1,c1,2024-01-01,5,paid\n"),
        ["m.csv.yaml:2", "statuses must map values of your file", "statuses: {'In Transit': shipped"],
    ),
    "mapping: status mapped to an unknown word": (
        with_mapping(
            STATUS_MAP + "statuses:\n  In Transit: sent\n", HEADER.strip() + ",s\n1,c1,2024-01-01,5,paid\n"
        ),
        ["m.csv.yaml:3", "statuses.In Transit maps to 'sent'", "ACTIVATION_COUNTED_STATUSES"],
    ),
    "mapping: allow_negative_orders not a flag": (
        with_mapping(MAP + "allow_negative_orders: yes please\n"),
        ["m.csv.yaml:2", "allow_negative_orders must be true or false", "allow_negative_orders: true"],
    ),
    "mapping: duplicate key": (
        with_mapping(MAP + "source: a\nsource: b\n"),
        ["m.csv.yaml:3", "duplicate key 'source'", "one entry"],
    ),
    "mapping: column named by a list": (
        with_mapping("columns: {order_id: [o], customer_id: c, ordered_at: d, amount: a}\n"),
        ["m.csv.yaml:1", "columns.order_id must name a column", "column name as a string"],
    ),
    "mapping: amount and quantity": (
        with_mapping("columns: {order_id: o, customer_id: c, ordered_at: d, amount: a, quantity: a}\n"),
        ["maps both amount and quantity/unit_price", "map either amount"],
    ),
    "mapping: a list instead of a mapping": (
        with_mapping("- order_id\n- customer_id\n"),
        ["must be a YAML mapping", "columns: {order_id"],
    ),
    "mapping: file missing": (
        lambda w: (
            [
                "ingest",
                w.write("x.csv", HEADER + "1,c1,2024-01-01,5\n"),
                "--format",
                "csv",
                "--mapping",
                str(w.inputs / "nope.yaml"),
            ],
            {},
        ),  # fmt: skip
        ["nope.yaml does not exist", "docs/mapping.md"],
    ),
    "mapping: a folder": (
        lambda w: (
            [
                "ingest",
                w.write("x2.csv", HEADER + "1,c1,2024-01-01,5\n"),
                "--format",
                "csv",
                "--mapping",
                str(w.inputs),
            ],
            {},
        ),  # fmt: skip
        ["is a folder", "--mapping with the path of a YAML"],
    ),
    "mapping: csv without one": (
        ingest(HEADER + "1,c1,2024-01-01,5\n", None),
        ["needs a column mapping", "docs/mapping.md"],
    ),
    "mapping: with a fixed format": (
        ingest("customer date qty amount\n1 19970101 1 11.77\n", MAP, name="cd.txt", fmt="cdnow"),
        ["--mapping is only used with --format csv or parquet", "drop --mapping"],
    ),
    # --- money -------------------------------------------------------------------------------------------------
    "money: order netting to a negative amount": (
        ingest(HEADER + "7,c1,2024-01-01,10\n7,c1,2024-01-01,-25\n8,c1,2024-01-02,5\n"),
        [
            "1 order(s) have a negative amount after netting its lines",
            "order '7' = -15.00 (line 2, 3)",
            "allow_negative_orders: true",
            "--allow-negative-amounts",
        ],  # fmt: skip
    ),
    "money: a negative order row": (
        ingest(HEADER + "r1,c1,2024-01-01,-5\n", MAP + "grain: orders\n"),
        ["negative amount", "order 'r1' = -5.00 (line 2)", "allow_negative_orders"],
    ),
    "money: one order with two amounts": (
        ingest(HEADER + "7,c1,2024-01-01,10\n7,c1,2024-01-01,12\n", MAP + "grain: orders\n"),
        ["appear on several rows with different amounts", "order '7' on lines 2, 3", "grain: lines"],
    ),
    "money: decimal commas without the option": (
        ingest("o;c;d;a\n1;c1;2024-01-01;24,77\n", MAP + "delimiter: ';'\n"),
        ["'a' (amount) has values that are not a number", "line 2: '24,77'", "decimal: ','"],
    ),
    "money: a dot amount with decimal commas": (
        ingest("o;c;d;a\n1;c1;2024-01-01;24.77\n", MAP + "delimiter: ';'\ndecimal: ','\n"),
        ["not a number", "line 2: '24.77'"],
    ),
    "money: non-finite amount": (ingest(HEADER + "1,c1,2024-01-01,inf\n"), ["non-finite values", "line 2"]),
    "money: text amount": (ingest(HEADER + "1,c1,2024-01-01,12 EUR\n"), ["not a number", "line 2: '12 EUR'"]),
    # --- statuses, dates, ids -------------------------------------------------------------------------------
    "status: unknown value": (
        ingest(
            HEADER.strip()
            + ",s\n1,c1,2024-01-01,5,Paid\n2,c1,2024-01-02,5,Pending\n3,c2,2024-01-02,5,Pending\n",
            STATUS_MAP,
        ),  # fmt: skip
        [
            "neither counted nor excluded statuses",
            "'Pending': 2 row(s) (line 3, 4)",
            "statuses: {'Pending': shipped}",
        ],
    ),
    "status: unknown after the mapping": (
        ingest(
            HEADER.strip() + ",s\n1,c1,2024-01-01,5,In Transit\n2,c1,2024-01-02,5,lost\n",
            STATUS_MAP + "statuses: {in transit: shipped}\n",
        ),  # fmt: skip
        ["'lost': 1 row(s) (line 3)", "ACTIVATION_EXCLUDED_STATUSES"],
    ),
    "date: order in 2030": (
        ingest(HEADER + "1,c1,2024-01-01,5\n2,c1,2030-01-05,5\n"),
        ["(ordered_at) has dates after", "line 3: '2030-01-05'", "ACTIVATION_FUTURE_TOLERANCE_HOURS"],
    ),
    "date: event in 2031": (
        ingest("c,d\nc1,2031-02-01\n", EVENTS_MAP, name="ev.csv"),
        ["(occurred_at) has dates after", "line 2: '2031-02-01'", "tolerance"],
    ),
    "date: not a date": (
        ingest(HEADER + "1,c1,yesterday,5\n"),
        ["not a date", "line 2: 'yesterday'", "date_format"],
    ),
    "id: empty order id": (
        ingest(HEADER + ",c1,2024-01-01,5\n"),
        ["'o' (order_id) has empty values", "line 2"],
    ),
    "id: order with two customers": (
        ingest(HEADER + "1,c1,2024-01-01,5\n1,c2,2024-01-01,5\n"),
        ["more than one customer", "order '1'", "single customer id"],
    ),
    # --- files as they arrive ---------------------------------------------------------------------------------
    "file: UTF-16 without a byte-order mark": (
        ingest(UTF16_NO_BOM),
        ["UTF-16 text without a byte-order mark", "encoding: utf-16"],
    ),
    "file: UTF-16 read as latin-1": (
        ingest(UTF16, MAP + "encoding: latin-1\n"),
        ["is UTF-16 text but the mapping says encoding: latin-1", "set encoding: utf-16 in", "f.csv.yaml:2"],
    ),
    "file: xlsx as csv": (
        ingest(_zip_bytes(), name="book.csv"),
        ["not a CSV text file", "an Excel .xlsx workbook", "save the sheet as CSV"],
    ),
    "file: xls as csv": (
        ingest(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + os.urandom(100), name="old.csv"),
        ["old Office document", "save the sheet as CSV"],
    ),
    "file: parquet as csv": (
        lambda w: ingest(_parquet_bytes(w.root / "p.parquet"), name="p.csv")(w),
        ["it looks like a Parquet file", "--format parquet"],
    ),
    "file: random bytes": (
        ingest(bytes(range(256)) * 20, name="noise.csv"),
        ["binary data", "header line naming the columns"],
    ),
    "file: gzip": (
        ingest(gzip.compress(b"o,c,d,a\n1,c1,2024-01-01,5\n"), name="z.csv"),
        ["gzip-compressed", "gunzip"],
    ),
    "file: one line of prose": (
        ingest("these are the orders you asked for\n"),
        ["has no column(s) named in the mapping", "read as one single column", "set delimiter:"],
    ),
    "file: header only": (
        ingest(HEADER),
        [
            "has no data rows: it has 1 non-empty line(s), read as the header (o, c, d, a)",
            "export the data again",
        ],
    ),
    "file: wrong delimiter in the mapping": (
        ingest("o;c;d;a\n1;c1;2024-01-01;5\n", MAP + "delimiter: '|'\n"),
        ["read as one single column", "mapping's delimiter '|'", "set delimiter:"],
    ),
    "file: empty": (ingest(""), ["is empty", "export the data again"]),
    "file: missing": (
        lambda w: (["ingest", str(w.inputs / "gone.csv"), "--format", "csv"], {}),
        ["gone.csv does not exist", "check the path"],
    ),
    "file: csv read as parquet": (
        ingest(HEADER + "1,c1,2024-01-01,5\n", name="t.parquet", fmt="parquet"),
        ["cannot read", "as parquet", "looks like UTF-8 text, first line 'o,c,d,a'"],
    ),
    "file: online-retail without its columns": (
        ingest("InvoiceNo,Quantity\n1,2\n", None, name="or.csv", fmt="online-retail"),
        ["missing Online Retail columns", "UnitPrice", "--format csv with a mapping"],
    ),
    "file: unknown format": (
        ingest(HEADER + "1,c1,2024-01-01,5\n", None, fmt="excel"),
        ["unknown --format 'excel'", "online-retail"],
    ),
    # --- segment: warehouse data that fails a blocking check ---------------------------------------------------
    "segment: negative order": (
        segment("neg_orders"),
        ["non_negative(amount): 1 row(s) fail", "refund-7", "--allow-negative-amounts"],
    ),
    "segment: unknown status": (
        segment("status_orders"),
        ["accepted_values(status)", "'Pending review' (1)", "ACTIVATION_COUNTED_STATUSES"],
    ),
    "segment: order in 2030": (
        segment("future_orders"),
        ["not_future(ordered_at): 1 row(s) fail", "typo-2030", "ACTIVATION_FUTURE_TOLERANCE_HOURS"],
    ),
    "segment: a status dropped from the counted list": (
        segment("status_orders", ACTIVATION_COUNTED_STATUSES="completed"),
        ["'paid' (1)", "'Pending review' (1)", "ACTIVATION_EXCLUDED_STATUSES"],
    ),
    "segment: duplicate order ids": (
        segment("dup_orders"),
        ["unique(order_id): 1 row(s) fail", "d1", "fix or exclude the failing rows"],
    ),
    "segment: order without a customer": (
        segment("null_orders"),
        ["not_null(customer_id): 1 row(s) fail", "x1", "fix or exclude"],
    ),
    "segment: amount stored as text": (
        segment("text_orders"),
        ["numeric(amount)", "not a number; cast it in a view"],
    ),
    "segment: table missing": (
        segment(None, ACTIVATION_ORDERS__TABLE="fct_nowhere"),
        ["table 'fct_nowhere' does not exist", "activation ingest"],
    ),
    "segment: column missing": (
        segment(None, ACTIVATION_ORDERS__AMOUNT="total_eur"),
        ["has no column 'total_eur'", "ACTIVATION_ORDERS__AMOUNT"],
    ),
    "segment: bad as-of": (
        lambda w: (["segment", "--as-of", "30/06/2024", "--scheme", "seed5"], {}),
        ["--as-of '30/06/2024' is not a date", "YYYY-MM-DD"],
    ),
    "segment: a status both counted and excluded": (
        segment(None, ACTIVATION_COUNTED_STATUSES="completed, Returned"),
        ["returned cannot be both counted and excluded", "ACTIVATION_EXCLUDED_STATUSES"],
    ),
    "segment: bad tolerance setting": (
        segment(None, ACTIVATION_FUTURE_TOLERANCE_HOURS="a day"),
        ["ACTIVATION_FUTURE_TOLERANCE_HOURS", "'a day'", "correct ACTIVATION_FUTURE_TOLERANCE_HOURS"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_names_the_fix_and_writes_nothing(
    world: World, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    build, needles = CASES[case]
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    args, env = build(world)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = _state(world)
    result = run_cli(*args)
    dispose_engines()
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    for needle in needles:
        assert " ".join(needle.split()) in message, f"{needle!r} not in {result.stderr!r}"
    assert "fix:" in result.stderr
    assert "Traceback" not in result.output
    assert _state(world) == before


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 45
    assert sum(1 for c in CASES if c.startswith("segment")) >= 10
