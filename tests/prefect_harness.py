"""One Prefect test API for the whole test session (it takes ~10 s to start).

``prefect_test_harness`` runs a real Prefect server in a subprocess with its own temporary database;
``tests/conftest.py`` has already pointed ``PREFECT_HOME`` and the result storage at a temp dir. Test
modules import :func:`prefect_api`; the harness is entered once per process, however many modules
request it, and left when the session ends.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

_HARNESS: dict[str, Any] = {}


def _start() -> str:
    if "url" not in _HARNESS:
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        cm: AbstractContextManager[Any] = prefect_test_harness(server_startup_timeout=120)
        cm.__enter__()
        _HARNESS["cm"] = cm
        _HARNESS["url"] = PREFECT_API_URL.value()
        atexit.register(_stop)
    return _HARNESS["url"]


def _stop() -> None:
    cm = _HARNESS.pop("cm", None)
    _HARNESS.pop("url", None)
    if cm is not None:
        try:
            cm.__exit__(None, None, None)
        except Exception:
            pass


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """The URL of the session's Prefect test API (started on first use, stopped at session end)."""
    yield _start()
    _stop()
