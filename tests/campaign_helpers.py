"""Helpers for the campaigns tests: a private copy of the shipped templates, snapshot rows inserted directly
(``rfm_snapshots`` is the contract with segmentation), customers and suppressions."""

from __future__ import annotations

import hashlib
import shutil
from datetime import date, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from activation.settings import REPO_ROOT, Settings
from activation.tables import campaign_members, campaigns, customers, rfm_snapshots, suppressions

AS_OF = date(2025, 12, 31)
RFM11 = (
    "Champions",
    "Loyal Customers",
    "Potential Loyalists",
    "New Customers",
    "Promising",
    "Need Attention",
    "About To Sleep",
    "At Risk",
    "Can't Lose Them",
    "Hibernating",
    "Lost",
)


def private_templates(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Copy the shipped templates to tmp_path/templates and point settings (and the env, for the CLI) there."""
    dest = tmp_path / "templates"
    if not dest.exists():
        shutil.copytree(REPO_ROOT / "templates", dest)
    monkeypatch.setenv("ACTIVATION_TEMPLATES_DIR", str(dest))
    return settings.model_copy(update={"templates_dir": dest})


def insert_snapshot(
    engine: Engine,
    n: int,
    *,
    as_of: date = AS_OF,
    scheme: str = "rfm11",
    segments: tuple[str, ...] = RFM11,
    segment_of=None,
) -> None:
    """n customers ``c000000``…, segment i % len(segments) (or ``segment_of(i)``)."""
    rows = [
        {
            "as_of": as_of,
            "scheme": scheme,
            "customer_id": f"c{i:06d}",
            "recency_days": i % 300,
            "frequency": 1 + i % 7,
            "monetary": 10.0 + i % 500,
            "r_score": 1 + i % 5,
            "f_score": 1 + i % 5,
            "m_score": 1 + i % 5,
            "segment": segment_of(i) if segment_of else segments[i % len(segments)],
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        for i in range(0, len(rows), 20_000):
            conn.execute(insert(rfm_snapshots), rows[i : i + 20_000])


def email_of(i: int) -> str:
    return f"Customer.{i}@Example.com"


def insert_customers(
    engine: Engine, n: int, *, no_email_every: int = 9, unsubscribed_every: int = 31
) -> None:
    rows = [
        {
            "customer_id": f"c{i:06d}",
            "email": None if i % no_email_every == 0 else email_of(i),
            "first_name": f"Name{i}",
            "unsubscribed": i % unsubscribed_every == 1,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(insert(customers), rows)


def suppress(engine: Engine, indices: list[int], reason: str = "cleaned") -> None:
    now = datetime(2025, 12, 1)
    with engine.begin() as conn:
        conn.execute(
            insert(suppressions),
            [
                {
                    "email_hash": hashlib.sha256(f"  {email_of(i)} ".strip().lower().encode()).hexdigest(),
                    "reason": reason,
                    "source": "manual",
                    "created_at": now,
                }
                for i in indices
            ],
        )


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(campaigns)).scalar_one(),
            conn.execute(select(func.count()).select_from(campaign_members)).scalar_one(),
        )
