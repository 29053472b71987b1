"""The installation's own check: the seven top-level packages are rfm-activation's.

The packages keep the plain names of the design (``activation``, ``segments``, ``campaigns``, ``connectors``,
``outcomes``, ``studio``, ``flows``); PyPI has unrelated distributions with some of them (``segments`` is a popular one).
Installed into the same environment, pip writes both into the same folder and one overwrites the other's
files, or one shadows the other on ``sys.path``; either way imports would fail far from the cause. The command line checks
this first and stops with the name of the clashing distribution and the fix.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

from activation.errors import ConfigError

PACKAGES = ("activation", "segments", "campaigns", "connectors", "outcomes", "studio", "flows")
DISTRIBUTION = "rfm-activation"


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def check_installation() -> None:
    """Raise when another distribution provides one of the packages, or one is imported from elsewhere.

    Raises:
        ConfigError: names the package, where it comes from, and how to fix the environment.
    """
    home = Path(__file__).resolve().parent.parent
    for name in PACKAGES:
        try:
            other = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            other = None
        if other is not None and _normal(other.metadata["Name"] or name) != DISTRIBUTION:
            raise ConfigError(
                f"the distribution {other.metadata['Name']!r} {other.version} is installed in this environment "
                f"and also provides a top-level package {name!r}, which rfm-activation uses",
                fix=f"install rfm-activation in its own virtual environment, or `pip uninstall {name}` and "
                "reinstall rfm-activation",
            )
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
        if origin != home:
            raise ConfigError(
                f"the package {name!r} is imported from {origin or 'nowhere'}, not from rfm-activation ({home})",
                fix=f"remove what shadows it from sys.path / PYTHONPATH, or install rfm-activation in its own "
                f"virtual environment (`pip uninstall {name}` if another distribution owns it)",
            )
