"""Shared fixtures: isolated settings, a warehouse on DuckDB and on a real PostgreSQL server.

Prefect's home and result storage are pointed at a temp dir *before* anything imports prefect, so test
runs never touch (or leak personal data into) the user's ~/.prefect.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

_PREFECT_TMP = Path(tempfile.mkdtemp(prefix="rfm-activation-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_TMP / "home")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_PREFECT_TMP / "results")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_PREFECT_TMP / "storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
os.environ.pop("PREFECT_API_URL", None)
for _k in [k for k in os.environ if k.startswith("ACTIVATION_") and k != "ACTIVATION_TEST_POSTGRES_URL"]:
    del os.environ[_k]

import pytest  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from activation.settings import Settings  # noqa: E402
from activation.warehouse import dispose_engines, get_engine  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "ACTIVATION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

_pg_state: dict[str, object] = {}


def _pg_available() -> str | None:
    """None when the server answers, else the reason."""
    if "reason" not in _pg_state:
        try:
            eng = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
            with eng.connect() as conn:
                conn.execute(text("select 1"))
            eng.dispose()
            _pg_state["reason"] = None
        except Exception as exc:
            _pg_state["reason"] = (
                f"no PostgreSQL at {PG_ADMIN_URL} ({type(exc).__name__}); run .ci/start-postgres.sh"
            )
    return _pg_state["reason"]  # type: ignore[return-value]


def new_postgres_database() -> str:
    """Create an empty database on the test server and return its URL."""
    reason = _pg_available()
    if reason:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    name = f"rfm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty warehouse URL: a DuckDB file, then a new database on the PostgreSQL server."""
    if request.param == "duckdb":
        yield f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
        dispose_engines()
    else:
        url = new_postgres_database()
        yield url
        dispose_engines()
        drop_postgres_database(url)


@pytest.fixture
def duckdb_url(tmp_path: Path) -> Iterator[str]:
    """A DuckDB-only warehouse, for tests whose subject is not the SQL dialect."""
    yield f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    dispose_engines()


def _settings_for(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("ACTIVATION_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ACTIVATION_WAREHOUSE_URL", url)
    monkeypatch.setenv("ACTIVATION_COUPON_SECRET", "test-secret-not-for-production")
    return Settings(data_dir=data_dir, warehouse_url=url)


@pytest.fixture
def settings(warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on a fresh warehouse (DuckDB and PostgreSQL), also exported as env for CLI calls."""
    return _settings_for(warehouse_url, tmp_path, monkeypatch)


@pytest.fixture
def duck_settings(duckdb_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on a fresh DuckDB warehouse only."""
    return _settings_for(duckdb_url, tmp_path, monkeypatch)


@pytest.fixture
def engine(settings: Settings) -> Engine:
    return get_engine(settings)


@pytest.fixture
def duck_engine(duck_settings: Settings) -> Engine:
    return get_engine(duck_settings)
