"""What counts as a valid e-mail address: one rule for ingest (never store an invalid address over a valid
one) and for sync (skip what e-mail APIs reject up front). The pattern is also valid RE2, so DuckDB can
apply it inside the warehouse.

Also how the service refers to a person without storing their address (:func:`email_hash`), and the
per-recipient unsubscribe link: the destinations (suppressions, sync state, the ``List-Unsubscribe`` header)
and the templates (the body's link) use the same functions, so the header and the body carry the same link.
:class:`RenderedEmail` is what the templates render and the destinations send."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlencode

EMAIL_PATTERN = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
EMAIL_RE = re.compile(EMAIL_PATTERN)


def is_valid_email(email: str) -> bool:
    """A pragmatic syntax check (what email APIs reject up front)."""
    return 3 <= len(email) <= 254 and bool(EMAIL_RE.match(email))


def normalize_email(email: str | None) -> str:
    """Lower-cased, stripped email ('' when missing)."""
    return (email or "").strip().lower()


def email_hash(email: str | None) -> str:
    """sha256 of the normalized email: how suppressions and sync state refer to a person."""
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()


def unsubscribe_token(email: str | None) -> str:
    """The member's token in unsubscribe links (the start of :func:`email_hash`)."""
    return email_hash(email)[:24]


def unsubscribe_url(base_url: str, email: str | None, campaign_id: str) -> str:
    """The member's one-click unsubscribe link: ``base_url`` with the member's token (``u``) and the
    campaign (``c``); no login is needed, the link itself says who leaves which campaign's list."""
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}{urlencode({'u': unsubscribe_token(email), 'c': campaign_id})}"


@dataclass(frozen=True)
class RenderedEmail:
    """One rendered email."""

    subject: str
    html: str
    text: str
