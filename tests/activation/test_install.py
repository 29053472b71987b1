"""rfm-activation installed like a product: the wheel on its own, in a fresh virtual environment, from an
empty folder; and where the templates of a run come from.

The wheel test builds the wheel from a copy of the sources, installs it with ``--no-deps`` into a venv made
with ``--system-site-packages`` (the dependencies are reused, the project itself comes only from the wheel)
and runs ``activation`` there with no PYTHONPATH, from an empty folder.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from activation import defaults
from activation.settings import Settings
from tests.cli_helpers import run_cli
from tests.prefect_harness import prefect_api  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "prefect.yaml",
    "templates",
    "activation",
    "segments",
    "campaigns",
    "connectors",
    "outcomes",
    "studio",
    "flows",
]


# --------------------------------------------------------------------------------- where templates come from


def test_the_templates_folder_is_the_setting_then_dot_templates_then_the_packaged_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().templates_dir == defaults.packaged_templates_dir()
    assert (Settings().templates_dir / "policy.yaml").is_file()
    assert "packaged defaults" in defaults.describe_templates_dir(Settings().templates_dir)

    (tmp_path / "templates").mkdir()
    assert Settings().templates_dir == (tmp_path / "templates").resolve()
    assert defaults.describe_templates_dir(Settings().templates_dir).startswith("./templates")

    elsewhere = tmp_path / "brand-b"
    monkeypatch.setenv("ACTIVATION_TEMPLATES_DIR", str(elsewhere))
    assert Settings().templates_dir == elsewhere
    assert defaults.describe_templates_dir(elsewhere).startswith("ACTIVATION_TEMPLATES_DIR")


def test_a_demo_with_broken_templates_stops_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    with (tmp_path / "templates" / "policy.yaml").open("a") as f:
        f.write("segments: [unclosed\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACTIVATION_DATA_DIR", raising=False)
    result = run_cli("demo", "--customers", "200", "--orders", "1600")
    assert result.exit_code == 2, result.output
    assert "policy.yaml" in result.stderr and "nothing was written" in result.stderr, result.stderr
    assert "fix:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["templates"]


# --------------------------------------------------------------------------------------- the wheel, installed


@dataclass
class Installed:
    venv: Path
    wheel: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "activation"), *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _copy_sources(dest: Path) -> Path:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache", ".ruff_cache")
    for name in SHIPPED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Installed]:  # noqa: F811
    work = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(work / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(src)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wheel = next((work / "dist").glob("rfm_activation-*.whl"))
    venv = work / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACTIVATION_", "PREFECT_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        {
            "PREFECT_HOME": str(work / "prefect-home"),
            "PREFECT_API_URL": prefect_api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "200",
        }
    )
    yield Installed(venv=venv, wheel=wheel, env=env)


@pytest.mark.slow
@pytest.mark.prefect
def test_the_wheel_alone_runs_the_demo_from_an_empty_folder(installed: Installed, tmp_path: Path) -> None:
    where = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import activation, flows, campaigns; print(activation.__file__); print(flows.__file__)",
        ],
        cwd=tmp_path,
        env=installed.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(line.startswith(str(installed.venv)) for line in where.stdout.split()), where.stdout

    result = installed.run("demo", "--customers", "200", "--orders", "1600", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "templates         the packaged defaults" in result.stdout, result.stdout
    assert str(installed.venv) in result.stdout  # the packaged templates, not the clone's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    data = tmp_path / "data"
    assert (data / "warehouse.duckdb").is_file()
    assert not (data / "warehouse.duckdb.wal").exists()  # checkpointed: one file
    assert list((data / "reports").glob("roi-*.html")) and (data / "preview" / "index.html").is_file()
    assert list((data / "outbox").rglob("*.eml"))


ENTRYPOINTS = """
import importlib
import yaml
from prefect import Flow

config = yaml.safe_load(open("prefect.yaml"))
names = [name for step in config["pull"] for name in step] + [d["entrypoint"] for d in config["deployments"]]
for name in names:
    module, attr = name.rsplit(".", 1)
    loaded = importlib.import_module(module)
    assert callable(getattr(loaded, attr)), name
    if name in [d["entrypoint"] for d in config["deployments"]]:
        assert isinstance(getattr(loaded, attr), Flow), name
    print(loaded.__file__)
"""


@pytest.mark.slow
def test_the_wheel_alone_inits_a_project_whose_templates_and_deployments_work(
    installed: Installed, tmp_path: Path
) -> None:
    result = installed.run("init", "shop", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    shop = tmp_path / "shop"
    check = installed.run("templates", "check", cwd=shop)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok:" in check.stdout
    version = installed.run("--version", cwd=shop)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version.returncode == 0 and version.stdout.strip() == project["version"], (
        version.stdout + version.stderr
    )
    loaded = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", ENTRYPOINTS],
        cwd=shop,
        env=installed.env,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr
    modules = loaded.stdout.split()
    assert modules and all(m.startswith(str(installed.venv)) for m in modules), modules


def test_the_wheel_declares_its_licence_and_ships_the_licence_file(installed: Installed) -> None:
    from email.parser import Parser
    from zipfile import ZipFile

    with ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        meta = Parser().parsestr(
            whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert (
        "activation/defaults/templates/policy.yaml" in names and "activation/defaults/prefect.yaml" in names
    )
    assert not any(n.startswith(("tests/", "bench/", "docs/")) for n in names)


def _third_party_imports(tree: ast.AST) -> Iterator[tuple[str, bool]]:
    """(top-level module, imported at module level) of every absolute import in ``tree``."""
    deferred: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            deferred |= {id(n) for n in ast.walk(fn) if n is not fn}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name.split(".")[0], id(node) not in deferred


def test_every_third_party_import_of_the_packages_is_a_declared_dependency() -> None:
    """A module-level import needs a core dependency; an import inside a function (a warehouse or model that
    only some users have) may come from an optional extra instead (never from ``dev``)."""
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement

    def names(reqs: list[str]) -> set[str]:
        return {Requirement(r).name.lower().replace("_", "-") for r in reqs}

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = names(project["dependencies"])
    extras = names([r for k, rs in project["optional-dependencies"].items() if k != "dev" for r in rs])
    ours = {"activation", "segments", "campaigns", "connectors", "outcomes", "studio", "flows"}
    dists = packages_distributions()
    undeclared: dict[str, str] = {}
    for path in sorted(p for pkg in ours for p in (ROOT / pkg).rglob("*.py")):
        for top, at_module_level in _third_party_imports(ast.parse(path.read_text())):
            if top in ours or top in sys.stdlib_module_names:
                continue
            provided = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
            allowed = core if at_module_level else core | extras
            if not provided & allowed:
                where = "module level, needs a core dependency" if at_module_level else "no extra provides it"
                undeclared[top] = f"{path.relative_to(ROOT)} ({where})"
    assert not undeclared, f"imported but not declared in pyproject: {undeclared}"


def _clash_env(tmp_path: Path, name: str) -> dict[str, str]:
    """An environment where pip has also installed PyPI's distribution ``name`` (its dist-info on the path)."""
    site = tmp_path / "site"
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVATION_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site)])
    return env


@pytest.mark.parametrize("name", ["segments", "flows"])
def test_a_pypi_distribution_with_one_of_our_package_names_fails_loudly(tmp_path: Path, name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from activation.cli import main; main()", "--version"],
        cwd=tmp_path,
        env=_clash_env(tmp_path, name),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"'{name}' 1.0 is installed" in result.stderr and "own virtual environment" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_package_shadowing_ours_on_the_path_fails_loudly(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "campaigns"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVATION_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "shadow"), str(ROOT)])
    result = subprocess.run(
        [sys.executable, "-c", "from activation.cli import main; main()", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'campaigns' is imported from" in result.stderr and "Traceback" not in result.stderr


def test_a_demo_whose_outbox_is_a_file_stops_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACTIVATION_DATA_DIR", raising=False)
    monkeypatch.setenv("ACTIVATION_OUTBOX_DIR", str(tmp_path / "a-file"))
    result = run_cli("demo", "--customers", "200", "--orders", "1600")
    assert result.exit_code == 2, result.output
    assert "ACTIVATION_OUTBOX_DIR" in result.stderr and "is a file" in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
