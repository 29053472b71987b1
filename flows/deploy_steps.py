"""Deployment pull steps (``prefect.yaml`` ``pull:``), run by Prefect on the worker before each flow run.

A process worker starts each run in a new temporary folder; the flows read ``.env``, ``data/`` (the default
DuckDB warehouse) and ``templates/`` from the working directory, so a run has to move to the project folder
of the machine it runs on, not to the folder ``prefect deploy`` ran in on another machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from activation.errors import ConfigError


def use_worker_folder(directory: str | None = None) -> dict[str, str]:
    """Run the flow in ``directory``, or else in the folder the worker was started from (its ``PWD``).

    Returns:
        ``{"directory": <absolute path>}`` (Prefect changes into it).

    Raises:
        ConfigError: no folder given and the worker has no ``PWD`` (started by a service manager), or the
            folder does not exist on this machine.
    """
    target = directory or os.environ.get("PWD")
    if not target:
        raise ConfigError(
            "the worker's folder is unknown: it was not started from a shell (PWD is not set)",
            fix="start `prefect worker start` from the project folder, or set PWD=<project folder> in the worker's "
            "environment (systemd: Environment=PWD=… beside WorkingDirectory=…)",
        )
    path = Path(target).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(
            f"the project folder {path} does not exist on this worker",
            fix="start the worker from the folder holding .env and data/, or correct PWD in its environment",
        )
    os.chdir(path)
    return {"directory": str(path)}
