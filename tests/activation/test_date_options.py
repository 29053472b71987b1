"""Every date and date-time option of every command, given a bad value through the real ``activation``
entry point: exit 2, the option and the value named, the form to write it in, and nothing written — the
date is refused before the warehouse is even opened."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from activation.dates import DateOptionError, parse_date, parse_datetime
from activation.errors import ActivationError, InputError
from tests.cli_helpers import run_cli

DATE_OPTIONS = [
    # (the command with its other arguments, the date option given the bad value)
    ("segment", "--as-of"),
    ("segments export --scheme rfm11 --out s.csv", "--as-of"),
    ("segments migration --to 2025-06-30 --scheme rfm11", "--from"),
    ("segments migration --from 2025-03-31 --scheme rfm11", "--to"),
    ("clv fit", "--train-until"),
    ("clv show", "--as-of"),
    ("plan", "--as-of"),
    ("campaigns export --out c.csv", "--as-of"),
    ("outcomes collect", "--as-of"),
    ("report roi --out roi.html", "--as-of"),
    ("sync", "--as-of"),
    ("run quarterly", "--as-of"),
    ("run resegment", "--as-of"),
    ("run activate", "--as-of"),
    ("run collect-outcomes", "--as-of"),
    ("run roi-report", "--as-of"),
]
BAD_DATES = [
    ("yesterday", ""),
    ("2025-13-01", " (month must be in 1..12)"),
    ("2025-02-30", " (day is out of range for month)"),
    ("31/12/2025", ""),
    ("20251231", ""),  # date.fromisoformat reads it; YYYY-MM-DD is what every help text asks for
    ("2025-6-30", ""),
]
DATETIME_OPTIONS = [("sync --as-of 2025-06-30", "--schedule-at"), ("run activate", "--schedule-at")]
BAD_DATETIMES = ["tomorrow", "2025-07-02 9am", "2025-07-02T25:00"]


@pytest.fixture
def empty_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with nothing in it: no warehouse, no data folder."""
    monkeypatch.setenv("ACTIVATION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ACTIVATION_WAREHOUSE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(args: str, option: str, value: str, root: Path) -> str:
    res = run_cli(*args.split(), option, value)
    assert res.exit_code == 2, res.output
    assert not list(root.iterdir()), "a refused command wrote something"
    lines = res.stderr.splitlines()
    assert lines and lines[0].startswith(f"error: {option} {value!r} is not a date"), res.stderr
    return res.stderr


@pytest.mark.parametrize(
    ("args", "option"), DATE_OPTIONS, ids=[f"{a.split()[0]}-{o}" for a, o in DATE_OPTIONS]
)
def test_a_bad_date_is_refused_naming_the_option(args: str, option: str, empty_project: Path) -> None:
    for value, why in BAD_DATES[:3]:
        stderr = _refused(args, option, value, empty_project)
        assert f"{option} {value!r} is not a date{why}\n" in stderr
        assert f"fix: write {option} as YYYY-MM-DD, e.g. {option} 2025-06-30" in stderr


@pytest.mark.parametrize(("value", "why"), BAD_DATES)
def test_every_bad_form_of_a_date_is_refused(value: str, why: str, empty_project: Path) -> None:
    stderr = _refused("plan", "--as-of", value, empty_project)
    assert f"--as-of {value!r} is not a date{why}\n" in stderr


@pytest.mark.parametrize(("args", "option"), DATETIME_OPTIONS)
@pytest.mark.parametrize("value", BAD_DATETIMES)
def test_a_bad_date_time_is_refused_naming_the_option(
    args: str, option: str, value: str, empty_project: Path
) -> None:
    res = run_cli(*args.split(), option, value)
    assert res.exit_code == 2, res.output
    assert not list(empty_project.iterdir())
    assert f"error: {option} {value!r} is not a date-time\n" in res.stderr
    assert f"fix: write it in ISO 8601, e.g. {option} 2025-07-02T09:00 (UTC)" in res.stderr


def test_the_parsers_read_what_the_help_texts_ask_for() -> None:
    assert parse_date("2025-06-30", "--as-of") == date(2025, 6, 30)
    assert parse_date(" 2025-06-30 ", "--as-of") == date(2025, 6, 30)
    assert parse_date(date(2025, 6, 30), "--as-of") == date(2025, 6, 30)
    assert parse_date(None, "--as-of") is None
    assert parse_datetime("2025-07-02T09:00", "--schedule-at") == datetime(2025, 7, 2, 9, 0)
    assert parse_datetime("2025-07-02T09:00Z", "--schedule-at") == datetime(2025, 7, 2, 9, 0, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    assert parse_datetime("2025-07-02T09:00+02:00", "--schedule-at") == datetime(
        2025, 7, 2, 9, tzinfo=plus_two
    )
    assert parse_datetime(None, "--schedule-at") is None


def test_a_bad_date_is_one_error_class_with_a_fix() -> None:
    with pytest.raises(DateOptionError) as err:
        parse_date("2025-02-30", "--train-until")
    assert isinstance(err.value, InputError) and isinstance(err.value, ActivationError)
    assert err.value.message == "--train-until '2025-02-30' is not a date (day is out of range for month)"
    assert err.value.fix == "write --train-until as YYYY-MM-DD, e.g. --train-until 2025-06-30"
    with pytest.raises(DateOptionError, match="--schedule-at 'soon' is not a date-time"):
        parse_datetime("soon", "--schedule-at")
