"""Where flows run: the Prefect API in ``PREFECT_API_URL``, or a temporary local one.

With ``PREFECT_API_URL`` unset, Prefect starts a temporary local API for the process (its "ephemeral"
mode): nothing to start by hand, which is what ``activation demo`` relies on. With it set, the API
must answer — checked up front so a wrong URL is one clear message instead of a stack of retries.

Prefect's settings and client are imported inside the functions: importing them takes seconds, and
``activation run …`` checks its own arguments before it pays for that.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from activation.errors import ConfigError

if TYPE_CHECKING:
    from prefect.settings.legacy import Setting

EPHEMERAL_STARTUP_TIMEOUT_S = 120


def prefect_api_url() -> str | None:
    """The configured Prefect API URL (environment or Prefect profile), or None for a temporary one."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_prefect_api() -> str:
    """Describe the API flows will use; fail clearly when a configured one does not answer.

    Raises:
        ConfigError: ``PREFECT_API_URL`` is set but nothing healthy answers there.
    """
    url = prefect_api_url()
    if url is None:
        return "a temporary local Prefect API (PREFECT_API_URL is not set)"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"PREFECT_API_URL={url!r} is not an http(s) URL",
            fix="use e.g. http://127.0.0.1:4200/api, or unset PREFECT_API_URL to run on a temporary local API",
        )
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
    except Exception as exc:
        problem = exc
    if problem is not None:
        reason = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
        raise ConfigError(
            f"the Prefect API at PREFECT_API_URL={url} does not answer ({reason})",
            fix="start it with `prefect server start`, correct PREFECT_API_URL, "
            "or unset PREFECT_API_URL to run on a temporary local API",
        )
    return f"the Prefect API at {url}"


@contextmanager
def local_run() -> Iterator[None]:
    """Settings for flows run in this process with nobody watching from a worker (``activation demo``).

    Flow-run heartbeats exist so a server can tell a crashed worker's run from a live one; in-process
    they only cost a thread join per flow run (~1 s each), so they are off here. A temporary API also
    gets no telemetry (it usually runs offline) unless the user set that explicitly.
    """
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    updates: dict[Setting, Any] = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    if prefect_api_url() is None:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # the first start creates and migrates Prefect's database, which takes longer than the
        # default 20 s on a small or busy machine
        timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = max(timeout, EPHEMERAL_STARTUP_TIMEOUT_S)
    with temporary_settings(updates=updates):
        yield
