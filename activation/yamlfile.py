"""The project's YAML files (schemes, the offer policy, ingest mappings), read one way: keeping the line of
every key, so a syntax error, a duplicate key or a validation error is reported as ``file:line: problem``
with the fix.

:func:`read_yaml` parses a file into a :class:`YamlDoc` (the data, a key path -> line map and the duplicate
keys) or raises :class:`YamlSyntaxError`; :func:`validation_issues` turns a pydantic ``ValidationError``
into :class:`YamlIssue` s at the lines of the keys; :func:`validate` does both for a pydantic model and raises
one :class:`ConfigError` listing every issue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from activation.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

SYNTAX_FIX = "check indentation and quoting (quote values containing ': ', '{', '#' or '*')"


@dataclass(frozen=True)
class YamlIssue:
    """One problem of a YAML file, at a line when it is known."""

    file: str
    line: int | None
    message: str
    fix: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class YamlSyntaxError(ConfigError):
    """A file that does not parse as YAML; ``issue`` says where and what."""

    def __init__(self, message: str, *, fix: str, issue: YamlIssue) -> None:
        super().__init__(message, fix=fix)
        self.issue = issue


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file: its data, the 1-based line of every key path (``()`` is the document; list items
    are keyed by their index as text) and the keys written twice."""

    path: Path
    data: Any
    lines: dict[tuple[str, ...], int]
    duplicates: tuple[YamlIssue, ...] = ()

    @property
    def file(self) -> str:
        return str(self.path)

    def line_of(self, loc: Iterable[object]) -> int | None:
        """The line of the deepest key of ``loc`` that the file has (parts that are no key of the file, such
        as pydantic's union tags or validator names, are skipped); the document's line when none is."""
        path: tuple[str, ...] = ()
        best = self.lines.get(())
        for part in loc:
            candidate = (*path, str(part))
            if candidate in self.lines:
                path = candidate
                best = self.lines[candidate]
        return best

    def where(self, loc: Iterable[object] = ()) -> str:
        """``file:line`` of a key path (the file alone when the line is unknown)."""
        line = self.line_of(loc)
        return f"{self.file}:{line}" if line else self.file


def read_yaml(path: Path, *, what: str, fix: str = SYNTAX_FIX, encoding: str = "utf-8") -> YamlDoc:
    """Parse ``path`` keeping the line of every key.

    Raises:
        YamlSyntaxError: the file is not valid YAML; the message is ``{what} file:line is not valid YAML:
            problem`` and ``fix`` the given one.
    """
    text = path.read_text(encoding=encoding)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        issue = YamlIssue(str(path), line, f"not valid YAML: {problem}", fix)
        raise YamlSyntaxError(
            f"{what} {issue.where} is not valid YAML: {problem}", fix=fix, issue=issue
        ) from exc
    lines: dict[tuple[str, ...], int] = {}
    duplicates: list[YamlIssue] = []
    if root is not None:
        lines[()] = root.start_mark.line + 1
        _walk(root, (), lines, duplicates, str(path))
    return YamlDoc(path, data, lines, tuple(duplicates))


def _walk(
    node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int], dups: list[YamlIssue], file: str
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                under = f" under {'.'.join(path)}" if path else ""
                fix = "keep one entry per key; the second silently replaced the first"
                dups.append(YamlIssue(file, line, f"duplicate key {key!r}{under}", fix))
            seen.add(key)
            out[(*path, key)] = line
            _walk(value_node, (*path, key), out, dups, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, str(i))] = item.start_mark.line + 1
            _walk(item, (*path, str(i)), out, dups, file)


def _validator_name(part: str) -> bool:
    return part.startswith("function-")  # pydantic's name of a validator, not a key of the file


def error_path(err: ErrorDetails, skip: Callable[[str], bool] = _validator_name) -> str:
    """The dotted key path of one pydantic error; parts that ``skip`` names (validators, union tags) are
    left out."""
    return ".".join(str(p) for p in err["loc"] if not skip(str(p))) or "(file)"


def error_message(err: ErrorDetails, skip: Callable[[str], bool] = _validator_name) -> str:
    """``key.path: problem`` of one pydantic error, in the file's words (``unknown key`` for an extra key)."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden" and err["loc"]:
        msg = f"unknown key {str(err['loc'][-1])!r}"
    return f"{error_path(err, skip)}: {msg}"


def validation_issues(
    doc: YamlDoc,
    exc: ValidationError,
    *,
    fix_for: Callable[[ErrorDetails], str | None],
    message: Callable[[ErrorDetails], str] = error_message,
) -> list[YamlIssue]:
    """Every error of ``exc`` as a :class:`YamlIssue` at the line of the key it is about (for a union tag
    that is none of the allowed ones: the line of the tag)."""
    issues = []
    for err in exc.errors():
        loc: tuple[object, ...] = tuple(err["loc"])
        if err["type"] == "union_tag_invalid":
            loc = (*loc, str(err.get("ctx", {}).get("discriminator", "")).strip("'"))
        issues.append(YamlIssue(doc.file, doc.line_of(loc), message(err), fix_for(err)))
    return issues


def issues_error(what: str, file: str, issues: list[YamlIssue], fix: str) -> ConfigError:
    """One error naming every issue as ``file:line: problem`` (one issue: on one line); the fix is the first
    issue's own, else ``fix``."""
    first_fix = next((i.fix for i in issues if i.fix), fix)
    if len(issues) == 1:
        return ConfigError(f"{what} {issues[0].where}: {issues[0].message}", fix=first_fix)
    listed = "\n".join(
        f"  {i.where}: {i.message}" + (f" (fix: {i.fix})" if i.fix and i.fix != first_fix else "")
        for i in issues
    )
    return ConfigError(f"{what} {file} has {len(issues)} problems:\n{listed}", fix=first_fix)


def validate(
    doc: YamlDoc,
    model: type[M],
    *,
    what: str,
    fix: str,
    fix_for: Callable[[ErrorDetails], str | None] | None = None,
    data: Any = None,
) -> M:
    """``doc``'s data (or ``data``, when the caller completed it) as ``model``.

    Raises:
        ConfigError: a key is written twice, or the data is not a valid ``model``: every problem as
            ``file:line: field: problem``; the fix is ``fix_for(error)`` or ``fix``.
    """
    issues = list(doc.duplicates)
    try:
        value = model.model_validate(doc.data if data is None else data)
    except ValidationError as exc:
        issues += validation_issues(doc, exc, fix_for=fix_for or (lambda err: fix))
        raise issues_error(what, doc.file, issues, fix) from exc
    if issues:
        raise issues_error(what, doc.file, issues, fix)
    return value
