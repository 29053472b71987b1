"""The one YAML loader of schemes, the offer policy and ingest mappings: every problem at its file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from activation.errors import ConfigError
from activation.yamlfile import YamlSyntaxError, read_yaml, validate


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["a", "b"]


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    items: list[Inner] = []


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thing.yaml"
    path.write_text(text)
    return path


def test_a_syntax_error_names_file_line_and_fix(tmp_path):
    path = _file(tmp_path, "name: x\nitems:\n  - {kind: a\n")
    with pytest.raises(YamlSyntaxError) as err:
        read_yaml(path, what="thing file", fix="close the brace")
    assert f"thing file {path}:4 is not valid YAML" in err.value.message
    assert err.value.fix == "close the brace"
    assert (err.value.issue.line, err.value.issue.file) == (4, str(path))


def test_every_key_has_its_line_and_duplicates_are_found(tmp_path):
    doc = read_yaml(_file(tmp_path, "name: x\nitems:\n  - kind: a\n  - kind: b\n    kind: a\n"), what="thing")
    assert doc.lines[("name",)] == 1 and doc.lines[("items", "0", "kind")] == 3
    assert doc.lines[("items", "1", "kind")] == 5  # a key written twice: the value that counts, the last
    assert doc.line_of(("items", 0, "function-after[check]", "kind")) == 3  # non-keys are skipped
    assert doc.line_of(("items", 1, "missing")) == 4  # the deepest key the file has: the list item
    assert [(d.line, d.message) for d in doc.duplicates] == [(5, "duplicate key 'kind' under items.1")]


def test_validation_errors_are_listed_at_their_lines(tmp_path):
    path = _file(tmp_path, "name: x\nitems:\n  - kind: a\n  - kind: c\ncolour: red\n")
    with pytest.raises(ConfigError) as err:
        validate(read_yaml(path, what="thing"), Outer, what="thing file", fix="see the docs")
    message = err.value.message
    assert f"thing file {path} has 2 problems:" in message
    assert f"{path}:4: items.1.kind: Input should be 'a' or 'b'" in message
    assert f"{path}:5: colour: unknown key 'colour'" in message
    assert err.value.fix == "see the docs"


def test_a_valid_file_validates(tmp_path):
    doc = read_yaml(_file(tmp_path, "name: x\nitems: [{kind: b}]\n"), what="thing")
    assert validate(doc, Outer, what="thing", fix="-") == Outer(name="x", items=[Inner(kind="b")])
