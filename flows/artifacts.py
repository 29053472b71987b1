"""Prefect artifacts published by the flows: aggregates only (counts, rates, money), never members.

Keys are lowercase letters, digits and dashes (Prefect's rule), e.g. ``segments-rfm11-2025q4``; a
key keeps its history across runs, so the UI shows how a segment summary changed quarter to quarter.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from campaigns.plan import period_label

_KEY_CHARS = re.compile(r"[^a-z0-9]+")


def artifact_key(kind: str, scheme: str, as_of: date, *extra: str) -> str:
    """``kind-scheme-period[-extra…]`` normalised to Prefect's allowed key characters."""
    raw = "-".join([kind, scheme, period_label(as_of), *extra]).lower()
    return _KEY_CHARS.sub("-", raw).strip("-")


def table_rows(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame (or list of dicts) as JSON-safe rows for a table artifact."""
    if frame is None:
        return []
    if hasattr(frame, "to_json"):
        if getattr(frame, "index", None) is not None and frame.index.name is not None:
            frame = frame.reset_index()
        rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records", date_format="iso"))
    else:
        rows = json.loads(json.dumps(list(frame), default=str))
    return rows


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """Create a table artifact (inside a flow or task run)."""
    create_table_artifact(table=rows or [{"note": "no rows"}], key=key, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Create a markdown artifact (inside a flow or task run)."""
    create_markdown_artifact(markdown=markdown, key=key, description=description)
