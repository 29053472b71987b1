"""The Prefect/fastapi pin: Prefect 3.8's local server crashes with fastapi >= 0.155
(``Body() got an unexpected keyword argument 'min_items'``). The pin in pyproject.toml keeps fastapi
below 0.155; these tests fail if an install ignores it, and prove a flow really runs on a local API."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from packaging.version import Version

from tests.prefect_harness import prefect_api  # noqa: F401  (session fixture)


def test_fastapi_is_below_the_version_that_breaks_prefects_server() -> None:
    prefect_v = Version(version("prefect"))
    fastapi_v = Version(version("fastapi"))
    assert prefect_v.major == 3, f"the project targets Prefect 3, found {prefect_v}"
    if prefect_v < Version("3.9"):
        assert fastapi_v < Version("0.155"), (
            f"fastapi {fastapi_v} with prefect {prefect_v}: the local Prefect server crashes on start "
            "(Body(min_items=...)); install 'fastapi<0.155' (pyproject.toml pins it)"
        )


def test_pyproject_declares_the_pin() -> None:
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    assert any(d.replace(" ", "").startswith("fastapi") and "<0.155" in d.replace(" ", "") for d in deps), (
        deps
    )


@pytest.mark.prefect
def test_a_flow_runs_against_a_real_local_api(prefect_api: str) -> None:  # noqa: F811
    """Starts Prefect's server (the part that crashes with a too-new fastapi) and runs a flow on it."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def smoke(x: int) -> int:
        return double(x) + 1

    state = smoke(20, return_state=True)
    assert state.is_completed() and state.result() == 41
    with get_client(sync_client=True) as client:
        assert client.api_healthcheck() is None
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state is not None and run.state.is_completed()
    assert prefect_api.startswith("http://127.0.0.1")
