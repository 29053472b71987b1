"""Ingest: every format, every cleaning rule with counts, de-duplication, customers, and bad input → nothing written."""

from __future__ import annotations

import codecs
import csv
from datetime import datetime
from pathlib import Path
from typing import Any

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

import segments.ingest as ingest_mod
from activation.errors import ConfigError, InputError
from activation.settings import Settings
from segments.ingest import ingest_file
from tests.cli_helpers import run_cli

OR_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
OR_ROWS = [
    "536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850.0,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850.0,United Kingdom",
    "536366,22633,HAND WARMER,6,12/1/2010 8:28,1.85,,United Kingdom",
    "536367,22634,HAND WARMER RED,2,12/1/2010 8:30,1.85,,United Kingdom",
    "C536379,D,Discount,-1,12/1/2010 9:41,27.5,14527.0,United Kingdom",
    "536380,22,NEGATIVE,-3,12/1/2010 9:45,2.5,14527.0,United Kingdom",
    "536381,23,ZERO QTY,0,12/1/2010 9:46,2.5,14527.0,United Kingdom",
    "536382,24,FREE SAMPLE,3,12/1/2010 9:47,0,14527.0,United Kingdom",
    '536383,25,"GIFT, WRAPPED",3,12/2/2010 9:41,1.5,14527.0,France',
    "536383,26,CARD,1,12/2/2010 9:41,0.42,14527.0,France",
    "536384,27,MUG,4,12/9/2011 12:50,2.1,12680,France",
]


def rows(engine: Engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).fetchall()]


def count(engine: Engine, table: str) -> int:
    return rows(engine, f"SELECT count(*) FROM {table}")[0][0]


def write(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


def online_retail_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "online_retail.csv", "\n".join([OR_HEADER, *OR_ROWS]) + "\n")


def check_online_retail(engine: Engine, report: ingest_mod.IngestReport) -> None:
    assert report.rows_read == 11
    assert report.dropped == {
        "no CustomerID": 2,
        "cancellation (InvoiceNo starts with C)": 1,
        "zero or negative quantity": 2,
        "zero or negative price": 1,
    }
    assert report.rows_kept == 5
    assert (report.orders, report.orders_inserted, report.customers) == (3, 3, 3)
    assert report.first_at == datetime(2010, 12, 1, 8, 26)
    assert report.last_at == datetime(2011, 12, 9, 12, 50)
    got = rows(
        engine,
        "SELECT order_id, customer_id, ordered_at, amount, country, source FROM orders ORDER BY order_id",
    )
    assert got == [
        (
            "536365",
            "17850",
            datetime(2010, 12, 1, 8, 26),
            pytest.approx(6 * 2.55 + 6 * 3.39),
            "United Kingdom",
            "online-retail",
        ),
        (
            "536383",
            "14527",
            datetime(2010, 12, 2, 9, 41),
            pytest.approx(3 * 1.5 + 0.42),
            "France",
            "online-retail",
        ),
        ("536384", "12680", datetime(2011, 12, 9, 12, 50), pytest.approx(8.4), "France", "online-retail"),
    ]
    assert rows(
        engine, "SELECT customer_id, country, unsubscribed, email FROM customers ORDER BY customer_id"
    ) == [
        ("12680", "France", False, None),
        ("14527", "France", False, None),
        ("17850", "United Kingdom", False, None),
    ]


def test_online_retail_csv_cleaning_rules(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    report = ingest_file(engine, settings, online_retail_csv(tmp_path), "online-retail")
    check_online_retail(engine, report)


def test_online_retail_xlsx(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(OR_HEADER.split(","))
    for rec in csv.reader(OR_ROWS):
        inv, code, desc, qty, when, price, cust, country = rec
        ws.append(
            [
                int(inv) if inv.isdigit() else inv,
                code,
                desc,
                int(qty),
                datetime.strptime(when, "%m/%d/%Y %H:%M"),
                float(price),
                float(cust) if cust else None,
                country,
            ]
        )
    path = tmp_path / "online_retail.xlsx"
    wb.save(path)
    report = ingest_file(engine, settings, path, "online-retail")
    check_online_retail(engine, report)


def test_online_retail_latin1_csv(duck_engine: Engine, duck_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        f"{OR_HEADER}\n536365,1,CAF\xc9 POSTER \xa3,2,12/1/2010 8:26,2.5,17850.0,EIRE\n".encode("latin-1")
    )
    assert ingest_file(duck_engine, duck_settings, path, "online-retail").orders_inserted == 1


def test_online_retail_ii_column_names(duck_engine: Engine, duck_settings: Settings, tmp_path: Path) -> None:
    header = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"
    path = write(
        tmp_path / "ii.csv",
        f"{header}\n489434,85048,LED,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom\n",
    )
    report = ingest_file(duck_engine, duck_settings, path, "online-retail")
    assert report.orders == 1
    assert rows(duck_engine, "SELECT customer_id, amount FROM orders") == [("13085", pytest.approx(83.4))]


CDNOW = """\
    1 19970101  1  11.77
    2 19970112  1  12.00
    2 19970112  5  77.00
    3 19970102  2  20.76
    3 19970330  2  20.76
 00004 19970101  0   0.00
"""


@pytest.mark.parametrize("header", [False, True])
def test_cdnow_with_and_without_header(
    engine: Engine, settings: Settings, tmp_path: Path, header: bool
) -> None:
    body = ("customer_id date quantity amount\n" if header else "") + CDNOW
    report = ingest_file(engine, settings, write(tmp_path / "CDNOW_master.txt", body), "cdnow")
    assert (report.rows_read, report.rows_kept, report.orders, report.customers) == (6, 6, 6, 4)
    assert report.first_at == datetime(1997, 1, 1) and report.last_at == datetime(1997, 3, 30)
    ids = [r[0] for r in rows(engine, "SELECT order_id FROM orders ORDER BY order_id")]
    assert ids == [
        "cdnow-1-19970101-1",
        "cdnow-2-19970112-1",
        "cdnow-2-19970112-2",
        "cdnow-3-19970102-1",
        "cdnow-3-19970330-1",
        "cdnow-4-19970101-1",
    ]
    assert rows(engine, "SELECT sum(amount) FROM orders WHERE customer_id = '2'") == [(pytest.approx(89.0),)]
    # the same orders with the header toggled and a later line appended: ids are stable, one new order
    other = ("" if header else "customer_id date quantity amount\n") + CDNOW + "    5 19970105  1  9.99\n"
    again = ingest_file(engine, settings, write(tmp_path / "CDNOW_longer.txt", other), "cdnow")
    assert (again.orders_inserted, again.orders_updated, again.orders_unchanged) == (1, 0, 6)
    assert count(engine, "orders") == 7


ORDERS_CSV = """\
OrderID;Customer;Date;Total;State;Coupon;Email;Name;OptOut;Category
A-1;c1;2024-01-05 10:00:00;10.50;Completed;;ann@example.com;Ann;no;Books
A-1;c1;2024-01-05 10:00:00;4.50;Completed;WELCOME10;ann@example.com;Ann;no;Books
A-2;c2;2024-02-01 09:30:00;99.99;Returned;;bob@example.org;Bob;yes;Home
A-3;;2024-02-02 09:30:00;5.00;Completed;;;;;
A-4;c1;2024-03-01;20;Cancelled;;;;;Toys
"""

ORDERS_MAPPING = """\
kind: orders
delimiter: ";"
columns:
  order_id: OrderID
  customer_id: Customer
  ordered_at: Date
  amount: Total
  status: State
  coupon_code: Coupon
  email: Email
  first_name: Name
  unsubscribed: OptOut
  category: Category
source: shop-export
"""


def test_csv_with_mapping_aggregates_lines_and_upserts_customers(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    data = write(tmp_path / "orders.csv", ORDERS_CSV)
    mapping = write(tmp_path / "mapping.yaml", ORDERS_MAPPING)
    report = ingest_file(engine, settings, data, "csv", mapping)
    assert (report.rows_read, report.dropped, report.rows_kept) == (5, {"no customer id": 1}, 4)
    assert (report.orders, report.customers) == (3, 2)
    assert rows(
        engine,
        "SELECT order_id, customer_id, amount, status, coupon_code, category, source FROM orders ORDER BY 1",
    ) == [
        ("A-1", "c1", pytest.approx(15.0), "Completed", "WELCOME10", "Books", "shop-export"),
        ("A-2", "c2", pytest.approx(99.99), "Returned", None, "Home", "shop-export"),
        ("A-4", "c1", pytest.approx(20.0), "Cancelled", None, "Toys", "shop-export"),
    ]
    # c1's last line has no email: the value comes from its last line that has one
    assert rows(
        engine, "SELECT customer_id, email, first_name, unsubscribed, created_at FROM customers ORDER BY 1"
    ) == [
        ("c1", "ann@example.com", "Ann", False, datetime(2024, 1, 5, 10, 0)),
        ("c2", "bob@example.org", "Bob", True, datetime(2024, 2, 1, 9, 30)),
    ]


def test_parquet_with_mapping_native_types(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    table = pa.table(
        {
            "oid": pa.array([1, 2, 3], pa.int64()),
            "cid": pa.array([17850.0, 17850.0, 12680.0], pa.float64()),
            "ts": pa.array(
                [datetime(2024, 5, 1, 8), datetime(2024, 6, 1, 9), datetime(2024, 7, 1)], pa.timestamp("us")
            ),
            "value": pa.array([12.5, 7.25, 100.0]),
            "unsub": pa.array([False, True, None]),
            "country": pa.array(["DE", "DE", None]),
        }
    )
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path)
    mapping = write(
        tmp_path / "m.yaml",
        "columns: {order_id: oid, customer_id: cid, ordered_at: ts, amount: value, unsubscribed: unsub, country: country}\n",
    )
    report = ingest_file(engine, settings, path, "parquet", mapping)
    assert (report.rows_read, report.orders, report.customers) == (3, 3, 2)
    assert rows(engine, "SELECT order_id, customer_id, amount, country FROM orders ORDER BY 1") == [
        ("1", "17850", 12.5, "DE"),
        ("2", "17850", 7.25, "DE"),
        ("3", "12680", 100.0, None),
    ]
    assert rows(engine, "SELECT customer_id, unsubscribed, country FROM customers ORDER BY 1") == [
        ("12680", False, None),
        ("17850", True, "DE"),
    ]


def test_reingest_does_not_duplicate_and_changed_orders_are_replaced(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    data = write(tmp_path / "orders.csv", ORDERS_CSV)
    mapping = write(tmp_path / "mapping.yaml", ORDERS_MAPPING)
    ingest_file(engine, settings, data, "csv", mapping)
    before = rows(engine, "SELECT * FROM orders ORDER BY order_id")
    again = ingest_file(engine, settings, data, "csv", mapping)
    assert (again.orders_inserted, again.orders_updated, again.orders_unchanged) == (0, 0, 3)
    assert (again.customers_inserted, again.customers_updated) == (0, 0)
    assert rows(engine, "SELECT * FROM orders ORDER BY order_id") == before
    # a later export: A-1 was returned, A-5 is new
    changed = (
        ORDERS_CSV.replace("10.50;Completed", "10.50;Returned").replace("4.50;Completed", "4.50;Returned")
        + "A-5;c3;2024-04-01 12:00:00;7;Completed;;cy@example.com;Cy;no;Books\n"
    )
    third = ingest_file(engine, settings, write(tmp_path / "later.csv", changed), "csv", mapping)
    assert (third.orders_inserted, third.orders_updated, third.orders_unchanged) == (1, 1, 2)
    assert count(engine, "orders") == 4
    assert rows(engine, "SELECT count(DISTINCT order_id) FROM orders") == [(4,)]
    assert rows(engine, "SELECT status FROM orders WHERE order_id = 'A-1'") == [("Returned",)]


def test_customer_upsert_keeps_values_and_never_resubscribes(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    mapping = write(
        tmp_path / "m.yaml",
        "columns: {order_id: o, customer_id: c, ordered_at: d, amount: a, email: e, first_name: n, unsubscribed: u}\n",
    )
    first = "o,c,d,a,e,n,u\n1,c1,2024-01-01,5,old@example.com,Ann,true\n2,c2,2024-01-02,5,b@example.com,Bob,false\n"
    ingest_file(engine, settings, write(tmp_path / "a.csv", first), "csv", mapping)
    second = "o,c,d,a,e,n,u\n3,c1,2024-02-01,5,new@example.com,,false\n4,c2,2024-02-02,5,,,\n"
    report = ingest_file(engine, settings, write(tmp_path / "b.csv", second), "csv", mapping)
    assert (report.customers_inserted, report.customers_updated) == (0, 1)
    assert rows(engine, "SELECT customer_id, email, first_name, unsubscribed FROM customers ORDER BY 1") == [
        ("c1", "new@example.com", "Ann", True),
        ("c2", "b@example.com", "Bob", False),
    ]


def test_contact_events_with_and_without_ids(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    tickets = write(
        tmp_path / "tickets.csv",
        "ticket,customer,opened\nT1,c1,2024-01-01 10:00\nT2,c1,2024-01-03 11:00\nT3,c2,2024-01-04 12:00\nT4,,2024-01-05\n",
    )
    mapping = write(
        tmp_path / "t.yaml",
        "kind: events\nevent_type: support_ticket\ncolumns: {event_id: ticket, customer_id: customer, occurred_at: opened}\n",
    )
    report = ingest_file(engine, settings, tickets, "csv", mapping)
    assert (report.kind, report.events, report.events_inserted, report.dropped) == (
        "events",
        3,
        3,
        {"no customer id": 1},
    )
    ingest_file(engine, settings, tickets, "csv", mapping)
    assert rows(engine, "SELECT event_id, customer_id, event_type FROM contact_events ORDER BY 1") == [
        ("T1", "c1", "support_ticket"),
        ("T2", "c1", "support_ticket"),
        ("T3", "c2", "support_ticket"),
    ]
    assert count(engine, "customers") == 0  # events never invent customers
    # without an id column, ids are derived and stable; two tickets at the same minute stay two
    no_ids = write(
        tmp_path / "calls.csv", "who,when,kind\nc9,2024-02-01 10:00,call\nc9,2024-02-01 10:00,call\n"
    )
    m2 = write(
        tmp_path / "c.yaml",
        "kind: events\ncolumns: {customer_id: who, occurred_at: when, event_type: kind}\n",
    )
    assert ingest_file(engine, settings, no_ids, "csv", m2).events_inserted == 2
    assert ingest_file(engine, settings, no_ids, "csv", m2).events_inserted == 0
    assert count(engine, "contact_events") == 5


def test_customers_kind(duck_engine: Engine, duck_settings: Settings, tmp_path: Path) -> None:
    data = write(tmp_path / "c.csv", "id,mail,optout\nc1,a@example.com,1\nc2,b@example.com,0\n")
    mapping = write(
        tmp_path / "m.yaml",
        "kind: customers\ncolumns: {customer_id: id, email: mail, unsubscribed: optout}\n",
    )
    report = ingest_file(duck_engine, duck_settings, data, "csv", mapping)
    assert (report.customers, report.customers_inserted) == (2, 2)
    assert rows(duck_engine, "SELECT customer_id, unsubscribed FROM customers ORDER BY 1") == [
        ("c1", True),
        ("c2", False),
    ]
    assert count(duck_engine, "orders") == 0


# --- bad input: a clear error, and nothing written ---------------------------------------------------------

GOOD_MAPPING = "columns: {order_id: o, customer_id: c, ordered_at: d, amount: a}\n"


def _bad_cases(tmp_path: Path) -> dict[str, tuple[Path, str, Path | None, type, list[str]]]:
    m = write(tmp_path / "good.yaml", GOOD_MAPPING)
    return {
        "missing online-retail column": (
            write(
                tmp_path / "no_price.csv",
                "InvoiceNo,Quantity,InvoiceDate,CustomerID,Country\n1,2,2010-12-01,5,UK\n",
            ),
            "online-retail",
            None,
            InputError,
            ["no_price.csv", "UnitPrice"],
        ),
        "mapping names a column not in the file": (
            write(tmp_path / "x.csv", "o,c,d,A\n1,c1,2024-01-01,5\n"),
            "csv",
            m,
            InputError,
            ["x.csv", "amount: a", "'a' → 'A'"],
        ),
        "unknown mapping key": (
            write(tmp_path / "y.csv", "o,c,d,a\n1,c1,2024-01-01,5\n"),
            "csv",
            write(tmp_path / "extra.yaml", GOOD_MAPPING + "colums: {}\n"),
            ConfigError,
            ["extra.yaml", "colums"],
        ),
        "unknown mapped column key": (
            write(tmp_path / "y2.csv", "o,c,d,a\n1,c1,2024-01-01,5\n"),
            "csv",
            write(
                tmp_path / "k.yaml",
                "columns: {order_id: o, customer_id: c, ordered_at: d, amount: a, price: a}\n",
            ),
            ConfigError,
            ["k.yaml", "price"],
        ),
        "malformed yaml": (
            write(tmp_path / "z.csv", "o,c,d,a\n1,c1,2024-01-01,5\n"),
            "csv",
            write(tmp_path / "broken.yaml", "columns: {order_id: o\n  customer_id: [c\n"),
            ConfigError,
            ["broken.yaml", "not valid YAML", "line"],
        ),
        "mapping misses a required column": (
            write(tmp_path / "z2.csv", "o,c,d,a\n1,c1,2024-01-01,5\n"),
            "csv",
            write(tmp_path / "req.yaml", "columns: {order_id: o, customer_id: c, amount: a}\n"),
            ConfigError,
            ["req.yaml", "ordered_at"],
        ),
        "unparseable date": (
            write(
                tmp_path / "dates.csv", "o,c,d,a\n1,c1,2024-01-01,5\n2,c1,yesterday,5\n3,c2,2024-13-45,5\n"
            ),
            "csv",
            m,
            InputError,
            ["dates.csv", "'d' (ordered_at)", "2 row(s)", "line 3: 'yesterday'", "line 4", "date_format"],
        ),
        "unparseable amount": (
            write(tmp_path / "amounts.csv", "o,c,d,a\n1,c1,2024-01-01,5\n2,c1,2024-01-02,12 EUR\n"),
            "csv",
            m,
            InputError,
            ["amounts.csv", "'a' (amount)", "line 3: '12 EUR'"],
        ),
        "empty file": (write(tmp_path / "empty.csv", ""), "csv", m, InputError, ["empty.csv", "empty"]),
        "header only": (
            write(tmp_path / "header.csv", "o,c,d,a\n"),
            "csv",
            m,
            InputError,
            ["header.csv", "no data rows"],
        ),
        "empty cdnow": (
            write(tmp_path / "cd.txt", "customer date qty amount\n"),
            "cdnow",
            None,
            InputError,
            ["cd.txt"],
        ),
        "wrong format": (
            write(tmp_path / "w.csv", "o,c,d,a\n1,c1,2024-01-01,5\n"),
            "excel",
            None,
            ConfigError,
            ["excel", "online-retail"],
        ),
        "csv read as parquet": (
            write(tmp_path / "p.csv", "o,c,d,a\n1,c1,2024-01-01,5\n"),
            "parquet",
            m,
            InputError,
            ["p.csv", "as parquet"],
        ),
        "csv without mapping": (
            write(tmp_path / "n.csv", "o,c,d,a\n1,c1,2024-01-01,5\n"),
            "csv",
            None,
            ConfigError,
            ["--mapping"],
        ),
        "order with two customers": (
            write(tmp_path / "two.csv", "o,c,d,a\n1,c1,2024-01-01,5\n1,c2,2024-01-01,5\n"),
            "csv",
            m,
            InputError,
            ["two.csv", "more than one customer", "'1'"],
        ),
        "cdnow with wrong field count": (
            write(tmp_path / "bad_cd.txt", "1 19970101 1 11.77\n2 19970102 1\n"),
            "cdnow",
            None,
            InputError,
            ["bad_cd.txt", "line 2", "found 3"],
        ),
        "online-retail row without a price": (
            write(tmp_path / "noprice.csv", OR_HEADER + "\n536365,1,X,2,12/1/2010 8:26,,17850.0,UK\n"),
            "online-retail",
            None,
            InputError,
            ["noprice.csv", "'UnitPrice' (unit_price) has empty values", "line 2"],
        ),
        "old xls workbook": (
            write(tmp_path / "old.xls", "binary"),
            "online-retail",
            None,
            InputError,
            [".xlsx"],
        ),
        "missing file": (tmp_path / "nope.csv", "csv", m, InputError, ["nope.csv", "does not exist"]),
    }


def test_bad_input_raises_clear_error_and_writes_nothing(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    # something already loaded must survive every failed ingest unchanged
    ingest_file(engine, settings, online_retail_csv(tmp_path), "online-retail")
    before = (
        rows(engine, "SELECT * FROM orders ORDER BY order_id"),
        rows(engine, "SELECT * FROM customers ORDER BY 1"),
    )
    for name, (path, fmt, mapping, error, needles) in _bad_cases(tmp_path).items():
        with pytest.raises(error) as info:
            ingest_file(engine, settings, path, fmt, mapping)
        message = str(info.value)
        for needle in needles:
            assert needle in message, f"{name}: {needle!r} not in {message!r}"
        assert info.value.fix, name
        after = (
            rows(engine, "SELECT * FROM orders ORDER BY order_id"),
            rows(engine, "SELECT * FROM customers ORDER BY 1"),
        )
        assert after == before, name
    assert count(engine, "contact_events") == 0


def test_failure_while_writing_rolls_back_everything(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_after_orders(conn: object) -> tuple[int, int]:
        raise RuntimeError("disk full while writing customers")

    monkeypatch.setattr(ingest_mod, "_merge_customers", fail_after_orders)
    with pytest.raises(RuntimeError):
        ingest_file(engine, settings, online_retail_csv(tmp_path), "online-retail")
    assert count(engine, "orders") == 0
    monkeypatch.undo()
    check_online_retail(engine, ingest_file(engine, settings, online_retail_csv(tmp_path), "online-retail"))


def test_all_rows_dropped_is_an_error(duck_engine: Engine, duck_settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "cancel.csv", OR_HEADER + "\nC1,X,Y,-1,12/1/2010 8:26,2.5,1.0,UK\n")
    with pytest.raises(InputError, match="every one of the 1 rows was dropped"):
        ingest_file(duck_engine, duck_settings, path, "online-retail")


def test_custom_date_format(duck_engine: Engine, duck_settings: Settings, tmp_path: Path) -> None:
    data = write(tmp_path / "eu.csv", "o,c,d,a\n1,c1,31/01/2024 10:15,5\n")
    mapping = write(tmp_path / "eu.yaml", GOOD_MAPPING + "date_format: '%d/%m/%Y %H:%M'\n")
    ingest_file(duck_engine, duck_settings, data, "csv", mapping)
    assert rows(duck_engine, "SELECT ordered_at FROM orders") == [(datetime(2024, 1, 31, 10, 15),)]


def test_text_times_with_a_utc_offset_are_converted_to_utc(
    duck_engine: Engine, duck_settings: Settings, tmp_path: Path
) -> None:
    data = write(
        tmp_path / "tz.csv",
        "o,c,d,a\n1,c1,2024-01-31 10:15:00+02:00,5\n2,c1,2024-01-31T23:30:00Z,5\n"
        "3,c1,2024-01-31 23:30:00-05:00,5\n4,c1,2024-01-31 10:15:00,5\n5,c1,2024-01-31,5\n",
    )
    ingest_file(duck_engine, duck_settings, data, "csv", write(tmp_path / "m.yaml", GOOD_MAPPING))
    assert rows(duck_engine, "SELECT order_id, ordered_at FROM orders ORDER BY order_id") == [
        ("1", datetime(2024, 1, 31, 8, 15)),
        ("2", datetime(2024, 1, 31, 23, 30)),
        ("3", datetime(2024, 2, 1, 4, 30)),  # the next day in UTC
        ("4", datetime(2024, 1, 31, 10, 15)),
        ("5", datetime(2024, 1, 31, 0, 0)),
    ]


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_ingest_prints_quality_report(settings: Settings, tmp_path: Path) -> None:
    result = run_cli("ingest", str(online_retail_csv(tmp_path)), "--format", "online-retail")
    assert result.exit_code == 0, result.output
    for needle in [
        "rows read",
        "11",
        "dropped: no CustomerID",
        "dropped: zero or negative quantity",
        "rows kept",
        "3 (3 new, 0 updated, 0 unchanged)",
        "2010-12-01 .. 2011-12-09",
        "lines of one order id summed (grain: lines)",
    ]:
        assert needle in result.stdout, needle
    again = run_cli("ingest", str(online_retail_csv(tmp_path)), "--format", "online-retail")
    assert "3 (0 new, 0 updated, 3 unchanged)" in again.stdout


def test_cli_ingest_bad_input_exits_2_with_fix(duck_settings: Settings, tmp_path: Path) -> None:
    result = run_cli("ingest", str(online_retail_csv(tmp_path)), "--format", "xls")
    assert result.exit_code == 2
    assert "unknown --format 'xls'" in result.stderr and "fix:" in result.stderr
    data = write(tmp_path / "d.csv", "o,c,d,a\n1,c1,never,5\n")
    mapping = write(tmp_path / "m.yaml", GOOD_MAPPING)
    result = run_cli("ingest", str(data), "--format", "csv", "--mapping", str(mapping))
    assert result.exit_code == 2
    assert "line 2: 'never'" in result.stderr


# --- money rules, statuses, e-mails ---------------------------------------------------------------------------


def test_negative_lines_are_returns_netted_within_their_order(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    data = write(
        tmp_path / "lines.csv", "o,c,d,a\n7,c1,2024-01-01,30\n7,c1,2024-01-01,-10\n8,c2,2024-01-02,5\n"
    )
    report = ingest_file(engine, settings, data, "csv", write(tmp_path / "m.yaml", GOOD_MAPPING))
    assert rows(engine, "SELECT order_id, amount FROM orders ORDER BY 1") == [("7", 20.0), ("8", 5.0)]
    assert dict(report.lines())["amounts"] == (
        "lines of one order id summed (grain: lines): 3 lines into 2 orders; 1 negative lines netted as returns"
    )


def test_negative_orders_load_only_when_the_mapping_allows_them(
    duck_engine: Engine, duck_settings: Settings, tmp_path: Path
) -> None:
    data = write(tmp_path / "refund.csv", "o,c,d,a\n7,c1,2024-01-01,10\n7,c1,2024-01-01,-25\n")
    with pytest.raises(InputError, match="order '7' = -15.00"):
        ingest_file(duck_engine, duck_settings, data, "csv", write(tmp_path / "m.yaml", GOOD_MAPPING))
    allowed = write(tmp_path / "allow.yaml", GOOD_MAPPING + "allow_negative_orders: true\n")
    ingest_file(duck_engine, duck_settings, data, "csv", allowed)
    assert rows(duck_engine, "SELECT order_id, amount FROM orders") == [("7", -15.0)]


def test_order_grain_takes_repeated_rows_as_one_order(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    data = write(
        tmp_path / "dups.csv", "o,c,d,a\n7,c1,2024-01-01,10\n7,c1,2024-01-01,10\n8,c2,2024-01-02,5\n"
    )
    mapping = write(tmp_path / "m.yaml", GOOD_MAPPING + "grain: orders\n")
    report = ingest_file(engine, settings, data, "csv", mapping)
    assert rows(engine, "SELECT order_id, amount FROM orders ORDER BY 1") == [("7", 10.0), ("8", 5.0)]
    assert (
        dict(report.lines())["amounts"]
        == "one row per order (grain: orders); 1 repeated rows of an order dropped"
    )


def test_statuses_are_trimmed_case_insensitive_and_mapped(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    data = write(
        tmp_path / "s.csv",
        "o,c,d,a,s\n1,c1,2024-01-01,5, PAID \n2,c1,2024-01-02,5,In Transit\n3,c2,2024-01-03,5,Storniert\n",
    )
    mapping = write(
        tmp_path / "m.yaml",
        "columns: {order_id: o, customer_id: c, ordered_at: d, amount: a, status: s}\n"
        "statuses:\n  in transit: shipped\n  STORNIERT: cancelled\n",
    )
    ingest_file(engine, settings, data, "csv", mapping)
    assert rows(engine, "SELECT order_id, status FROM orders ORDER BY 1") == [
        ("1", "PAID"),
        ("2", "shipped"),
        ("3", "cancelled"),
    ]


def test_an_invalid_email_never_replaces_a_valid_one(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    mapping = write(tmp_path / "c.yaml", "kind: customers\ncolumns: {customer_id: id, email: mail}\n")
    first = write(tmp_path / "a.csv", "id,mail\nc1,ann@example.com\nc2,\nc3,old@example.com\n")
    ingest_file(engine, settings, first, "csv", mapping)
    second = write(
        tmp_path / "b.csv",
        "id,mail\nc1,not-an-email\nc2,also bad\nc3,new@example.com\nc4,ann@example.com\nc4,oops@\n",
    )
    report = ingest_file(engine, settings, second, "csv", mapping)
    assert rows(engine, "SELECT customer_id, email FROM customers ORDER BY 1") == [
        ("c1", "ann@example.com"),  # kept: the file's value is not an address
        ("c2", "also bad"),  # nothing valid stored: kept for the record, sync skips it
        ("c3", "new@example.com"),
        ("c4", "ann@example.com"),  # the customer's last valid address in the file
    ]
    assert report.invalid_emails == 3
    note = dict(report.lines())["invalid e-mails"]
    assert note.startswith("3 (never replace a stored valid address") and "line 2: 'not-an-email'" in note


# --- CSV exports as spreadsheets write them ---------------------------------------------------------------


def test_newlines_inside_quoted_fields(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    data = write(tmp_path / "nl.csv", 'o,c,d,a,n\n1,c1,2024-01-01,5,"Ann\nMarie"\n2,c2,2024-01-02,7,Bob\n')
    mapping = write(
        tmp_path / "m.yaml",
        "columns: {order_id: o, customer_id: c, ordered_at: d, amount: a, first_name: n}\n",
    )
    ingest_file(engine, settings, data, "csv", mapping)
    assert rows(engine, "SELECT customer_id, first_name FROM customers ORDER BY 1") == [
        ("c1", "Ann\nMarie"),
        ("c2", "Bob"),
    ]


@pytest.mark.parametrize(
    "encoded",
    [
        lambda s: codecs.BOM_UTF16_LE + s.encode("utf-16-le"),  # Excel "Unicode text"
        lambda s: codecs.BOM_UTF16_BE + s.encode("utf-16-be"),
        lambda s: codecs.BOM_UTF8 + s.encode("utf-8"),  # Excel "CSV UTF-8"
    ],
    ids=["utf-16-le", "utf-16-be", "utf-8-bom"],
)
def test_excel_encodings_are_detected(
    duck_engine: Engine, duck_settings: Settings, tmp_path: Path, encoded: Any
) -> None:
    data = tmp_path / "excel.csv"
    data.write_bytes(encoded("o\tc\td\ta\n1\tc1\t2024-01-01\t5\n2\tJosé\t2024-01-02\t7\n"))
    ingest_file(duck_engine, duck_settings, data, "csv", write(tmp_path / "m.yaml", GOOD_MAPPING))
    assert rows(duck_engine, "SELECT order_id, customer_id, amount FROM orders ORDER BY 1") == [
        ("1", "c1", 5.0),
        ("2", "José", 7.0),
    ]


def test_decimal_commas_with_semicolons(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    data = write(
        tmp_path / "eu.csv",
        "o;c;d;a\n1;c1;2024-01-01;24,77\n2;c1;2024-01-02;1.234,50\n3;c2;2024-01-03;-0,5\n4;c2;2024-01-03;3\n",
    )
    mapping = write(
        tmp_path / "m.yaml", GOOD_MAPPING + "delimiter: ';'\ndecimal: ','\nallow_negative_orders: true\n"
    )
    ingest_file(engine, settings, data, "csv", mapping)
    assert rows(engine, "SELECT order_id, amount FROM orders ORDER BY 1") == [
        ("1", 24.77),
        ("2", 1234.5),
        ("3", -0.5),
        ("4", 3.0),
    ]


def test_mapping_errors_name_file_and_line_of_every_problem(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        "kind: orders\ncolumns:\n  order_id: o\n  customer_id: c\n  ordered_at: d\n  amount: a\n"
        "delimter: ';'\ndecimal: x\n",
    )
    with pytest.raises(ConfigError) as err:
        ingest_mod.load_mapping(bad)
    message = str(err.value)
    assert f"{bad}:7: unknown key 'delimter' (did you mean 'delimiter'?)" in message
    assert f"{bad}:8: decimal must be '.' or ','" in message
    assert "docs/mapping.md" in (err.value.fix or "")
    assert (Path(__file__).parents[2] / "docs" / "mapping.md").is_file()
