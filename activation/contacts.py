"""How the service refers to a person without storing their address, and the link that lets them leave.

Used by the destinations (suppressions, sync state, the ``List-Unsubscribe`` header) and by the templates
(the body's unsubscribe link), so the header and the body always carry the same per-recipient link.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlencode


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
