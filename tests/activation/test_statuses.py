"""Which orders count: the SQL condition against its definition (trimmed, case-insensitive comparison with the
excluded words), for every spelling the fast path for counted words could get wrong."""

from __future__ import annotations

import pytest
from sqlalchemy import column, create_engine, select, table

from activation import statuses

VALUES = [
    None,
    "",
    "   ",
    "Completed",
    "completed",
    "COMPLETED",
    " Completed ",
    "CoMpLeTeD",
    "Paid",
    "Cancelled",
    "cancelled",
    " CANCELLED",
    "Returned",
    "Pending Review",
    "pending",
    "Shipped\t",
    "void",
    "Void",
]


def _counted_in_sql(condition_of: object, values: list[str | None]) -> list[bool]:
    engine = create_engine("duckdb:///:memory:")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (i INTEGER, status VARCHAR)")
        for i, v in enumerate(values):
            conn.exec_driver_sql("INSERT INTO t VALUES (?, ?)", (i, v))
        t = table("t", column("i"), column("status"))
        cond = condition_of(t.c.status)  # type: ignore[operator]
        rows = conn.execute(select(t.c.i, cond.label("counts")).select_from(t).order_by(t.c.i)).all()
    return [bool(r[1]) for r in rows]


@pytest.mark.parametrize(
    ("counted", "excluded"),
    [
        (statuses.COUNTED, statuses.EXCLUDED),
        ((), statuses.EXCLUDED),  # no fast path
        (["Completed", "pending review"], ["cancelled", "returned", "VOID"]),
        (
            ["cancelled", "paid"],
            ["Cancelled"],
        ),  # a word in both lists: excluded wins, as without the fast path
    ],
)
def test_counts_is_the_trimmed_case_insensitive_rule(counted: list[str], excluded: list[str]) -> None:
    words = {statuses.normalize(w) for w in excluded}
    want = [v is None or statuses.normalize(v) not in words for v in VALUES]
    assert _counted_in_sql(lambda col: statuses.counts(col, excluded, counted), VALUES) == want
    assert _counted_in_sql(lambda col: statuses.counts(col, excluded), VALUES) == want


def test_the_fast_path_lists_usual_spellings_of_counted_words_only() -> None:
    assert statuses.spellings(["paid", " "]) == ["PAID", "Paid", "paid"]
    compiled = str(
        statuses.counts(column("status"), ["cancelled"], ["completed", "Cancelled"]).compile(
            compile_kwargs={"literal_binds": True}
        )
    )
    assert "'Completed'" in compiled and "'COMPLETED'" in compiled
    assert "'Cancelled'" not in compiled.split("NOT IN")[0]  # an excluded word is never on the fast path
