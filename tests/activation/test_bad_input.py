"""Bad input, as a careless user gives it, to every command: exit status 2, a message that names the thing
and the fix, and nothing written — no table row, no file, no request to a destination.

One real warehouse (demo data ingested, an rfm11 snapshot, a campaign plan) is built once; every row runs
on its own copy of it, through the real ``activation`` entry point. The data half of the table (ingest,
data checks, mappings) is ``tests/segments/test_bad_input_data.py``.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pytest
from sqlalchemy import update

from activation.settings import REPO_ROOT, Settings
from activation.warehouse import dispose_engines, get_engine
from tests.cli_helpers import run_cli
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.mailchimp import FakeMailchimp

AS_OF = "2025-06-30"
SECRET = "bad-input-test-secret"


@dataclass
class World:
    """One copy of the base world: a folder holding the warehouse, the templates and the data folder."""

    root: Path
    mc: FakeMailchimp
    hs: FakeHubSpot
    env: dict[str, str] = field(default_factory=dict)

    @property
    def warehouse(self) -> Path:
        return self.root / "data" / "warehouse.duckdb"

    @property
    def templates(self) -> Path:
        return self.root / "templates"

    def edit(self, name: str, old: str, new: str) -> None:
        path = self.templates / name
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new))


def _build_base(root: Path) -> None:
    from campaigns.plan import plan_campaigns
    from segments.demo_data import generate
    from segments.ingest import ingest_file
    from segments.snapshots import compute_snapshot

    shutil.copytree(REPO_ROOT / "templates", root / "templates")
    settings = Settings(data_dir=root / "data", templates_dir=root / "templates", coupon_secret=SECRET)  # type: ignore[arg-type]
    files = generate(root / "data" / "demo", customers=240, orders=1800, seed=3)
    engine = get_engine(settings)
    ingest_file(engine, settings, files.orders, "parquet", mapping_path=files.mapping)
    compute_snapshot(engine, settings, date.fromisoformat(AS_OF), "rfm11")
    plan_campaigns(engine, settings, date.fromisoformat(AS_OF), "rfm11")
    dispose_engines()
    (root / "a-folder").mkdir()
    (root / "a-file").write_text("not a folder\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input-base")
    _build_base(root)
    return root


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeMailchimp, FakeHubSpot]]:
    with FakeMailchimp() as mc, FakeHubSpot() as hs:
        yield mc, hs


@pytest.fixture
def world(
    base: Path, fakes: tuple[FakeMailchimp, FakeHubSpot], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    root = tmp_path / "w"
    shutil.copytree(base, root)
    mc, hs = fakes
    w = World(root, mc, hs)
    env = {
        "ACTIVATION_DATA_DIR": str(root / "data"),
        "ACTIVATION_TEMPLATES_DIR": str(root / "templates"),
        "ACTIVATION_COUPON_SECRET": SECRET,
        "ACTIVATION_MAILCHIMP__API_KEY": mc.api_key,
        "ACTIVATION_MAILCHIMP__LIST_ID": mc.list_id,
        "ACTIVATION_MAILCHIMP__BASE_URL": mc.base_url,
        "ACTIVATION_MAILCHIMP__MAX_RETRIES": "0",
        "ACTIVATION_HUBSPOT__TOKEN": hs.token,
        "ACTIVATION_HUBSPOT__BASE_URL": hs.url,
        "ACTIVATION_HUBSPOT__MAX_RETRIES": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(root)
    mc.reset_log()
    hs.reset_log()
    yield w
    dispose_engines()


# --- what "nothing written" means -----------------------------------------------------------------


def _tables(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()]
        return {n: con.execute(f'select count(*) from "{n}"').fetchall()[0][0] for n in sorted(names)}
    finally:
        con.close()


def _files(root: Path) -> dict[str, str]:
    """Every file and folder under root (the warehouse files are compared as tables)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.name.startswith("warehouse.duckdb"):
            continue
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- the rows -------------------------------------------------------------------------------------

Setup = Callable[[World], None]


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the message (the thing named, the fix)
    setup: Setup | None = None
    env: tuple[tuple[str, str], ...] = ()


def case(
    id: str, args: str, *expect: str, setup: Setup | None = None, env: dict[str, str] | None = None
) -> Case:
    return Case(id, tuple(args.split()), expect, setup, tuple((env or {}).items()))


def _holdout_all(w: World) -> None:
    w.edit("policy.yaml", "holdout_share: 0.1", "holdout_share: 1.0")


def _no_unsubscribe(w: World) -> None:
    """winback without the layout: no unsubscribe link (but the address)."""
    (w.templates / "winback.html").write_text("<p>Hi {{ first_name }}</p><p>{{ brand.postal_address }}</p>\n")
    (w.templates / "winback.txt").write_text("Hi {{ first_name }}\n{{ brand.postal_address }}\n")


def _no_address(w: World) -> None:
    (w.templates / "winback.html").write_text(
        '<p>Hi {{ first_name }}</p><a href="{{ unsubscribe_url }}">u</a>\n'
    )
    (w.templates / "winback.txt").write_text("Hi {{ first_name }}\nUnsubscribe: {{ unsubscribe_url }}\n")


def _edited_after_planning(w: World) -> None:
    w.edit("winback.html", "{% block cta_label %}", "{# edited after planning #}{% block cta_label %}")


def _planned_before_compliance(w: World) -> None:
    """A plan made before plan checked the footer: its template (hash recorded) has no unsubscribe link."""
    from activation.tables import campaigns
    from campaigns.render import template_hash

    (w.templates / "bare.html").write_text("<p>Hi {{ first_name }}, {{ coupon_code }}</p>\n")
    (w.templates / "bare.txt").write_text("Hi {{ first_name }}, {{ coupon_code }}\n")
    settings = Settings(data_dir=w.root / "data", templates_dir=w.templates, coupon_secret=SECRET)  # type: ignore[arg-type]
    engine = get_engine(settings)
    with engine.begin() as conn:
        conn.execute(update(campaigns).values(template="bare", template_hash=template_hash(settings, "bare")))
    dispose_engines()


def _syntax_error(w: World) -> None:
    w.edit("winback.html", "{% block cta_label %}", "{% block cta_label %}{{ first_name ")


def _bad_yaml(w: World) -> None:
    (w.templates / "policy.yaml").write_text("version: 1\ndefault: [unclosed\n")


def _unknown_segment(w: World) -> None:
    w.edit("policy.yaml", "    Champions:", "    Champs:")


def _csv_folder(w: World) -> None:
    (w.root / "r.csv").mkdir()


TYPO_WAREHOUSE = {"ACTIVATION_WAREHOUSE_URL": "duckdb:///dta/warehouse.duckdb"}
NO_WAREHOUSE = (
    "no warehouse at dta/warehouse.duckdb",
    "fix:",
    "ACTIVATION_WAREHOUSE_URL",
    "activation ingest",
)

CASES = [
    # --- plan ---
    case("plan-date", "plan --as-of 2025-13-01", "--as-of '2025-13-01' is not a date", "YYYY-MM-DD"),
    case(
        "plan-no-snapshot",
        "plan --as-of 2019-12-31",
        "no rfm11 snapshot as of 2019-12-31",
        "activation segment",
    ),
    case("plan-holdout-1", f"plan --as-of {AS_OF}", "holdout_share", "treats nobody", setup=_holdout_all),
    case(
        "plan-no-unsubscribe",
        f"plan --as-of {AS_OF}",
        "winback",
        "no unsubscribe link",
        "unsubscribe_url",
        setup=_no_unsubscribe,
    ),
    case(
        "plan-no-address",
        f"plan --as-of {AS_OF}",
        "winback",
        "no postal address",
        "brand.postal_address",
        setup=_no_address,
    ),
    case("plan-syntax", f"plan --as-of {AS_OF}", "winback.html", "fix:", setup=_syntax_error),
    case("plan-bad-yaml", f"plan --as-of {AS_OF}", "policy.yaml", "fix:", setup=_bad_yaml),
    case("plan-unknown-segment", f"plan --as-of {AS_OF}", "Champs", "fix:", setup=_unknown_segment),
    case("plan-no-warehouse", f"plan --as-of {AS_OF}", *NO_WAREHOUSE, env=TYPO_WAREHOUSE),
    case("plan-unknown-scheme", f"plan --as-of {AS_OF} --scheme nosuch", "nosuch", "fix:"),
    # --- templates preview ---
    case(
        "preview-out-file",
        "templates preview --out a-file",
        "--out a-file is a file, but a folder is expected",
        "give a folder name",
    ),
    case(
        "preview-out-under-file",
        "templates preview --out a-file/previews",
        "a-file is a file, not a folder",
        "choose a path under a folder",
    ),
    case(
        "preview-scheme", "templates preview --out p --scheme nosuch", "unknown scheme 'nosuch'", "--scheme"
    ),
    case(
        "preview-segment", "templates preview --out p --segment Nope", "has no segment 'Nope'", "use one of"
    ),
    case("preview-bad-yaml", "templates preview --out p", "policy.yaml", "fix:", setup=_bad_yaml),
    case(
        "preview-holdout-1", "templates preview --out p", "holdout_share", "treats nobody", setup=_holdout_all
    ),
    # --- sync ---
    case(
        "sync-destination",
        "sync --destination carrier-pigeon",
        "unknown destination 'carrier-pigeon'",
        "outbox, mailchimp, hubspot",
    ),
    case(
        "sync-as-of-unplanned",
        "sync --as-of 2019-12-31",
        "no campaign plan for scheme 'rfm11' as of 2019-12-31",
        f"planned: {AS_OF}",
    ),
    case("sync-as-of-garbage", "sync --as-of yesterday", "--as-of 'yesterday' is not a date", "YYYY-MM-DD"),
    case(
        "sync-schedule-past",
        f"sync --as-of {AS_OF} --destination mailchimp --schedule-at 2020-01-01T09:00",
        "--schedule-at 2020-01-01T09:00:00+00:00 is in the past",
        "give a future time",
    ),
    case(
        "sync-schedule-garbage",
        f"sync --as-of {AS_OF} --schedule-at tomorrow",
        "--schedule-at 'tomorrow' is not a date-time",
        "ISO 8601",
    ),
    case("sync-scheme", "sync --scheme nosuch", "no campaign plan for scheme 'nosuch'", "activation plan"),
    case("sync-no-warehouse", "sync", *NO_WAREHOUSE, env=TYPO_WAREHOUSE),
    case(
        "sync-outbox-edited",
        f"sync --as-of {AS_OF} --destination outbox",
        "template 'winback' changed since campaign",
        "activation plan",
        setup=_edited_after_planning,
    ),
    case(
        "sync-outbox-send-edited",
        f"sync --as-of {AS_OF} --destination outbox --send",
        "template 'winback' changed since campaign",
        setup=_edited_after_planning,
    ),
    case(
        "sync-mailchimp-edited",
        f"sync --as-of {AS_OF} --destination mailchimp --send",
        "template 'winback' changed since campaign",
        setup=_edited_after_planning,
    ),
    case(
        "sync-hubspot-edited",
        f"sync --as-of {AS_OF} --destination hubspot",
        "template 'winback' changed since campaign",
        setup=_edited_after_planning,
    ),
    case(
        "sync-outbox-no-unsubscribe",
        f"sync --as-of {AS_OF} --destination outbox",
        "template 'bare'",
        "no unsubscribe link",
        "may not be sent",
        "unsubscribe_url",
        setup=_planned_before_compliance,
    ),
    case(
        "sync-mailchimp-send-no-unsubscribe",
        f"sync --as-of {AS_OF} --destination mailchimp --send",
        "template 'bare'",
        "no unsubscribe link",
        setup=_planned_before_compliance,
    ),
    case(
        "sync-mailchimp-no-key",
        f"sync --as-of {AS_OF} --destination mailchimp",
        "ACTIVATION_MAILCHIMP__API_KEY",
        env={"ACTIVATION_MAILCHIMP__API_KEY": ""},
    ),
    case(
        "sync-hubspot-no-token",
        f"sync --as-of {AS_OF} --destination hubspot",
        "ACTIVATION_HUBSPOT__TOKEN",
        env={"ACTIVATION_HUBSPOT__TOKEN": ""},
    ),
    # --- outcomes collect ---
    case(
        "outcomes-as-of-garbage",
        "outcomes collect --as-of 31/12/2025",
        "'31/12/2025' is not a date",
        "YYYY-MM-DD",
    ),
    case("outcomes-unplanned", "outcomes collect --as-of 2019-12-31", "2019-12-31", "activation plan"),
    case(
        "outcomes-window",
        f"outcomes collect --as-of {AS_OF} --window-days 0",
        "--window-days",
        "greater than or equal to 1",
    ),
    case(
        "outcomes-destination",
        f"outcomes collect --as-of {AS_OF} --destination carrier-pigeon",
        "carrier-pigeon",
        "outbox, mailchimp, hubspot",
    ),
    case("outcomes-no-warehouse", f"outcomes collect --as-of {AS_OF}", *NO_WAREHOUSE, env=TYPO_WAREHOUSE),
    # --- report roi ---
    case(
        "roi-out-folder",
        f"report roi --as-of {AS_OF} --out a-folder",
        "--out a-folder is a folder",
        "give a file name, e.g. --out a-folder/roi-2025-06-30.html",
    ),
    case(
        "roi-out-under-file",
        f"report roi --as-of {AS_OF} --out a-file/roi.html",
        "a-file is a file, not a folder",
    ),
    case(
        "roi-out-csv",
        f"report roi --as-of {AS_OF} --out roi.csv",
        "--out roi.csv names the CSV",
        "--out roi.html",
    ),
    case(
        "roi-csv-is-folder",
        f"report roi --as-of {AS_OF} --out r.html",
        "r.csv is a folder",
        setup=_csv_folder,
    ),
    case("roi-unplanned", "report roi --as-of 2019-12-31 --out roi.html", "2019-12-31", "activation plan"),
    case("roi-as-of-garbage", "report roi --as-of 2025-02-30 --out roi.html", "'2025-02-30' is not a date"),
    case("roi-no-warehouse", f"report roi --as-of {AS_OF} --out roi.html", *NO_WAREHOUSE, env=TYPO_WAREHOUSE),
    # --- segments export / migration ---
    case(
        "segments-export-folder",
        f"segments export --as-of {AS_OF} --scheme rfm11 --out a-folder",
        "--out a-folder is a folder",
        "a-folder/rfm11-2025-06-30.csv",
    ),
    case(
        "segments-export-under-file",
        f"segments export --as-of {AS_OF} --scheme rfm11 --out a-file/s.csv",
        "a-file is a file, not a folder",
    ),
    case(
        "segments-export-no-snapshot",
        "segments export --as-of 2019-12-31 --scheme rfm11 --out s.csv",
        "2019-12-31",
        "activation segment",
    ),
    case(
        "segments-export-date",
        "segments export --as-of 2025-6-31 --scheme rfm11 --out s.csv",
        "--as-of '2025-6-31' is not a date",
        "YYYY-MM-DD",
    ),
    case(
        "segments-export-scheme",
        f"segments export --as-of {AS_OF} --scheme nosuch --out s.csv",
        "nosuch",
        "fix:",
    ),
    case(
        "segments-export-no-warehouse",
        f"segments export --as-of {AS_OF} --scheme rfm11 --out s.csv",
        *NO_WAREHOUSE,
        env=TYPO_WAREHOUSE,
    ),
    case(
        "segments-migration-folder",
        f"segments migration --from {AS_OF} --to {AS_OF} --scheme rfm11 --out a-folder",
        "--out a-folder is a folder",
    ),
    case(
        "segments-migration-date",
        f"segments migration --from 2025 --to {AS_OF} --scheme rfm11",
        "--from '2025' is not a date",
    ),
    case("segment-no-warehouse", f"segment --as-of {AS_OF}", *NO_WAREHOUSE, env=TYPO_WAREHOUSE),
    # --- campaigns export ---
    case(
        "campaigns-export-folder",
        f"campaigns export --as-of {AS_OF} --out a-folder",
        "--out a-folder is a folder",
        "a-folder/campaigns-2025-06-30.csv",
    ),
    case(
        "campaigns-export-under-file",
        f"campaigns export --as-of {AS_OF} --out a-file/c.csv",
        "a-file is a file, not a folder",
    ),
    case(
        "campaigns-export-unplanned",
        "campaigns export --as-of 2019-12-31 --out c.csv",
        "no campaigns planned for rfm11 as of 2019-12-31",
        "activation plan",
    ),
    case(
        "campaigns-export-date",
        "campaigns export --as-of 2025-06-31 --out c.csv",
        "is not a date",
        "YYYY-MM-DD",
    ),
    case(
        "campaigns-export-no-warehouse",
        f"campaigns export --as-of {AS_OF} --out c.csv",
        *NO_WAREHOUSE,
        env=TYPO_WAREHOUSE,
    ),
    # --- demo-data ---
    case(
        "demo-data-out-file",
        "demo-data --out a-file --customers 10 --orders 20",
        "--out a-file is a file, but a folder is expected",
    ),
    case(
        "demo-data-out-under-file",
        "demo-data --out a-file/demo --customers 10 --orders 20",
        "a-file is a file, not a folder",
    ),
    case(
        "demo-data-fewer-orders",
        "demo-data --out d --customers 10 --orders 5",
        "--orders 5 is less than --customers 10",
        "--orders 10 or more",
    ),
    case("demo-data-zero", "demo-data --out d --customers 0", "--customers", "greater than or equal to 1"),
    case(
        "demo-data-plant-lift",
        "demo-data --out d --customers 10 --orders 20 --plant Champions=1.5",
        "--plant 'Champions=1.5'",
        "0 <= lift < 1",
        '--plant "At Risk=+0.10,Hibernating=+0.08"',
    ),
    case(
        "demo-data-plant-no-lift",
        "demo-data --out d --customers 10 --orders 20 --plant Champions",
        "is not segment=lift",
    ),
    case(
        "demo-data-plant-segment",
        "demo-data --out d --customers 10 --orders 20 --plant Nope=0.1",
        "--plant names Nope, not a segment of rfm11",
        "Champions, Loyal Customers",
    ),
    case(
        "demo-data-plant-as-of-alone",
        "demo-data --out d --customers 10 --orders 20 --plant-as-of 2025-06-30",
        "--plant-as-of needs --plant",
    ),
    # --- settings ---
    case(
        "settings-url",
        f"plan --as-of {AS_OF}",
        "ACTIVATION_WAREHOUSE_URL is not a valid SQLAlchemy URL",
        "duckdb:///",
        env={"ACTIVATION_WAREHOUSE_URL": "warehouse.duckdb"},
    ),
    case(
        "settings-pg-down",
        f"plan --as-of {AS_OF}",
        "cannot reach the warehouse",
        "ACTIVATION_WAREHOUSE_URL",
        env={"ACTIVATION_WAREHOUSE_URL": "postgresql+psycopg://u:secret@127.0.0.1:1/x"},
    ),
    case(
        "settings-guardrail",
        "sync --dry-run",
        "ACTIVATION_GUARDRAIL_MAX_CHANGE_SHARE",
        env={"ACTIVATION_GUARDRAIL_MAX_CHANGE_SHARE": "lots"},
    ),
    case(
        "settings-batch",
        f"sync --as-of {AS_OF} --destination mailchimp",
        "ACTIVATION_MAILCHIMP__BATCH_SIZE",
        env={"ACTIVATION_MAILCHIMP__BATCH_SIZE": "5000"},
    ),
    case(
        "settings-window",
        f"outcomes collect --as-of {AS_OF}",
        "ACTIVATION_ATTRIBUTION_WINDOW_DAYS",
        env={"ACTIVATION_ATTRIBUTION_WINDOW_DAYS": "-3"},
    ),
    case(
        "settings-default-scheme",
        f"plan --as-of {AS_OF}",
        "nosuch",
        "fix:",
        env={"ACTIVATION_DEFAULT_SCHEME": "nosuch"},
    ),
    case(
        "settings-templates-dir",
        f"plan --as-of {AS_OF}",
        "templates",
        "fix:",
        env={"ACTIVATION_TEMPLATES_DIR": "no-such-templates"},
    ),
]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_and_writes_nothing(
    c: Case, world: World, monkeypatch: pytest.MonkeyPatch
):
    if c.setup:
        c.setup(world)
    for k, v in c.env:
        monkeypatch.setenv(k, v)
    tables, files = _tables(world.warehouse), _files(world.root)
    res = run_cli(*c.args)
    dispose_engines()
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    message = " ".join(res.stderr.split())
    for part in c.expect:
        assert part in message, (part, res.stderr)
    assert "fix:" in res.stderr or "--help' for help" in res.stderr, (
        res.stderr
    )  # the fix, or click's usage hint
    assert _tables(world.warehouse) == tables
    assert _files(world.root) == files
    assert not (world.root / "dta").exists()  # a mistyped warehouse path creates no folder
    assert world.mc.calls == 0 and world.hs.calls == 0, (world.mc.log, world.hs.log)


def test_the_table_covers_every_command_family():
    families = {
        c.args[0]
        if c.args[0] not in ("templates", "segments", "campaigns", "outcomes", "report")
        else " ".join(c.args[:2])
        for c in CASES
    }
    assert len(CASES) >= 60
    assert {
        "plan",
        "sync",
        "templates preview",
        "outcomes collect",
        "report roi",
        "segments export",
        "campaigns export",
        "demo-data",
    } <= families
    assert sum(1 for c in CASES if any(k.startswith("ACTIVATION_") for k, _ in c.env)) >= 10
