"""``activation templates preview``: one rendered email per segment, for a sample customer, plus an index.

The sample customer of a segment is the first (by customer id) of that segment in the latest snapshot of the
scheme, with their first name when the customers table has it; without a snapshot it is a made-up "Alex".
Files are self-contained (inline CSS, no scripts, no network).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from activation.errors import ConfigError
from activation.files import atomic_write_all, output_dir
from activation.settings import Settings
from activation.split import campaign_key
from activation.tables import customers, rfm_snapshots
from activation.warehouse import has_table
from campaigns.coupons import coupon_codes
from campaigns.plan import _slug, sample_campaign
from campaigns.policy import load_policy, scheme_segments
from campaigns.render import RenderError, render_member

#: The member a segment's preview is rendered for while the scheme has no snapshot.
MADE_UP_MEMBER: dict[str, str | None] = {
    "customer_id": "sample-0001",
    "first_name": "Alex",
    "email": "alex@example.com",
}


@dataclass
class PreviewItem:
    segment: str
    file: str | None
    text_file: str | None
    subject: str
    offer: str
    sample: str
    error: str | None = None


def _sample_members(
    engine: Engine | None, scheme: str
) -> tuple[date | None, dict[str, dict[str, str | None]]]:
    if engine is None:
        return None, {}
    with engine.connect() as conn:
        as_of = conn.execute(
            select(func.max(rfm_snapshots.c.as_of)).where(rfm_snapshots.c.scheme == scheme)
        ).scalar()
        if as_of is None:
            return None, {}
        first = (
            select(rfm_snapshots.c.segment, func.min(rfm_snapshots.c.customer_id).label("customer_id"))
            .where(rfm_snapshots.c.as_of == as_of, rfm_snapshots.c.scheme == scheme)
            .group_by(rfm_snapshots.c.segment)
            .subquery()
        )
        cols = [first.c.segment, first.c.customer_id]
        frm: Any = first
        if has_table(conn, "customers"):
            frm = first.outerjoin(customers, customers.c.customer_id == first.c.customer_id)
            cols += [customers.c.first_name, customers.c.email]
        rows = conn.execute(select(*cols).select_from(frm)).all()
    samples = {}
    for r in rows:
        m = r._mapping
        samples[m["segment"]] = {
            "customer_id": m["customer_id"],
            "first_name": m.get("first_name"),
            "email": m.get("email"),
        }
    return (as_of if isinstance(as_of, date) else date.fromisoformat(str(as_of))), samples


def sample_coupon(
    settings: Settings, scheme: str, as_of: date, segment: str, offer: Any, member: Mapping[str, Any]
) -> str | None:
    """The coupon code ``member`` would get in the segment's campaign (None for an offer without one):
    codes derive from the campaign key and the customer id, so the plan gives the same one."""
    if not offer.has_coupon:
        return None
    key = campaign_key(scheme, as_of, segment)
    return coupon_codes(settings.coupon_key(), key, [str(member["customer_id"])], offer.coupon_prefix or "")[
        0
    ]


def write_previews(
    settings: Settings,
    out_dir: Path,
    *,
    engine: Engine | None = None,
    scheme: str | None = None,
    segment: str | None = None,
) -> list[PreviewItem]:
    """Render one preview per segment into ``out_dir`` and write ``out_dir/index.html``.

    A template that fails is listed in the index with its error (the other previews are still written).

    Raises:
        ConfigError: invalid policy, unknown scheme or segment.
    """
    out_dir = output_dir(out_dir)
    scheme = scheme or settings.default_scheme
    policy = load_policy(settings)
    known = scheme_segments(scheme, settings)
    segments = list(known) if known else policy.listed_segments(scheme)
    if not segments:
        raise ConfigError(f"unknown scheme {scheme!r}", fix="use --scheme with a scheme of segments/schemes")
    if segment is not None:
        if segment not in segments:
            raise ConfigError(
                f"scheme {scheme!r} has no segment {segment!r}", fix=f"use one of: {', '.join(segments)}"
            )
        segments = [segment]
    as_of, samples = _sample_members(engine, scheme)
    as_of = as_of or date.today()
    items: list[PreviewItem] = []
    files: list[tuple[Path, str]] = []
    for seg in segments:
        resolved = policy.for_segment(scheme, seg)
        offer = resolved.offer
        if resolved.suppress:
            items.append(PreviewItem(seg, None, None, "", "suppressed: no email is sent", ""))
            continue
        sample = samples.get(seg) or MADE_UP_MEMBER
        member = {**sample, "coupon_code": sample_coupon(settings, scheme, as_of, seg, offer, sample)}
        campaign = sample_campaign(resolved, as_of)
        who = f"customer {sample['customer_id']}" + (
            f" ({sample['first_name']})" if sample.get("first_name") else ""
        )
        if seg not in samples:
            who = "made-up customer Alex (no snapshot yet)"
        base = f"{_slug(scheme)}-{_slug(seg)}"
        try:
            email = render_member(settings, campaign, member)
        except RenderError as exc:
            items.append(PreviewItem(seg, None, None, "", offer.describe(), who, error=str(exc)))
            continue
        files += [(out_dir / f"{base}.html", email.html), (out_dir / f"{base}.txt", email.text)]
        items.append(PreviewItem(seg, f"{base}.html", f"{base}.txt", email.subject, offer.describe(), who))
    files.append((out_dir / "index.html", _index(scheme, as_of, items, settings)))
    atomic_write_all(files)
    return items


def _index(scheme: str, as_of: date, items: list[PreviewItem], settings: Settings) -> str:
    e = html.escape
    rows = []
    for it in items:
        if it.error:
            link = f'<span style="color:#b91c1c">failed: {e(it.error)}</span>'
        elif it.file:
            link = f'<a href="{e(it.file)}">HTML</a> · <a href="{e(it.text_file or "")}">text</a>'
        else:
            link = "—"
        rows.append(
            f"<tr><td><strong>{e(it.segment)}</strong></td><td>{e(it.subject)}</td><td>{e(it.offer)}</td>"
            f"<td>{e(it.sample)}</td><td>{link}</td></tr>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(settings.brand.name)} · {e(scheme)} email previews</title>
<style>
body{{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#18181b}}
table{{border-collapse:collapse;width:100%;max-width:1100px}}
td,th{{border-bottom:1px solid #e4e4e7;padding:8px 10px;text-align:left;vertical-align:top;font-size:14px}}
th{{background:#f4f4f5}}
</style></head><body>
<h1>{e(scheme)} email previews</h1>
<p>Snapshot as of {e(as_of.isoformat())}. One email per segment, rendered for a sample customer.</p>
<table><tr><th>Segment</th><th>Subject</th><th>Offer</th><th>Sample customer</th><th>Preview</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
