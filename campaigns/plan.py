"""Campaign planning: one campaign per active segment of a snapshot, its members split into treatment and
holdout, a personal coupon per treated member of a coupon offer.

Rules:

* ``campaign_key`` = ``<scheme>/<as_of>/<segment>`` is stable across versions; ``campaign_id`` is readable,
  e.g. ``rfm11-2025q4-champions-v1`` (``2025q4`` when as_of is a quarter's last day, else ``20251115``).
* Holdout: ``md5("<campaign_key>|<customer_id>")``'s first 32 bits / 2**32 < holdout share, computed in the
  warehouse (same value on every dialect, see :func:`member_group` for the Python twin). The key excludes the
  version, so a member stays in the same group when the campaign gets a new version.
* Excluded before the split, and counted per reason in ``campaigns.excluded``: ``customers.unsubscribed``
  (``unsubscribed``), any row of ``suppressions`` for the member's email hash (its reason), migration
  targeting not met (``not_targeted``). Members without an email are planned (the sync skips them).
* Idempotent: when the latest version has the same template hash, policy hash and segment size, nothing is
  written. Otherwise a new version is added; old versions stay.
* All writes of one plan run happen in one transaction; templates are rendered (both modes) before it starts,
  so a bad policy or template writes nothing.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    String,
    and_,
    case,
    column,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.engine import Connection, Engine

from activation import dialect
from activation.errors import ConfigError, NotFoundError
from activation.settings import Settings
from activation.tables import campaign_members, campaigns, rfm_snapshots, suppressions
from activation.warehouse import has_table
from campaigns.coupons import assign_coupons
from campaigns.offers import parse_offer
from campaigns.policy import ResolvedPolicy, check_segments, load_policy, scheme_segments
from campaigns.render import RenderError, render_member, render_merge_tags, template_hash

EXPORT_COLUMNS = ("campaign_id", "segment", "customer_id", "group", "offer", "coupon_code", "template_version")


@dataclass(frozen=True)
class CampaignRow:
    """One row of ``campaigns``."""

    campaign_id: str
    campaign_key: str
    version: int
    as_of: date
    scheme: str
    segment: str
    template: str
    subject: str
    offer_type: str
    offer: str
    holdout_share: float
    template_hash: str
    policy_hash: str
    destinations: list[str]
    treated: int
    holdout: int
    excluded: dict[str, int]
    send_time: datetime | None
    created_at: datetime

    @property
    def offer_policy(self) -> Any:
        """The parsed offer (``discount_for``, ``describe`` …)."""
        return parse_offer(self.offer)

    @property
    def template_version(self) -> str:
        return f"{self.template}@{self.template_hash[:12]}"

    @classmethod
    def from_row(cls, row: Any) -> CampaignRow:
        m = dict(row._mapping)
        m["destinations"] = json.loads(m["destinations"])
        m["excluded"] = json.loads(m["excluded"])
        m["as_of"] = m["as_of"] if isinstance(m["as_of"], date) else date.fromisoformat(str(m["as_of"]))
        return cls(**m)


@dataclass(frozen=True)
class CampaignMember:
    """A member of a campaign with the contact data a destination needs."""

    campaign_id: str
    customer_id: str
    member_group: str  # treatment | holdout
    coupon_code: str | None
    email: str | None
    first_name: str | None


@dataclass
class SegmentPlan:
    segment: str
    status: str  # created | unchanged | suppressed
    campaign_id: str | None = None
    treated: int = 0
    holdout: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    offer: str = ""
    holdout_share: float = 0.0


@dataclass
class PlanResult:
    as_of: date
    scheme: str
    segments: list[SegmentPlan]

    @property
    def created(self) -> list[SegmentPlan]:
        return [s for s in self.segments if s.status == "created"]


# ---------------------------------------------------------------------------------------------- helpers

def _slug(text: str) -> str:
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "segment"


def period_label(as_of: date) -> str:
    """``2025q4`` when as_of is the last day of a quarter, else ``20251115``."""
    if (as_of.month, as_of.day) in {(3, 31), (6, 30), (9, 30), (12, 31)}:
        return f"{as_of.year}q{(as_of.month - 1) // 3 + 1}"
    return as_of.strftime("%Y%m%d")


def campaign_key(scheme: str, as_of: date, segment: str) -> str:
    return f"{scheme}/{as_of.isoformat()}/{segment}"


def campaign_id_for(scheme: str, as_of: date, segment: str, version: int) -> str:
    return f"{_slug(scheme)}-{period_label(as_of)}-{_slug(segment)}-v{version}"


def holdout_threshold(share: float) -> int:
    return int(round(share * 2**32))


def member_group(key: str, customer_id: str, share: float) -> str:
    """Python twin of the warehouse split (for checks and tests)."""
    import hashlib

    bucket = int(hashlib.md5(f"{key}|{customer_id}".encode()).hexdigest()[:8], 16)
    return "holdout" if bucket < holdout_threshold(share) else "treatment"


def _customers_table(settings: Settings) -> Any:
    src = settings.customers
    schema, name = (src.table.split(".", 1) if "." in src.table else (None, src.table))
    cols = [column(src.customer_id, String)]
    for c in (src.email, src.first_name, src.unsubscribed):
        if c:
            cols.append(column(c))
    return table(name, *cols, schema=schema)


def _validate_templates(settings: Settings, resolved: ResolvedPolicy, as_of: date) -> str:
    """Render both modes with a sample member; returns the template hash. Raises RenderError."""
    thash = template_hash(settings, resolved.template)
    sample = {
        "campaign_id": campaign_id_for(resolved.scheme, as_of, resolved.segment, 1),
        "scheme": resolved.scheme, "segment": resolved.segment, "as_of": as_of,
        "template": resolved.template, "subject": resolved.subject, "offer": resolved.offer.model_dump_json(),
    }
    missing = [ext for ext in ("html", "txt") if not (Path(settings.templates_dir) / f"{resolved.template}.{ext}").is_file()]
    if missing:
        raise RenderError(
            f"template {resolved.template!r} (segment {resolved.segment!r} of {resolved.scheme}) has no "
            f"{' and no '.join('.' + m for m in missing)} file",
            file=str(settings.policy_file), line=resolved.line, reason="missing",
            fix=f"create {resolved.template}.html and {resolved.template}.txt in the templates folder, "
                "or use an existing template in policy.yaml")
    render_merge_tags(settings, sample)
    render_member(settings, sample, {"customer_id": "sample", "email": "sample@example.com",
                                     "first_name": "Alex", "coupon_code": "XX-ABCDE-FGHJK"})
    return thash


# ---------------------------------------------------------------------------------------------- SQL

def _member_select(conn: Connection, settings: Settings, as_of: date, scheme: str, segment: str,
                   resolved: ResolvedPolicy, prev_as_of: date | None, key: str) -> tuple[Any, Any, Any]:
    """(customer_id, exclusion reason or NULL, group) for every snapshot member of the segment."""
    s = rfm_snapshots.alias("s")
    src = settings.customers
    frm: Any = s
    reasons: list[tuple[Any, Any]] = []
    if has_table(conn, src.table):
        c = _customers_table(settings).alias("c")
        frm = frm.outerjoin(c, c.c[src.customer_id] == s.c.customer_id)
        if src.unsubscribed:
            reasons.append((c.c[src.unsubscribed] == literal(True), literal("unsubscribed")))
        if src.email:
            sup = (select(suppressions.c.email_hash, func.min(suppressions.c.reason).label("reason"))
                   .group_by(suppressions.c.email_hash).subquery("sup"))
            email_hash = dialect.sha256_hex(func.lower(func.trim(c.c[src.email])), conn)
            frm = frm.outerjoin(sup, sup.c.email_hash == email_hash)
            reasons.append((sup.c.reason.is_not(None), sup.c.reason))
    t = resolved.targeting
    if t is not None:
        from_segments = t.from_segments
        if prev_as_of is None:
            if from_segments is not None:
                reasons.append((literal(True), literal("not_targeted")))
        else:
            p = rfm_snapshots.alias("p")
            frm = frm.outerjoin(p, and_(p.c.as_of == prev_as_of, p.c.scheme == scheme,
                                        p.c.customer_id == s.c.customer_id))
            ok = literal(True)
            if from_segments is not None:
                ok = and_(ok, p.c.segment.in_(from_segments))
            if t.entered_since_previous:
                ok = and_(ok, or_(p.c.segment.is_(None), p.c.segment != segment))
            reasons.append((~ok, literal("not_targeted")))
    reason = case(*reasons, else_=null()) if reasons else null()
    bucket = dialect.hash_bucket(literal(key + "|", String).concat(s.c.customer_id), conn)
    group = case((bucket < holdout_threshold(resolved.holdout_share), literal("holdout")), else_=literal("treatment"))
    where = and_(s.c.as_of == as_of, s.c.scheme == scheme, s.c.segment == segment)
    return frm, where, (s.c.customer_id, reason.label("reason"), group.label("member_group"))


def _bulk_insert(conn: Connection, rows: list[tuple[str, str, str, str | None]]) -> None:
    if not rows:
        return
    raw = conn.connection.driver_connection
    if dialect.is_duckdb(conn):
        import pyarrow as pa

        cols = list(zip(*rows, strict=True))
        tbl = pa.table({"campaign_id": pa.array(cols[0], pa.string()), "customer_id": pa.array(cols[1], pa.string()),
                        "member_group": pa.array(cols[2], pa.string()), "coupon_code": pa.array(cols[3], pa.string())})
        raw.register("_plan_members", tbl)
        try:
            raw.execute("INSERT INTO campaign_members (campaign_id, customer_id, member_group, coupon_code) "
                        "SELECT campaign_id, customer_id, member_group, coupon_code FROM _plan_members")
        finally:
            raw.unregister("_plan_members")
    elif dialect.is_postgres(conn):
        with raw.cursor() as cur, cur.copy(
            "COPY campaign_members (campaign_id, customer_id, member_group, coupon_code) FROM STDIN"
        ) as cp:
            for row in rows:
                cp.write_row(row)
    else:
        keys = ("campaign_id", "customer_id", "member_group", "coupon_code")
        for i in range(0, len(rows), 10_000):
            conn.execute(insert(campaign_members), [dict(zip(keys, r, strict=True)) for r in rows[i:i + 10_000]])


def _taken_codes(conn: Connection, key: str) -> Any:
    """Which of the given codes are used by a member of another campaign key (earlier versions of the same
    key hold the same member's same code, which is not a clash)."""

    def taken(codes: list[str]) -> set[str]:
        found: set[str] = set()
        m, c = campaign_members, campaigns
        for i in range(0, len(codes), 5_000):
            chunk = codes[i:i + 5_000]
            q = (select(m.c.coupon_code).join(c, c.c.campaign_id == m.c.campaign_id)
                 .where(m.c.coupon_code.in_(chunk), c.c.campaign_key != key))
            found.update(r[0] for r in conn.execute(q))
        return found

    return taken


def _global_clashes(conn: Connection, new_id: str, key: str) -> set[str]:
    """Codes of the new campaign also held by a member of another campaign key (checked in the warehouse)."""
    m, o, oc = campaign_members.alias("m"), campaign_members.alias("o"), campaigns.alias("oc")
    q = (select(m.c.coupon_code).distinct()
         .select_from(m.join(o, and_(o.c.coupon_code == m.c.coupon_code, o.c.campaign_id != m.c.campaign_id))
                      .join(oc, oc.c.campaign_id == o.c.campaign_id))
         .where(m.c.campaign_id == new_id, m.c.coupon_code.is_not(None), oc.c.campaign_key != key))
    return {r[0] for r in conn.execute(q)}


# ---------------------------------------------------------------------------------------------- plan

def _latest(conn: Connection, key: str) -> CampaignRow | None:
    row = conn.execute(select(campaigns).where(campaigns.c.campaign_key == key)
                       .order_by(campaigns.c.version.desc()).limit(1)).first()
    return CampaignRow.from_row(row) if row else None


def _segment_order(settings: Settings, scheme: str, present: Sequence[str]) -> list[str]:
    known = scheme_segments(scheme, settings) or []
    return [s for s in known if s in present] + sorted(s for s in present if s not in known)


def plan_campaigns(engine: Engine, settings: Settings, as_of: date, scheme: str) -> PlanResult:
    """Plan one campaign per active segment of the ``as_of`` snapshot of ``scheme`` (see module docstring).

    Raises:
        ConfigError: the policy is invalid or names segments the scheme does not have.
        TemplateError: a template is missing, does not parse, breaks the sandbox or a limit.
        NotFoundError: there is no snapshot for ``as_of`` and ``scheme``.
    """
    policy = load_policy(settings)
    issues = check_segments(policy, settings, [scheme])
    if issues:
        raise ConfigError("invalid offer policy:\n" + "\n".join(f"  {i}" for i in issues),
                          fix=issues[0].fix or "correct the policy file")
    with engine.connect() as conn:
        sizes = dict(conn.execute(
            select(rfm_snapshots.c.segment, func.count())
            .where(rfm_snapshots.c.as_of == as_of, rfm_snapshots.c.scheme == scheme)
            .group_by(rfm_snapshots.c.segment)).all())
        prev_as_of = conn.execute(select(func.max(rfm_snapshots.c.as_of)).where(
            rfm_snapshots.c.scheme == scheme, rfm_snapshots.c.as_of < as_of)).scalar()
    if not sizes:
        raise NotFoundError(f"no {scheme} snapshot as of {as_of.isoformat()}",
                            fix=f"run `activation segment --as-of {as_of.isoformat()} --scheme {scheme}` first")
    if isinstance(prev_as_of, datetime):
        prev_as_of = prev_as_of.date()

    # Everything that can fail on bad input is checked before the write transaction starts.
    todo: list[tuple[str, ResolvedPolicy, str]] = []
    result = PlanResult(as_of=as_of, scheme=scheme, segments=[])
    order = _segment_order(settings, scheme, list(sizes))
    for segment in order:
        resolved = policy.for_segment(scheme, segment)
        if resolved.suppress:
            result.segments.append(SegmentPlan(segment, "suppressed", offer="suppressed",
                                               excluded={"suppressed_segment": int(sizes[segment])}))
            continue
        todo.append((segment, resolved, _validate_templates(settings, resolved, as_of)))

    key_bytes = settings.coupon_key()
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        for segment, resolved, thash in todo:
            result.segments.append(_plan_segment(conn, settings, as_of, scheme, segment, resolved, thash,
                                                 int(sizes[segment]), prev_as_of, key_bytes, now))
    result.segments.sort(key=lambda sp: order.index(sp.segment))
    return result


def _plan_segment(conn: Connection, settings: Settings, as_of: date, scheme: str, segment: str,
                  resolved: ResolvedPolicy, thash: str, size: int, prev_as_of: date | None,
                  key_bytes: bytes, now: datetime) -> SegmentPlan:
    key = campaign_key(scheme, as_of, segment)
    phash = resolved.policy_hash
    offer = resolved.offer
    latest = _latest(conn, key)
    if (latest is not None and latest.template_hash == thash and latest.policy_hash == phash
            and latest.treated + latest.holdout + sum(latest.excluded.values()) == size):
        return SegmentPlan(segment, "unchanged", latest.campaign_id, latest.treated, latest.holdout,
                           latest.excluded, offer.describe(), latest.holdout_share)
    version = (latest.version + 1) if latest else 1
    cid = campaign_id_for(scheme, as_of, segment, version)
    clash = conn.execute(select(campaigns.c.campaign_key).where(campaigns.c.campaign_id == cid)).scalar()
    if clash is not None and clash != key:  # two segment names with the same slug
        import hashlib

        cid = f"{cid}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"

    frm, where, (cust, reason, group) = _member_select(conn, settings, as_of, scheme, segment, resolved,
                                                       prev_as_of, key)
    excluded = {r: int(n) for r, n in conn.execute(
        select(reason, func.count()).select_from(frm).where(where).group_by(reason.element)).all() if r is not None}
    eligible = and_(where, reason.element.is_(None))
    if offer.has_coupon:
        conn.execute(insert(campaign_members).from_select(
            ["campaign_id", "customer_id", "member_group", "coupon_code"],
            select(literal(cid, String), cust, literal("holdout", String), null())
            .select_from(frm).where(eligible, group.element == "holdout")))
        treated_ids = conn.execute(select(cust).select_from(frm).where(eligible, group.element == "treatment")
                                   ).scalars().all()
        codes = assign_coupons(key_bytes, key, treated_ids, offer.coupon_prefix or "")
        _bulk_insert(conn, [(cid, c, "treatment", codes[c]) for c in treated_ids])
        clashes = _global_clashes(conn, cid, key)
        if clashes:
            _resolve_clashes(conn, cid, key, key_bytes, offer.coupon_prefix or "", clashes)
    else:
        conn.execute(insert(campaign_members).from_select(
            ["campaign_id", "customer_id", "member_group", "coupon_code"],
            select(literal(cid, String), cust, group.element, null()).select_from(frm).where(eligible)))
    counts = dict(conn.execute(select(campaign_members.c.member_group, func.count())
                               .where(campaign_members.c.campaign_id == cid)
                               .group_by(campaign_members.c.member_group)).all())
    treated, holdout = int(counts.get("treatment", 0)), int(counts.get("holdout", 0))
    excluded = dict(sorted(excluded.items()))
    conn.execute(insert(campaigns).values(
        campaign_id=cid, campaign_key=key, version=version, as_of=as_of, scheme=scheme, segment=segment,
        template=resolved.template, subject=resolved.subject, offer_type=offer.type,
        offer=offer.model_dump_json(), holdout_share=resolved.holdout_share, template_hash=thash,
        policy_hash=phash, destinations=json.dumps(list(resolved.destinations)), treated=treated,
        holdout=holdout, excluded=json.dumps(excluded), send_time=None, created_at=now))
    return SegmentPlan(segment, "created", cid, treated, holdout, excluded, offer.describe(),
                       resolved.holdout_share)


def _resolve_clashes(conn: Connection, cid: str, key: str, key_bytes: bytes, prefix: str,
                     clashes: set[str]) -> None:
    """Re-derive the codes of members whose code another campaign already holds (older rows win)."""
    m = campaign_members
    losers = conn.execute(select(m.c.customer_id).where(m.c.campaign_id == cid, m.c.coupon_code.in_(clashes))
                          ).scalars().all()
    keep = {c for c in conn.execute(select(m.c.coupon_code).where(m.c.campaign_id == cid,
                                                                  m.c.coupon_code.is_not(None))).scalars()}
    taken_elsewhere = _taken_codes(conn, key)

    def taken(codes: list[str]) -> set[str]:
        return (set(codes) & keep) | taken_elsewhere(codes)

    from campaigns.coupons import MAX_ATTEMPTS, coupon_codes

    pending = sorted(losers)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if not pending:
            break
        fresh = coupon_codes(key_bytes, key, pending, prefix, attempt)
        bad = taken(fresh)
        still = []
        for customer, code in zip(pending, fresh, strict=True):
            if code in bad or code in keep:
                still.append(customer)
                continue
            keep.add(code)
            conn.execute(update(m).where(m.c.campaign_id == cid, m.c.customer_id == customer)
                         .values(coupon_code=code))
        pending = still
    if pending:
        raise ConfigError(f"could not find free coupon codes for {len(pending)} members of {key}",
                          fix="use a different coupon prefix for this offer")


# ---------------------------------------------------------------------------------------------- reading

def current_campaigns(engine: Engine | Connection, as_of: date, scheme: str) -> list[CampaignRow]:
    """The latest version of each segment's campaign for ``as_of`` and ``scheme`` (ordered by segment)."""
    latest = (select(campaigns.c.campaign_key, func.max(campaigns.c.version).label("version"))
              .where(campaigns.c.as_of == as_of, campaigns.c.scheme == scheme)
              .group_by(campaigns.c.campaign_key).subquery())
    q = (select(campaigns).join(latest, and_(latest.c.campaign_key == campaigns.c.campaign_key,
                                             latest.c.version == campaigns.c.version))
         .order_by(campaigns.c.segment))

    def run(conn: Connection) -> list[CampaignRow]:
        return [CampaignRow.from_row(r) for r in conn.execute(q)]

    if isinstance(engine, Connection):
        return run(engine)
    with engine.connect() as conn:
        return run(conn)


def get_campaign(engine: Engine, campaign_id: str) -> CampaignRow:
    """One campaign by id. Raises NotFoundError."""
    with engine.connect() as conn:
        row = conn.execute(select(campaigns).where(campaigns.c.campaign_id == campaign_id)).first()
    if row is None:
        raise NotFoundError(f"no campaign {campaign_id!r}", fix="run `activation plan` and use an id it prints")
    return CampaignRow.from_row(row)


def _members_query(engine: Engine | Connection, settings: Settings | None, campaign_id: str,
                   group: str | None) -> Any:
    m = campaign_members
    src = (settings.customers if settings is not None else None)
    cols: list[Any] = [m.c.campaign_id, m.c.customer_id, m.c.member_group, m.c.coupon_code]
    frm: Any = m
    table_name = src.table if src else "customers"
    if has_table(engine, table_name):
        if settings is None:
            from activation.tables import customers as c

            frm = frm.outerjoin(c, c.c.customer_id == m.c.customer_id)
            cols += [c.c.email.label("email"), c.c.first_name.label("first_name")]
        else:
            c = _customers_table(settings).alias("c")
            frm = frm.outerjoin(c, c.c[src.customer_id] == m.c.customer_id)  # type: ignore[union-attr]
            cols.append(c.c[src.email].label("email") if src.email else null().label("email"))  # type: ignore[union-attr]
            cols.append(c.c[src.first_name].label("first_name") if src.first_name else null().label("first_name"))  # type: ignore[union-attr]
    else:
        cols += [null().label("email"), null().label("first_name")]
    q = select(*cols).select_from(frm).where(m.c.campaign_id == campaign_id)
    if group is not None:
        q = q.where(m.c.member_group == group)
    return q.order_by(m.c.customer_id)


def iter_members(engine: Engine, campaign_id: str, *, group: str | None = None,
                 settings: Settings | None = None, batch_size: int = 10_000) -> Iterator[CampaignMember]:
    """Members of a campaign (optionally one group) with email and first name, ordered by customer id.

    ``settings`` selects a mapped customers source (``Settings.customers``); without it the ``customers``
    table is used.
    """
    q = _members_query(engine, settings, campaign_id, group)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(q)
        for row in result:
            yield CampaignMember(row.campaign_id, row.customer_id, row.member_group, row.coupon_code,
                                 row.email, row.first_name)


def read_members(engine: Engine, campaign_id: str, *, group: str | None = None,
                 settings: Settings | None = None) -> list[CampaignMember]:
    """All members of a campaign as a list (see :func:`iter_members`)."""
    return list(iter_members(engine, campaign_id, group=group, settings=settings))


def export_campaigns(engine: Engine, as_of: date, scheme: str, out: Path) -> int:
    """Write the current campaigns' members as CSV (:data:`EXPORT_COLUMNS`); returns the row count.

    Raises:
        NotFoundError: no campaign was planned for ``as_of`` and ``scheme``.
    """
    rows = current_campaigns(engine, as_of, scheme)
    if not rows:
        raise NotFoundError(f"no campaigns planned for {scheme} as of {as_of.isoformat()}",
                            fix=f"run `activation plan --as-of {as_of.isoformat()} --scheme {scheme}` first")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    m = campaign_members
    with out.open("w", newline="", encoding="utf-8") as fh, engine.connect() as conn:
        writer = csv.writer(fh)
        writer.writerow(EXPORT_COLUMNS)
        for camp in sorted(rows, key=lambda r: r.campaign_id):
            result = conn.execution_options(stream_results=True, yield_per=50_000).execute(
                select(m.c.customer_id, m.c.member_group, m.c.coupon_code)
                .where(m.c.campaign_id == camp.campaign_id).order_by(m.c.customer_id))
            for customer_id, grp, code in result:
                writer.writerow((camp.campaign_id, camp.segment, customer_id, grp, camp.offer_type,
                                 code or "", camp.template_version))
                n += 1
    return n
