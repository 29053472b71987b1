"""``--json``: one JSON document on stdout per command (the schemas of docs/json.md), for scripts and CI.

One warehouse for the module: demo data, two snapshots, a plan, a dry run and a real sync to the outbox,
outcomes and the ROI report, each command run with ``--json`` through the real entry point.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from activation.display import jsonable
from activation.settings import REPO_ROOT, Settings
from activation.warehouse import dispose_engines, get_engine
from flows.demo import backtest_as_of
from segments.demo_data import generate
from segments.ingest import ingest_file
from segments.snapshots import last_quarter_end
from tests.cli_helpers import CliResult, run_cli

# the documented schema (docs/json.md): every key each document has, and its JSON type
SCHEMAS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "segment": {
        "command": str,
        "as_of": str,
        "scheme": str,
        "lookback_days": (int, type(None)),
        "customers": int,
        "segments": list,
        "cutpoints": dict,
        "warnings": list,
    },
    "segments migration": {
        "command": str,
        "scheme": str,
        "from": str,
        "to": str,
        "rows": list,
        "columns": list,
        "counts": dict,
        "csv": (str, type(None)),
    },
    "plan": {"command": str, "as_of": str, "scheme": str, "segments": list},
    "sync": {
        "command": str,
        "destination": str,
        "as_of": str,
        "scheme": str,
        "dry_run": bool,
        "status": str,
        "api_calls": int,
        "write_calls": int,
        "read_calls": int,
        "seconds": float,
        "apply_seconds": float,
        "ok": int,
        "skipped": int,
        "failed": int,
        "campaigns": dict,
        "guardrail_violations": list,
        "blockers": list,
        "segments": dict,
    },
    "outcomes collect": {
        "command": str,
        "as_of": str,
        "scheme": str,
        "window_days": int,
        "campaigns": int,
        "members": int,
        "backtest": bool,
        "converted_added": int,
        "converted_updated": int,
        "converted_removed": int,
        "events_added": dict,
        "events_skipped": int,
        "suppressions_added": int,
        "unknown_coupon_orders": int,
        "data_end": (str, type(None)),
        "incomplete": bool,
        "warnings": list,
        "notes": list,
    },
    "report roi": {
        "command": str,
        "as_of": str,
        "scheme": str,
        "html": str,
        "csv": str,
        "segments": list,
        "warnings": list,
    },
}
SEGMENT_ROW = {"segment", "customers", "share", "recency_mean", "frequency_mean", "monetary_mean", "revenue"}
SYNC_SEGMENT = {
    "segment",
    "campaign_id",
    "members",
    "previous",
    "holdout",
    "adds",
    "updates",
    "unchanged",
    "tag_adds",
    "tag_removes",
    "api_calls",
    "skips",
}
PLAN_ROW = {
    "segment", "status", "campaign_id", "treated", "holdout", "excluded", "offer", "holdout_share",
    "mde_metric", "holdout_mde", "holdout_method",
}  # fmt: skip


def parse(result: CliResult, command: str) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # the whole of stdout is one document
    assert isinstance(doc, dict) and doc["command"] == command
    schema = SCHEMAS[command]
    assert set(doc) == set(schema), (command, sorted(set(doc) ^ set(schema)))
    for key, kind in schema.items():
        assert isinstance(doc[key], kind), (command, key, doc[key])
    return doc


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:

    root = tmp_path_factory.mktemp("json")
    shutil.copytree(REPO_ROOT / "templates", root / "templates")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ACTIVATION_DATA_DIR", str(root / "data"))
        mp.setenv("ACTIVATION_COUPON_SECRET", "json-test-secret")
        files = generate(root / "data" / "demo", customers=240, orders=1800, seed=5)
        settings = Settings()
        ingest_file(get_engine(settings), settings, files.orders, "parquet", mapping_path=files.mapping)
        dispose_engines()
        as_of = backtest_as_of(files.last_date)
        before = last_quarter_end(as_of)
        day, prev = as_of.isoformat(), before.isoformat()
        out: dict[str, Any] = {"root": root, "as_of": as_of, "before": before}
        out["segment_before"] = run_cli("segment", "--as-of", prev, "--json")
        out["segment"] = run_cli("segment", "--as-of", day, "--json")
        out["migration"] = run_cli(
            "segments",
            "migration",
            "--from",
            prev,
            "--to",
            day,
            "--scheme",
            "rfm11",
            "--out",
            str(root / "migration.csv"),
            "--json",
        )
        out["plan"] = run_cli("plan", "--as-of", day, "--json")
        out["dry_run"] = run_cli("sync", "--as-of", day, "--dry-run", "--json")
        out["synced_after_dry_run"] = _count(root, "sync_state")
        out["sync"] = run_cli("sync", "--as-of", day, "--json")
        out["collect"] = run_cli("outcomes", "collect", "--as-of", day, "--json")
        out["roi"] = run_cli("report", "roi", "--as-of", day, "--out", str(root / "roi.html"), "--json")
        dispose_engines()
        yield out


def _count(root: Path, table: str) -> int:
    dispose_engines()
    con = duckdb.connect(str(root / "data" / "warehouse.duckdb"), read_only=True)
    try:
        return int(con.execute(f"select count(*) from {table}").fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


def test_segment_json_is_the_snapshot_summary(runs: dict[str, Any]) -> None:
    doc = parse(runs["segment"], "segment")
    assert doc["as_of"] == runs["as_of"].isoformat() and doc["scheme"] == "rfm11"
    assert doc["segments"] and all(set(row) == SEGMENT_ROW for row in doc["segments"])
    assert sum(row["customers"] for row in doc["segments"]) == doc["customers"] > 0
    assert sum(row["share"] for row in doc["segments"]) == pytest.approx(1.0)
    assert _count(runs["root"], "rfm_snapshots") >= doc["customers"]


def test_migration_json_counts_every_customer_of_both_snapshots(runs: dict[str, Any]) -> None:
    before = parse(runs["segment_before"], "segment")
    doc = parse(runs["migration"], "segments migration")
    assert (doc["from"], doc["to"]) == (runs["before"].isoformat(), runs["as_of"].isoformat())
    assert set(doc["counts"]) == set(doc["rows"]) and all(
        set(r) == set(doc["columns"]) for r in doc["counts"].values()
    )
    total = sum(v for row in doc["counts"].values() for v in row.values())
    assert total >= max(before["customers"], parse(runs["segment"], "segment")["customers"])
    assert Path(doc["csv"]).is_file()


def test_plan_json_lists_every_campaign(runs: dict[str, Any]) -> None:
    doc = parse(runs["plan"], "plan")
    assert doc["segments"] and all(set(row) == PLAN_ROW for row in doc["segments"])
    created = [row for row in doc["segments"] if row["campaign_id"]]
    assert created and all(row["treated"] + row["holdout"] > 0 for row in created)


def test_sync_json_dry_run_writes_nothing_and_the_real_sync_reports_what_it_wrote(
    runs: dict[str, Any],
) -> None:
    dry = parse(runs["dry_run"], "sync")
    assert dry["dry_run"] is True and dry["status"] == "planned" and dry["write_calls"] == 0
    assert runs["synced_after_dry_run"] == 0
    real = parse(runs["sync"], "sync")
    assert real["dry_run"] is False and real["status"] == "succeeded" and real["failed"] == 0
    treated = sum(row["treated"] for row in parse(runs["plan"], "plan")["segments"])
    assert real["ok"] + real["skipped"] == treated and real["ok"] > 0
    assert set(real["segments"]) == set(dry["segments"])
    assert all(set(seg) == SYNC_SEGMENT for seg in [*dry["segments"].values(), *real["segments"].values()])
    assert _count(runs["root"], "sync_state") > 0


def test_outcomes_collect_json_is_what_was_recorded(runs: dict[str, Any]) -> None:
    doc = parse(runs["collect"], "outcomes collect")
    plan = parse(runs["plan"], "plan")
    assert doc["campaigns"] == len([r for r in plan["segments"] if r["campaign_id"]])
    assert doc["members"] == sum(r["treated"] + r["holdout"] for r in plan["segments"])
    assert doc["backtest"] is True and doc["converted_added"] > 0


def test_report_roi_json_has_the_csv_rows(runs: dict[str, Any]) -> None:
    doc = parse(runs["roi"], "report roi")
    assert Path(doc["html"]).is_file() and Path(doc["csv"]).is_file()
    with open(doc["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["segment"] for r in rows] == [r["segment"] for r in doc["segments"]]
    assert list(rows[0]) == list(doc["segments"][0])  # the CSV's columns, in its order
    for row, item in zip(rows, doc["segments"], strict=True):
        for key, value in item.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert float(row[key]) == pytest.approx(value, rel=1e-9), key
            elif value is None:
                assert row[key] == "", key


def test_version_flag_prints_the_installed_version() -> None:
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == version("rfm-activation")


def test_json_documents_stay_valid_for_values_json_cannot_hold() -> None:
    doc = jsonable(
        {
            "a": float("nan"),
            "b": np.int64(3),
            "c": pd.NaT,
            "d": date(2025, 6, 30),
            "e": Path("x"),
            "f": (1, math.inf),
            "g": pd.NA,
            "h": np.float64(0.5),
        }
    )
    assert json.loads(json.dumps(doc, allow_nan=False)) == {
        "a": None,
        "b": 3,
        "c": None,
        "d": "2025-06-30",
        "e": "x",
        "f": [1, None],
        "g": None,
        "h": 0.5,
    }


def test_a_sync_whose_outbox_is_a_file_is_refused_before_any_write(
    runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = runs["root"]
    (root / "a-file").write_text("not a folder\n")
    monkeypatch.setenv("ACTIVATION_OUTBOX_DIR", str(root / "a-file"))
    before = _count(root, "sync_state"), _count(root, "sync_log")
    result = run_cli("sync", "--as-of", runs["as_of"].isoformat(), "--force", "--json")
    assert result.exit_code == 2, result.output
    assert "ACTIVATION_OUTBOX_DIR" in result.stderr and "is a file" in result.stderr
    assert result.stdout == ""  # no document for a refused command
    assert (_count(root, "sync_state"), _count(root, "sync_log")) == before
    assert (root / "a-file").read_text() == "not a folder\n"
