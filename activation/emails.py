"""What counts as a valid e-mail address: one rule for ingest (never store an invalid address over a valid
one) and for sync (skip what e-mail APIs reject up front). The pattern is also valid RE2, so DuckDB can
apply it inside the warehouse."""

from __future__ import annotations

import re

EMAIL_PATTERN = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
EMAIL_RE = re.compile(EMAIL_PATTERN)


def is_valid_email(email: str) -> bool:
    """A pragmatic syntax check (what email APIs reject up front)."""
    return 3 <= len(email) <= 254 and bool(EMAIL_RE.match(email))
