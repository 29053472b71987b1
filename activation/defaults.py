"""The defaults the package ships: the marketer's templates folder and the ``prefect.yaml`` of the deployments.

In a clone they are the repository's own ``templates/`` and ``prefect.yaml`` (the one source); a wheel carries
a copy of both under ``activation/defaults/``, made when the wheel is built (``setup.py``), so an installed
``activation`` needs no clone.

The templates folder of a run, first match wins:
1. ``ACTIVATION_TEMPLATES_DIR`` (or ``templates_dir`` in ``.env``), when set;
2. ``./templates``, when the working directory has one (a folder made by ``activation init``);
3. the packaged defaults.
"""

from __future__ import annotations

from pathlib import Path

from activation.errors import ConfigError

PACKAGED = Path(__file__).resolve().parent / "defaults"
"""Where a built wheel keeps its copy (absent in a clone, where :data:`REPO_ROOT` holds the sources)."""

REPO_ROOT = Path(__file__).resolve().parent.parent


def _packaged(name: str) -> Path:
    for candidate in (PACKAGED / name, REPO_ROOT / name):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"the packaged {name} is missing from this installation (looked in {PACKAGED})",
        fix="reinstall rfm-activation (`pip install --force-reinstall rfm-activation`)",
    )


def packaged_templates_dir() -> Path:
    """The templates folder (``policy.yaml`` and the e-mail templates) that ships with the package."""
    return _packaged("templates")


def packaged_prefect_yaml() -> Path:
    """The ``prefect.yaml`` of the deployments that ships with the package."""
    return _packaged("prefect.yaml")


def default_templates_dir() -> Path:
    """``./templates`` when the working directory has one, else the packaged defaults."""
    local = Path("templates")
    if local.is_dir():
        return local.resolve()
    try:
        return packaged_templates_dir()
    except ConfigError:
        return PACKAGED / "templates"  # commands that read it say it is missing, with the fix


def describe_templates_dir(templates_dir: Path) -> str:
    """Where a run's templates come from, in words: ``./templates``, ``ACTIVATION_TEMPLATES_DIR`` or the defaults."""
    resolved = Path(templates_dir).resolve()
    if resolved == Path("templates").resolve():
        return f"./templates ({resolved})"
    for candidate in (PACKAGED / "templates", REPO_ROOT / "templates"):
        if resolved == candidate.resolve():
            return f"the packaged defaults ({resolved}); `activation init` makes an editable copy"
    return f"ACTIVATION_TEMPLATES_DIR ({resolved})"
