"""``activation init DIR``: the project folder a marketer gets after ``pip install rfm-activation``."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any

import pytest

from activation.defaults import packaged_prefect_yaml, packaged_templates_dir
from activation.project import env_example
from activation.settings import Settings
from tests.cli_helpers import run_cli

FILES = [".env.example", "README.md", "prefect.yaml", "templates"]


def _flat(d: dict[str, Any], prefix: str = "ACTIVATION_") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k.upper()}__"))
        else:
            out[f"{prefix}{k.upper()}"] = v
    return out


def _listed(text: str) -> dict[str, str]:
    pairs = [line[2:].split("=", 1) for line in text.splitlines() if line.startswith("# ACTIVATION_")]
    return {k: v for k, v in pairs}


def test_init_writes_a_folder_whose_templates_check_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_cli("init", str(tmp_path / "shop"))
    assert result.exit_code == 0, result.output
    shop = tmp_path / "shop"
    assert sorted(p.name for p in shop.iterdir()) == FILES
    cmp = filecmp.dircmp(packaged_templates_dir(), shop / "templates", ignore=["__pycache__"])
    assert not cmp.left_only and not cmp.diff_files and (shop / "templates" / "policy.yaml").is_file()
    assert (shop / "prefect.yaml").read_bytes() == packaged_prefect_yaml().read_bytes()
    assert "activation templates check" in (shop / "README.md").read_text()
    assert (shop / ".env.example").read_text() == env_example()

    monkeypatch.chdir(shop)
    assert Settings().templates_dir == (shop / "templates").resolve()  # the folder's own, not the packaged
    check = run_cli("templates", "check")
    assert check.exit_code == 0, check.output
    assert "ok:" in check.stdout


def test_init_refuses_an_existing_project_and_writes_nothing_without_force(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    assert run_cli("init", str(shop)).exit_code == 0
    policy = shop / "templates" / "policy.yaml"
    policy.write_text(policy.read_text() + "\n# our edit\n")
    (shop / "README.md").unlink()

    again = run_cli("init", str(shop))
    assert again.exit_code == 2, again.output
    assert (
        "already has" in again.stderr and "--force" in again.stderr and "nothing was written" in again.stderr
    )
    assert policy.read_text().endswith("# our edit\n")
    assert not (shop / "README.md").exists()

    forced = run_cli("init", str(shop), "--force")
    assert forced.exit_code == 0, forced.output
    assert not policy.read_text().endswith("# our edit\n") and (shop / "README.md").is_file()


def test_init_into_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "shop").write_text("not a folder")
    result = run_cli("init", str(tmp_path / "shop"))
    assert result.exit_code == 2, result.output
    assert "is a file" in result.stderr
    assert (tmp_path / "shop").read_text() == "not a folder"


def test_env_example_lists_every_setting_at_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    defaults = Settings()
    listed = _listed(env_example())
    assert sorted(listed) == sorted(_flat(defaults.model_dump()))  # every setting, nothing extra

    # uncommented as a .env, the listed values are the defaults themselves
    (tmp_path / "templates").mkdir()  # as in a folder made by init
    (tmp_path / ".env").write_text("\n".join(f"{k}={v}" for k, v in listed.items() if v) + "\n")
    from_file = Settings()
    assert from_file.templates_dir.resolve() == (tmp_path / "templates").resolve()
    assert from_file.model_dump(exclude={"templates_dir"}) == defaults.model_dump(exclude={"templates_dir"})
