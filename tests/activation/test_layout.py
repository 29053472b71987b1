"""The shape of the packages, checked: no import circle, layers imported downwards only, no function over
80 lines, no block of six or more lines repeated, and every package under every tool.

The tools read their settings from ``pyproject.toml`` (``[tool.importlinter]``, ``[tool.pylint]``,
``[tool.mypy]``), so running them by hand gives the same answer as these tests.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# the top-level packages: a subpackage (segments.clv) is listed for setuptools and checked with its parent
PACKAGES: list[str] = [p for p in PYPROJECT["tool"]["setuptools"]["packages"] if "." not in p]
MAX_FUNCTION_LINES = 80


def _modules() -> list[str]:
    names = []
    for path in _package_files():
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a tool from the clone (its packages first on the path, not an installed copy)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _script(name: str) -> str:
    """A console script installed next to this interpreter (``lint-imports``)."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return str(path)


def test_every_package_is_under_every_tool() -> None:
    """A new package is type-checked and its imports checked like the others (mypy, import-linter)."""
    assert sorted(PYPROJECT["tool"]["mypy"]["files"]) == sorted(PACKAGES)
    assert sorted(PYPROJECT["tool"]["importlinter"]["root_packages"]) == sorted(PACKAGES)
    layers = " ".join(PYPROJECT["tool"]["importlinter"]["contracts"][0]["layers"])
    assert all(p in layers for p in PACKAGES), layers


# Each module imported first, in a fresh set of the project's modules: a circle shows as "partially
# initialized module" (or a name missing from one) when the module on it is the first one imported.
_IMPORT_EACH = textwrap.dedent(
    """
    import importlib, sys, traceback
    packages, modules = sys.argv[1].split(","), sys.argv[2].split(",")
    failed = []
    for name in modules:
        for loaded in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except BaseException as exc:
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    print("\\n".join(failed))
    sys.exit(1 if failed else 0)
    """
)


def test_each_module_imports_first_without_a_circle() -> None:
    result = _run(sys.executable, "-c", _IMPORT_EACH, ",".join(PACKAGES), ",".join(_modules()))
    assert result.returncode == 0, f"modules that fail when imported first:\n{result.stdout}{result.stderr}"


def test_import_contracts() -> None:
    """``lint-imports``: the layers, the core below them, nothing importing the root CLI, no circle
    between the modules of a package (contracts in ``[tool.importlinter]``)."""
    result = _run(_script("lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def _package_files() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def _long_functions(paths: list[Path], root: Path) -> list[str]:
    """``file:line name: N lines`` for each function longer than the limit (def line to last line)."""
    found: list[tuple[Path, int, str, int]] = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):  # methods and nested functions too
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append((path.relative_to(root), node.lineno, node.name, length))
    return [f"{path}:{line} {name}: {length} lines" for path, line, name, length in sorted(found)]


def test_no_function_over_80_lines() -> None:
    found = _long_functions(_package_files(), ROOT)
    print("\n".join(found))
    assert not found, f"{len(found)} function(s) over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)


def test_the_long_function_check_counts_methods_and_nested_functions(tmp_path: Path) -> None:
    def body(n: int, indent: str) -> str:
        return "\n".join(f"{indent}x{i} = {i}" for i in range(n - 1))

    source = (
        f"class C:\n    @staticmethod\n    def fits():\n{body(MAX_FUNCTION_LINES, ' ' * 8)}\n\n"
        f"    def method():\n{body(MAX_FUNCTION_LINES + 1, ' ' * 8)}\n\n"
        f"def outer():\n    def inner():\n{body(MAX_FUNCTION_LINES + 1, ' ' * 8)}\n    return inner\n"
    )
    (tmp_path / "m.py").write_text(source, encoding="utf-8")
    method_line = 3 + MAX_FUNCTION_LINES + 1
    outer_line = method_line + MAX_FUNCTION_LINES + 2
    assert _long_functions([tmp_path / "m.py"], tmp_path) == [
        f"m.py:{method_line} method: {MAX_FUNCTION_LINES + 1} lines",
        f"m.py:{outer_line} outer: {MAX_FUNCTION_LINES + 3} lines",
        f"m.py:{outer_line + 1} inner: {MAX_FUNCTION_LINES + 1} lines",
    ]


@pytest.mark.slow
def test_no_block_of_six_lines_is_repeated_across_files() -> None:
    """pylint's duplicate-code (R0801) over the packages, six lines or more, imports, docstrings,
    comments and signatures left out (settings in ``[tool.pylint]``)."""
    result = _run(sys.executable, "-m", "pylint", "--rcfile", str(ROOT / "pyproject.toml"), *PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr


def _repeats_within(path: Path, root: Path) -> list[str]:
    """Blocks of ``min-similarity-lines`` or more lines that occur twice in one file (pylint compares
    files with each other only), lines stripped as pylint strips them: ``file:a ~ file:b (n lines)``."""
    from pylint.checkers.symilar import stripped_lines

    similarities = PYPROJECT["tool"]["pylint"]["similarities"]
    size = similarities["min-similarity-lines"]
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines = [
        spec
        for spec in stripped_lines(
            text,
            ignore_comments=similarities["ignore-comments"],
            ignore_docstrings=similarities["ignore-docstrings"],
            ignore_imports=similarities["ignore-imports"],
            ignore_signatures=similarities["ignore-signatures"],
        )
        if spec.text
    ]
    first: dict[tuple[str, ...], int] = {}
    found, covered = [], -1
    for i in range(len(lines) - size + 1):
        window = tuple(spec.text for spec in lines[i : i + size])
        j = first.setdefault(window, i)
        if i <= covered or i - j < size:
            continue
        n = size
        while i + n < len(lines) and j + n < i and lines[j + n].text == lines[i + n].text:
            n += 1
        covered = i + n - 1
        where = path.relative_to(root)
        a, b = lines[j].line_number + 1, lines[i].line_number + 1
        found.append(f"{where}:{a} ~ {where}:{b} ({n} lines)")
    return found


def test_no_block_of_six_lines_is_repeated_within_a_file() -> None:
    found = [repeat for path in _package_files() for repeat in _repeats_within(path, ROOT)]
    print("\n".join(found))
    assert not found, f"{len(found)} block(s) repeated within a file:\n" + "\n".join(found)


def test_the_repeat_check_finds_a_planted_block_once(tmp_path: Path) -> None:
    def two_functions(repeated: int) -> str:
        block = "".join(f"    total = total * {i} + 1\n" for i in range(repeated))
        return f"def a(total):\n{block}    return total\n\n\ndef b(total):\n    total -= 1\n{block}    return total\n"

    (tmp_path / "seven.py").write_text(two_functions(7), encoding="utf-8")
    (tmp_path / "four.py").write_text(two_functions(4), encoding="utf-8")
    # the seven lines and the return after them, the second time from line 14 (line 12 is b's signature)
    assert _repeats_within(tmp_path / "seven.py", tmp_path) == ["seven.py:2 ~ seven.py:14 (8 lines)"]
    assert _repeats_within(tmp_path / "four.py", tmp_path) == []  # five lines repeated: under the limit
