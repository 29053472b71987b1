"""``activation init DIR``: a marketer-owned project folder for an installed rfm-activation.

::

    DIR/
      templates/       policy.yaml and the e-mail templates (a copy of the packaged defaults, to edit)
      prefect.yaml     the deployments; module entrypoints, so they run from DIR with the package installed
      .env.example     every setting with its default, generated from :class:`~activation.settings.Settings`
      README.md        what is where and the first commands

Nothing is overwritten unless asked (``--force``), and the files are written together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from activation.defaults import packaged_prefect_yaml, packaged_templates_dir
from activation.errors import ConfigError
from activation.files import atomic_write_all, output_dir
from activation.settings import Settings

ENV_PREFIX = "ACTIVATION_"
NESTED = "__"
DYNAMIC_DEFAULTS = {
    "templates_dir": "templates",  # ./templates when the folder has one (it does, after init)
}

README = """\
# {name}: RFM activation

This folder belongs to the marketing team; rfm-activation (installed with pip) runs in it.

- `templates/` - `policy.yaml` (which template and offer each segment gets, holdout shares) and the e-mail
  templates (HTML + plain text). Edit them, then check: `activation templates check`.
- `.env.example` - every setting with its default. Copy it to `.env` and uncomment what you change
  (warehouse URL, column names, brand, Mailchimp / HubSpot credentials). `.env` holds secrets: keep it out
  of version control.
- `prefect.yaml` - the scheduled deployments (quarterly segments and campaigns, daily outcomes, monthly ROI).
- `data/` - created on first run: the default DuckDB warehouse, the outbox, reports.

First steps, from this folder:

    activation templates check                 # the templates and policy are valid
    activation demo                            # the whole cycle on demo data (writes data/)
    activation templates preview --out preview # one rendered e-mail per segment
    activation ingest orders.csv --format csv  # your own orders
    activation --help

Running on a schedule: `prefect deploy --all` here, and `prefect worker start --pool rfm-activation` started
from this folder on the machine that runs the flows (or `activation serve` for a single machine).
"""


def _fields(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, FieldInfo]]:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and not issubclass(ann, SecretStr):
            yield from _fields(ann, f"{prefix}{name.upper()}{NESTED}")
        else:
            yield name, f"{prefix}{name.upper()}", field


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return json.dumps(", ".join(str(v) for v in value))
    text = str(value)
    if text == "" or any(c in text for c in " #'\"=\\$"):
        return json.dumps(text)
    return text


def setting_defaults() -> list[tuple[str, str, str]]:
    """Every setting as ``(ACTIVATION_… variable, default as a .env value, description)``."""
    rows = []
    for name, var, field in _fields(Settings, ENV_PREFIX):
        if name in DYNAMIC_DEFAULTS and var.count(NESTED) == 0:
            value = DYNAMIC_DEFAULTS[name]
        else:
            value = _render(field.get_default(call_default_factory=True))
        rows.append((var, value, (field.description or "").strip()))
    return rows


def env_example() -> str:
    """The ``.env.example`` of a project folder: every setting, commented out, at its default."""
    lines = [
        "# Every rfm-activation setting with its default. Copy to .env and uncomment what you change;",
        "# the environment (ACTIVATION_…) wins over .env. Nested settings use __ (ACTIVATION_BRAND__NAME).",
        "# A setting shown with nothing after = is unset by default (no value to uncomment).",
    ]
    section = None
    for var, value, description in setting_defaults():
        group = var[len(ENV_PREFIX) :].split(NESTED)[0] if NESTED in var else ""
        if group != section:
            section = group
            lines.append("")
            if group:
                lines.append(f"# --- {group.lower()}")
        if description:
            lines.append(f"# {description}")
        lines.append(f"# {var}={value}")
    return "\n".join(lines) + "\n"


def project_files(name: str) -> list[tuple[Path, bytes | str]]:
    """The files of a new project folder, as paths relative to it."""
    templates = packaged_templates_dir()
    files: list[tuple[Path, bytes | str]] = [
        (Path("templates") / p.relative_to(templates), p.read_bytes())
        for p in sorted(templates.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    files += [
        (Path("prefect.yaml"), packaged_prefect_yaml().read_bytes()),
        (Path(".env.example"), env_example()),
        (Path("README.md"), README.format(name=name)),
    ]
    return files


def init_project(folder: str | Path, *, force: bool = False) -> list[Path]:
    """Write a project folder (see the module docstring); return the files written.

    Raises:
        InputError: ``folder`` is a file or not writable.
        ConfigError: some of the files already exist and ``force`` is false (nothing is written).
    """
    root = output_dir(folder, flag="DIR")
    name = root.resolve().name or "rfm-activation"
    files = project_files(name)
    tops = sorted({rel.parts[0] for rel, _ in files})
    existing = [t for t in tops if (root / t).exists()]
    if existing and not force:
        raise ConfigError(
            f"{root} already has {', '.join(existing)}; nothing was written",
            fix=f"choose an empty or new folder, or `activation init {folder} --force` to overwrite them "
            "(other files in the folder are kept)",
        )
    clash = [rel for rel, _ in files if (root / rel).is_dir()]
    if clash:
        raise ConfigError(
            f"{root / clash[0]} is a folder where init writes a file; nothing was written",
            fix="move it away and rerun",
        )
    atomic_write_all([(root / rel, data) for rel, data in files])
    return [root / rel for rel, _ in files]
