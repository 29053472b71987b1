"""Campaign planning: one campaign per active segment of a snapshot, its members split into treatment and
holdout, a personal coupon per treated member of a coupon offer.

Rules:

* ``campaign_key`` = ``<scheme>/<as_of>/<segment>`` is stable across versions; ``campaign_id`` is readable,
  e.g. ``rfm11-2025q4-champions-v1`` (``2025q4`` when as_of is a quarter's last day, else ``20251115``).
* Holdout: ``md5("<campaign_key>|<customer_id>")``'s first 32 bits / 2**32 < holdout share, computed in the
  warehouse (same value on every dialect; ``activation.split`` holds both twins, the demo data uses the
  Python one). The key excludes the
  version, so a member stays in the same group when the campaign gets a new version.
* Excluded before the split, and counted per reason in ``campaigns.excluded``: ``customers.unsubscribed``
  (``unsubscribed``), any row of ``suppressions`` for the member's email hash (its reason), migration
  targeting not met (``not_targeted``). Members without an email are planned (the sync skips them).
* Idempotent: when the latest version has the same template hash, policy hash and segment size, nothing is
  written. Otherwise a new version is added; old versions stay.
* A segment planned earlier and suppressed now gets a member-less version with offer type ``suppressed``;
  :func:`current_campaigns` then leaves it out.
* All writes of one plan run happen in one transaction; templates are rendered (both modes) before it starts,
  so a bad policy or template writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    String,
    and_,
    case,
    column,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine

from activation import dialect
from activation.chunks import chunked
from activation.clock import utcnow
from activation.errors import ConfigError, NotFoundError
from activation.files import atomic_text, csv_writer, output_file
from activation.settings import Settings
from activation.split import (
    GLOBAL_CONTROL,
    campaign_key,
    global_control_sql,
    holdout_bucket_sql,
    holdout_threshold,
)
from activation.tables import (
    campaign_members,
    campaigns,
    global_control_members,
    rfm_snapshots,
    split_table_name,
    suppressions,
)
from activation.warehouse import has_table
from campaigns.coupons import MAX_ATTEMPTS, coupon_codes, unique_codes
from campaigns.holdout import (
    DEFAULT_BASE_RATE,
    HoldoutSizing,
    Metric,
    SegmentHistory,
    mde_for,
    segment_history,
    size_holdout,
)
from campaigns.offers import offer_record, parse_offer
from campaigns.policy import ResolvedPolicy, check_segments, load_policy, segment_order
from campaigns.render import (
    SAMPLE_MEMBER,
    RenderError,
    member_unsubscribe_url,
    render_member,
    render_merge_tags,
    require_compliance,
    template_hash,
)

RETIRED = "suppressed"  # offer_type of the member-less version written when a planned segment gets suppressed
EXPORT_COLUMNS = (
    "campaign_id",
    "segment",
    "customer_id",
    "group",
    "offer",
    "coupon_code",
    "template_version",
)


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


#: what planning did with a segment: a new campaign, the current one kept, or the segment suppressed
PlanStatus = Literal["created", "unchanged", "suppressed"]


@dataclass
class SegmentPlan:
    segment: str
    status: PlanStatus
    campaign_id: str | None = None
    treated: int = 0
    holdout: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    offer: str = ""
    holdout_share: float = 0.0
    #: the smallest lift the holdout it actually has detects (80 % power, or the target's), and how
    #: that was computed (campaigns.holdout); empty for a suppressed segment or an empty group
    mde_metric: str = ""
    holdout_mde: float | None = None
    holdout_method: str = ""


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


def campaign_id_for(scheme: str, as_of: date, segment: str, version: int) -> str:
    return f"{_slug(scheme)}-{period_label(as_of)}-{_slug(segment)}-v{version}"


def _customers_table(settings: Settings) -> Any:
    src = settings.customers
    schema, name = split_table_name(src.table)
    cols = [column(src.customer_id, String)]
    for c in (src.email, src.first_name, src.unsubscribed):
        if c:
            cols.append(column(c))
    return table(name, *cols, schema=schema)


def sample_campaign(resolved: ResolvedPolicy, as_of: date) -> dict[str, Any]:
    """The campaign (its first version) the policy entry ``resolved`` makes at ``as_of``, as the renderer
    reads it."""
    return {
        "campaign_id": campaign_id_for(resolved.scheme, as_of, resolved.segment, 1),
        "scheme": resolved.scheme,
        "segment": resolved.segment,
        "as_of": as_of,
        "template": resolved.template,
        "subject": resolved.subject,
        "offer": resolved.offer.model_dump_json(),
    }


def _validate_templates(
    settings: Settings, resolved: ResolvedPolicy, as_of: date, subject_line: int | None = None
) -> str:
    """Render both modes with a sample member; returns the template hash. Raises RenderError (a bad subject
    names the policy file and ``subject_line``)."""
    thash = template_hash(settings, resolved.template)
    sample = sample_campaign(resolved, as_of)
    missing = [
        ext
        for ext in ("html", "txt")
        if not (Path(settings.templates_dir) / f"{resolved.template}.{ext}").is_file()
    ]
    if missing:
        raise RenderError(
            f"template {resolved.template!r} (segment {resolved.segment!r} of {resolved.scheme}) has no "
            f"{' and no '.join('.' + m for m in missing)} file",
            file=str(settings.policy_file),
            line=resolved.line,
            reason="missing",
            fix=f"create {resolved.template}.html and {resolved.template}.txt in the templates folder, "
            "or use an existing template in policy.yaml",
        )
    member = SAMPLE_MEMBER
    try:
        # the law's footer (unsubscribe link, postal address) in both modes: a campaign without it is never planned
        require_compliance(settings, sample, render_merge_tags(settings, sample), "*|UNSUB|*", "merge-tag")
        require_compliance(
            settings,
            sample,
            render_member(settings, sample, member),
            member_unsubscribe_url(settings, sample, member),
            "per-member",
        )
    except RenderError as exc:
        if exc.file != "subject":
            raise
        raise RenderError(
            f"subject of segment {resolved.segment!r} of {resolved.scheme}: {exc.detail}",
            file=str(settings.policy_file),
            line=subject_line or resolved.line,
            reason=exc.reason,
            fix=exc.fix,
        ) from None
    return thash


# ---------------------------------------------------------------------------------------------- SQL


@dataclass
class _Fresh:
    """A segment that gets a new campaign version in this run."""

    segment: str
    resolved: ResolvedPolicy
    template_hash: str
    key: str
    version: int
    campaign_id: str

    share: float | None = None  # the share sized from the policy's power target, when it has one
    sizing: HoldoutSizing | None = None

    @property
    def holdout_share(self) -> float:
        return self.resolved.holdout_share if self.share is None else self.share

    @property
    def threshold(self) -> int:
        return holdout_threshold(self.holdout_share)


def _stage_select(
    conn: Connection,
    settings: Settings,
    as_of: date,
    scheme: str,
    fresh: list[_Fresh],
    prev_as_of: date | None,
) -> Any:
    """(customer_id, segment, exclusion reason or NULL, holdout bucket) for every member of the fresh segments,
    in one pass over the snapshot, the customers and the suppression list."""
    s = rfm_snapshots.alias("s")
    src = settings.customers
    frm: Any = s
    reasons: list[tuple[Any, Any]] = []
    if has_table(conn, src.table):
        c = _customers_table(settings).alias("c")
        frm = frm.outerjoin(c, c.c[src.customer_id] == s.c.customer_id)
        if src.unsubscribed:
            reasons.append((c.c[src.unsubscribed] == literal(True), literal("unsubscribed")))
        if src.email and conn.execute(select(suppressions.c.email_hash).limit(1)).first() is not None:
            sup = (
                select(suppressions.c.email_hash, func.min(suppressions.c.reason).label("reason"))
                .group_by(suppressions.c.email_hash)
                .subquery("sup")
            )
            email_hash = dialect.sha256_hex(func.lower(func.trim(c.c[src.email])), conn)
            frm = frm.outerjoin(sup, sup.c.email_hash == email_hash)
            reasons.append((sup.c.reason.is_not(None), sup.c.reason))
    targeted = [f for f in fresh if f.resolved.targeting is not None]
    if targeted and prev_as_of is not None:
        p = rfm_snapshots.alias("p")
        frm = frm.outerjoin(
            p, and_(p.c.as_of == prev_as_of, p.c.scheme == scheme, p.c.customer_id == s.c.customer_id)
        )
    for f in targeted:
        t = f.resolved.targeting
        assert t is not None
        from_segments = t.from_segments
        if prev_as_of is None:
            if from_segments is not None:
                reasons.append((s.c.segment == f.segment, literal("not_targeted")))
            continue
        ok: Any = literal(True)
        if from_segments is not None:
            ok = and_(ok, p.c.segment.in_(from_segments))
        if t.entered_since_previous:
            ok = and_(ok, or_(p.c.segment.is_(None), p.c.segment != f.segment))
        reasons.append((and_(s.c.segment == f.segment, ~ok), literal("not_targeted")))
    share = fresh[0].resolved.global_control_share if fresh else 0.0
    if share > 0:  # last: a global control member passed every other exclusion, like a treated one
        reasons.append((global_control_sql(s.c.customer_id, share, conn), literal(GLOBAL_CONTROL)))
    reason = case(*reasons, else_=null()) if reasons else null()
    bucket = holdout_bucket_sql(scheme, as_of, s.c.segment, s.c.customer_id, conn)
    return (
        select(s.c.customer_id, s.c.segment, reason.label("reason"), bucket.label("bucket"))
        .select_from(frm)
        .where(s.c.as_of == as_of, s.c.scheme == scheme, s.c.segment.in_([f.segment for f in fresh]))
    )


def _bulk_insert(conn: Connection, campaign_id: str, customer_ids: Any, groups: Any, codes: Any) -> None:
    """Insert one campaign's members given as columns (DuckDB: Arrow scan; PostgreSQL: COPY; else executemany)."""
    n = len(customer_ids)
    if not n:
        return
    raw: Any = conn.connection.driver_connection
    if dialect.is_duckdb(conn):
        import pyarrow as pa

        tbl = pa.table(
            {
                "customer_id": pa.array(customer_ids, pa.string()),
                "member_group": pa.array(groups, pa.string()),
                "coupon_code": pa.array(codes, pa.string()),
            }
        )
        raw.register("_plan_members", tbl)
        try:
            raw.execute(
                "INSERT INTO campaign_members (campaign_id, customer_id, member_group, coupon_code) "
                "SELECT ?, customer_id, member_group, coupon_code FROM _plan_members",
                [campaign_id],
            )
        finally:
            raw.unregister("_plan_members")
    elif dialect.is_postgres(conn):
        with (
            raw.cursor() as cur,
            cur.copy(
                "COPY campaign_members (campaign_id, customer_id, member_group, coupon_code) FROM STDIN"
            ) as cp,
        ):
            for row in zip([campaign_id] * n, customer_ids, groups, codes, strict=True):
                cp.write_row(row)
    else:
        rows = [
            {"campaign_id": campaign_id, "customer_id": c, "member_group": g, "coupon_code": k}
            for c, g, k in zip(customer_ids, groups, codes, strict=True)
        ]
        for part in chunked(rows, 10_000):
            conn.execute(insert(campaign_members), part)


def _fetch_columns(conn: Connection, query: Any) -> tuple[list[str], Any]:
    """(customer_ids, buckets as an int64 array) of a (customer_id, bucket) query."""
    import numpy as np

    if dialect.is_duckdb(conn):
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        raw: Any = conn.connection.driver_connection
        arrays = raw.execute(str(compiled)).fetchnumpy()
        return arrays["customer_id"].tolist(), np.asarray(arrays["bucket"], dtype=np.int64)
    rows = conn.execute(query).all()
    if not rows:
        return [], np.zeros(0, dtype=np.int64)
    ids, buckets = zip(*rows, strict=True)
    return list(ids), np.fromiter(buckets, dtype=np.int64, count=len(buckets))


def _taken_codes(conn: Connection, key: str) -> Any:
    """Which of the given codes a member of another campaign key holds (earlier versions of the same key
    hold the same member's same code, which is not a clash)."""

    def taken(codes: list[str]) -> set[str]:
        found: set[str] = set()
        m, c = campaign_members, campaigns
        for chunk in chunked(codes, 5_000):
            q = (
                select(m.c.coupon_code)
                .join(c, c.c.campaign_id == m.c.campaign_id)
                .where(m.c.coupon_code.in_(chunk), c.c.campaign_key != key)
            )
            found.update(r[0] for r in conn.execute(q))
        return found

    return taken


def _global_clashes(conn: Connection, fresh_ids: list[str]) -> dict[str, set[str]]:
    """Codes of the fresh campaigns already held by a member of an older campaign with another key, per fresh
    campaign (codes are unique within one run already; the older campaign always keeps its code)."""
    m, mc = campaign_members.alias("m"), campaigns.alias("mc")
    o, oc = campaign_members.alias("o"), campaigns.alias("oc")
    older = (
        select(o.c.campaign_id, o.c.coupon_code)
        .where(o.c.coupon_code.is_not(None), o.c.campaign_id.not_in(fresh_ids))
        .subquery("older")
    )
    q = (
        select(m.c.campaign_id, m.c.coupon_code)
        .select_from(
            m.join(mc, mc.c.campaign_id == m.c.campaign_id)
            .join(older, older.c.coupon_code == m.c.coupon_code)
            .join(oc, oc.c.campaign_id == older.c.campaign_id)
        )
        .where(m.c.campaign_id.in_(fresh_ids), oc.c.campaign_key != mc.c.campaign_key)
    )
    losers: dict[str, set[str]] = {}
    for cid, code in conn.execute(q):
        losers.setdefault(cid, set()).add(code)
    return losers


# ---------------------------------------------------------------------------------------------- plan


def _latest(conn: Connection, key: str) -> CampaignRow | None:
    row = conn.execute(
        select(campaigns).where(campaigns.c.campaign_key == key).order_by(campaigns.c.version.desc()).limit(1)
    ).first()
    return CampaignRow.from_row(row) if row else None


def _snapshot_sizes(engine: Engine, as_of: date, scheme: str) -> tuple[dict[str, int], date | None]:
    """Members per segment of the ``as_of`` snapshot, and the as_of of the snapshot before it.

    Raises:
        NotFoundError: there is no snapshot for ``as_of`` and ``scheme``.
    """
    with engine.connect() as conn:
        sizes = {
            seg: int(n)
            for seg, n in conn.execute(
                select(rfm_snapshots.c.segment, func.count())
                .where(rfm_snapshots.c.as_of == as_of, rfm_snapshots.c.scheme == scheme)
                .group_by(rfm_snapshots.c.segment)
            ).all()
        }
        prev_as_of = conn.execute(
            select(func.max(rfm_snapshots.c.as_of)).where(
                rfm_snapshots.c.scheme == scheme, rfm_snapshots.c.as_of < as_of
            )
        ).scalar()
    if not sizes:
        raise NotFoundError(
            f"no {scheme} snapshot as of {as_of.isoformat()}",
            fix=f"run `activation segment --as-of {as_of.isoformat()} --scheme {scheme}` first",
        )
    if isinstance(prev_as_of, datetime):
        prev_as_of = prev_as_of.date()

    return sizes, prev_as_of


def plan_campaigns(engine: Engine, settings: Settings, as_of: date, scheme: str) -> PlanResult:
    """Plan one campaign per active segment of the ``as_of`` snapshot of ``scheme`` (see module docstring).

    Returns:
        PlanResult with one :class:`SegmentPlan` per segment of the snapshot (created, unchanged or suppressed).

    Raises:
        ConfigError: the policy is invalid or names segments the scheme does not have.
        TemplateError: a template is missing, does not parse, breaks the sandbox or a limit.
        NotFoundError: there is no snapshot for ``as_of`` and ``scheme``.
    """
    policy = load_policy(settings)
    issues = check_segments(policy, settings, [scheme])
    if issues:
        raise ConfigError(
            "invalid offer policy:\n" + "\n".join(f"  {i}" for i in issues),
            fix=issues[0].fix or "correct the policy file",
        )
    sizes, prev_as_of = _snapshot_sizes(engine, as_of, scheme)
    # Everything that can fail on bad input is checked before the write transaction starts.
    order = segment_order(settings, scheme, list(sizes))
    result = PlanResult(as_of=as_of, scheme=scheme, segments=[])
    todo: list[tuple[str, ResolvedPolicy, str]] = []
    suppressed: list[tuple[str, ResolvedPolicy]] = []
    for segment in order:
        resolved = policy.for_segment(scheme, segment)
        if resolved.suppress:
            suppressed.append((segment, resolved))
            result.segments.append(
                SegmentPlan(
                    segment, "suppressed", offer="suppressed", excluded={"suppressed_segment": sizes[segment]}
                )
            )
            continue
        subject_line = policy.lines.get(("schemes", scheme, segment, "subject")) if resolved.listed else None
        subject_line = subject_line or policy.lines.get(("default", "subject"))
        todo.append((segment, resolved, _validate_templates(settings, resolved, as_of, subject_line)))

    with engine.begin() as conn:
        dialect.serialize(
            conn, f"plan:{scheme}:{as_of.isoformat()}"
        )  # a concurrent plan finishes first; we see it
        for segment, resolved in suppressed:
            _retire(conn, as_of, scheme, segment, resolved, sizes[segment])
        fresh: list[_Fresh] = []
        for segment, resolved, thash in todo:
            key = campaign_key(scheme, as_of, segment)
            latest = _latest(conn, key)
            if (
                latest is not None
                and latest.template_hash == thash
                and latest.policy_hash == resolved.policy_hash
                and latest.treated + latest.holdout + sum(latest.excluded.values()) == sizes[segment]
            ):
                kept = SegmentPlan(
                    segment,
                    "unchanged",
                    latest.campaign_id,
                    latest.treated,
                    latest.holdout,
                    latest.excluded,
                    resolved.offer.describe(),
                    latest.holdout_share,
                )
                _state_mde(kept, resolved, segment_history(conn, scheme, segment, as_of))
                result.segments.append(kept)
                continue
            version = (latest.version + 1) if latest else 1
            cid = campaign_id_for(scheme, as_of, segment, version)
            other = conn.execute(
                select(campaigns.c.campaign_key).where(campaigns.c.campaign_id == cid)
            ).scalar()
            if other is not None and other != key or cid in {f.campaign_id for f in fresh}:
                cid = f"{cid}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"  # two names, one slug
            fresh.append(_Fresh(segment, resolved, thash, key, version, cid))
        if fresh:
            result.segments.extend(_write_fresh(conn, settings, as_of, scheme, fresh, prev_as_of))
    result.segments.sort(key=lambda sp: order.index(sp.segment))
    return result


def _retire(
    conn: Connection, as_of: date, scheme: str, segment: str, resolved: ResolvedPolicy, size: int
) -> None:
    """A segment planned earlier and suppressed now gets a member-less ``suppressed`` version, so it has no
    current campaign any more (history is kept; destinations stop targeting it)."""
    key = campaign_key(scheme, as_of, segment)
    latest = _latest(conn, key)
    if latest is None or latest.offer_type == RETIRED:
        return
    version = latest.version + 1
    conn.execute(
        insert(campaigns).values(
            campaign_id=f"{latest.campaign_id.rsplit('-v', 1)[0]}-v{version}",
            campaign_key=key,
            version=version,
            as_of=as_of,
            scheme=scheme,
            segment=segment,
            template="",
            subject="",
            offer_type=RETIRED,
            offer=json.dumps({"type": RETIRED}),
            holdout_share=0.0,
            template_hash="",
            policy_hash=resolved.policy_hash,
            destinations="[]",
            treated=0,
            holdout=0,
            excluded=json.dumps({"suppressed_segment": size}),
            send_time=None,
            created_at=utcnow(),
        )
    )


def _record_global_control(conn: Connection, st: Any, as_of: date, scheme: str, segments: list[str]) -> None:
    """The fresh segments' global control members (excluded with reason ``global_control``), replacing what
    an earlier version of their campaigns recorded."""
    g = global_control_members
    conn.execute(delete(g).where(g.c.scheme == scheme, g.c.as_of == as_of, g.c.segment.in_(segments)))
    conn.execute(
        insert(g).from_select(
            ["scheme", "as_of", "customer_id", "segment"],
            select(literal(scheme), literal(as_of), st.c.customer_id, st.c.segment).where(
                st.c.reason == GLOBAL_CONTROL
            ),
        )
    )


def _insert_plain_members(conn: Connection, st: Any, plain: list[_Fresh]) -> None:
    """Members of offers without coupons, straight from the staging table (the split in SQL)."""
    cid_of = case(*[(st.c.segment == f.segment, literal(f.campaign_id)) for f in plain])
    thr_of = case(*[(st.c.segment == f.segment, literal(f.threshold)) for f in plain])
    group = case((st.c.bucket < thr_of, literal("holdout")), else_=literal("treatment"))
    conn.execute(
        insert(campaign_members).from_select(
            ["campaign_id", "customer_id", "member_group", "coupon_code"],
            select(cid_of, st.c.customer_id, group, null()).where(
                st.c.reason.is_(None), st.c.segment.in_([f.segment for f in plain])
            ),
        )
    )


def _insert_coupon_members(conn: Connection, settings: Settings, st: Any, coupon: list[_Fresh]) -> None:
    """Members of coupon offers: the split read back, a unique code for each treated member."""
    import numpy as np

    key_bytes = settings.coupon_key()
    handed_out: set[str] = set()  # codes of this run: unique across its campaigns too
    for f in coupon:
        ids, buckets = _fetch_columns(
            conn,
            select(st.c.customer_id, st.c.bucket).where(st.c.reason.is_(None), st.c.segment == f.segment),
        )
        treated = buckets >= f.threshold
        picked = np.flatnonzero(treated)
        treated_ids = [ids[i] for i in picked.tolist()]
        code_col = np.full(len(ids), None, dtype=object)
        codes = unique_codes(
            key_bytes, f.key, treated_ids, f.resolved.offer.coupon_prefix or "", reserved=handed_out
        )
        handed_out.update(codes)
        code_col[picked] = codes
        groups = np.where(treated, "treatment", "holdout").astype(object)
        _bulk_insert(conn, f.campaign_id, ids, groups, code_col)


def _member_counts(conn: Connection, campaign_ids: list[str]) -> dict[str, dict[str, int]]:
    """campaign id -> member group -> members."""
    counts: dict[str, dict[str, int]] = {cid: {} for cid in campaign_ids}
    m = campaign_members
    for cid, grp, n in conn.execute(
        select(m.c.campaign_id, m.c.member_group, func.count())
        .where(m.c.campaign_id.in_(campaign_ids))
        .group_by(m.c.campaign_id, m.c.member_group)
    ):
        counts[cid][grp] = int(n)
    return counts


def _insert_campaign_rows(
    conn: Connection,
    as_of: date,
    scheme: str,
    fresh: list[_Fresh],
    counts: dict[str, dict[str, int]],
    excluded: dict[str, dict[str, int]],
    histories: dict[str, SegmentHistory | None],
) -> list[SegmentPlan]:
    """The ``campaigns`` row of every fresh segment (members already written), and its plan line."""
    now = utcnow()
    plans: list[SegmentPlan] = []
    for f in fresh:
        offer = f.resolved.offer
        treated_n, holdout_n = (
            counts[f.campaign_id].get("treatment", 0),
            counts[f.campaign_id].get("holdout", 0),
        )
        excl = dict(sorted(excluded[f.segment].items()))
        conn.execute(
            insert(campaigns).values(
                campaign_id=f.campaign_id,
                campaign_key=f.key,
                version=f.version,
                as_of=as_of,
                scheme=scheme,
                segment=f.segment,
                template=f.resolved.template,
                subject=f.resolved.subject,
                offer_type=offer.type,
                offer=offer_record(offer, as_of),
                holdout_share=f.holdout_share,
                template_hash=f.template_hash,
                policy_hash=f.resolved.policy_hash,
                destinations=json.dumps(list(f.resolved.destinations)),
                treated=treated_n,
                holdout=holdout_n,
                excluded=json.dumps(excl),
                send_time=None,
                created_at=now,
            )
        )
        created = SegmentPlan(
            f.segment, "created", f.campaign_id, treated_n, holdout_n, excl, offer.describe(), f.holdout_share
        )
        _state_mde(created, f.resolved, histories[f.segment], f.sizing)
        plans.append(created)
    return plans


def _write_fresh(
    conn: Connection,
    settings: Settings,
    as_of: date,
    scheme: str,
    fresh: list[_Fresh],
    prev_as_of: date | None,
) -> list[SegmentPlan]:
    """Members and campaign rows of every fresh segment, set-based: one staging pass over the snapshot."""
    stage_name = f"_plan_stage_{uuid.uuid4().hex[:10]}"
    dialect.prefer_hash_joins(conn)
    conn.execute(
        dialect.CreateTempTableAs(stage_name, _stage_select(conn, settings, as_of, scheme, fresh, prev_as_of))
    )
    st = table(
        stage_name,
        column("customer_id", String),
        column("segment", String),
        column("reason", String),
        column("bucket"),
    )
    excluded: dict[str, dict[str, int]] = {f.segment: {} for f in fresh}
    eligible: dict[str, int] = {f.segment: 0 for f in fresh}
    for seg, reason, n in conn.execute(
        select(st.c.segment, st.c.reason, func.count()).group_by(st.c.segment, st.c.reason)
    ):
        if reason is None:
            eligible[seg] = int(n)
        else:
            excluded[seg][reason] = int(n)
    histories = {f.segment: segment_history(conn, scheme, f.segment, as_of) for f in fresh}
    for f in fresh:
        target = f.resolved.holdout_target
        if target is not None:
            f.sizing = size_holdout(
                eligible[f.segment], target, histories[f.segment], f.resolved.holdout_share
            )
            f.share = f.sizing.share

    plain = [f for f in fresh if not f.resolved.offer.has_coupon]
    coupon = [f for f in fresh if f.resolved.offer.has_coupon]
    if plain:
        _insert_plain_members(conn, st, plain)
    if coupon:
        _insert_coupon_members(conn, settings, st, coupon)
    _record_global_control(conn, st, as_of, scheme, [f.segment for f in fresh])
    counts = _member_counts(conn, [f.campaign_id for f in fresh])
    plans = _insert_campaign_rows(conn, as_of, scheme, fresh, counts, excluded, histories)
    if coupon:
        for cid, clashing in sorted(_global_clashes(conn, [f.campaign_id for f in coupon]).items()):
            f = next(x for x in coupon if x.campaign_id == cid)
            _resolve_clashes(
                conn, cid, f.key, settings.coupon_key(), f.resolved.offer.coupon_prefix or "", clashing
            )
    conn.execute(text(f'DROP TABLE "{stage_name}"'))
    return plans


def _state_mde(
    plan: SegmentPlan,
    resolved: ResolvedPolicy,
    history: SegmentHistory | None,
    sizing: HoldoutSizing | None = None,
) -> None:
    """Fill in the MDE of the holdout ``plan`` has (the target's metric and power, else conversion at
    80 %) and how it was computed; a capped target says what it asked for."""
    target = resolved.holdout_target
    metric: Metric = "revenue" if target is not None and target.mde is None else "conversion"
    mde, method = mde_for(
        metric,
        plan.treated,
        plan.holdout,
        history,
        power=target.power if target else 0.8,
        base_rate=target.base_rate if target else DEFAULT_BASE_RATE,
        revenue_sd=target.revenue_sd if target else None,
    )
    if sizing is not None:
        method = sizing.method
        if sizing.capped:
            method += f"; target {sizing.target:g} not reachable, share capped at {sizing.share:g}"
        else:
            method += f"; sized for {sizing.target:g}"
    elif target is not None:
        method += f"; sized for {target.mde if target.mde is not None else target.revenue_mde:g}"
    else:
        method += "; fixed share"
    plan.mde_metric = metric
    plan.holdout_mde = None if math.isnan(mde) else mde
    plan.holdout_method = method


def _resolve_clashes(
    conn: Connection, cid: str, key: str, key_bytes: bytes, prefix: str, clashes: set[str]
) -> None:
    """Re-derive the codes of members whose code another campaign already holds (older rows win)."""
    m = campaign_members
    losers = (
        conn.execute(select(m.c.customer_id).where(m.c.campaign_id == cid, m.c.coupon_code.in_(clashes)))
        .scalars()
        .all()
    )
    keep = {
        c
        for c in conn.execute(
            select(m.c.coupon_code).where(m.c.campaign_id == cid, m.c.coupon_code.is_not(None))
        ).scalars()
    }
    taken_elsewhere = _taken_codes(conn, key)
    pending = sorted(losers)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if not pending:
            break
        fresh = coupon_codes(key_bytes, key, pending, prefix, attempt)
        bad = (set(fresh) & keep) | taken_elsewhere(fresh)
        still = []
        for customer, code in zip(pending, fresh, strict=True):
            if code in bad or code in keep:
                still.append(customer)
                continue
            keep.add(code)
            conn.execute(
                update(m).where(m.c.campaign_id == cid, m.c.customer_id == customer).values(coupon_code=code)
            )
        pending = still
    if pending:
        raise ConfigError(
            f"could not find free coupon codes for {len(pending)} members of {key}",
            fix="use a different coupon prefix for this offer",
        )


# ---------------------------------------------------------------------------------------------- reading


def current_campaigns(engine: Engine | Connection, as_of: date, scheme: str) -> list[CampaignRow]:
    """The latest version of each segment's campaign for ``as_of`` and ``scheme`` (ordered by segment).

    A segment whose latest version is a ``suppressed`` marker (the policy suppressed it after it was planned)
    has no current campaign."""
    latest = (
        select(campaigns.c.campaign_key, func.max(campaigns.c.version).label("version"))
        .where(campaigns.c.as_of == as_of, campaigns.c.scheme == scheme)
        .group_by(campaigns.c.campaign_key)
        .subquery()
    )
    q = (
        select(campaigns)
        .join(
            latest,
            and_(latest.c.campaign_key == campaigns.c.campaign_key, latest.c.version == campaigns.c.version),
        )
        .order_by(campaigns.c.segment)
    )

    def run(conn: Connection) -> list[CampaignRow]:
        return [
            row for row in (CampaignRow.from_row(r) for r in conn.execute(q)) if row.offer_type != RETIRED
        ]

    if isinstance(engine, Connection):
        return run(engine)
    with engine.connect() as conn:
        return run(conn)


def get_campaign(engine: Engine, campaign_id: str) -> CampaignRow:
    """One campaign by id. Raises NotFoundError."""
    with engine.connect() as conn:
        row = conn.execute(select(campaigns).where(campaigns.c.campaign_id == campaign_id)).first()
    if row is None:
        raise NotFoundError(
            f"no campaign {campaign_id!r}", fix="run `activation plan` and use an id it prints"
        )
    return CampaignRow.from_row(row)


def _members_query(
    engine: Engine | Connection, settings: Settings | None, campaign_id: str, group: str | None
) -> Any:
    m = campaign_members
    src = settings.customers if settings is not None else None
    cols: list[Any] = [m.c.campaign_id, m.c.customer_id, m.c.member_group, m.c.coupon_code]
    frm: Any = m
    table_name = src.table if src else "customers"
    if has_table(engine, table_name):
        if settings is None:
            from activation.tables import customers as c

            frm = frm.outerjoin(c, c.c.customer_id == m.c.customer_id)
            cols += [c.c.email.label("email"), c.c.first_name.label("first_name")]
        else:
            src = settings.customers
            c = _customers_table(settings).alias("c")
            frm = frm.outerjoin(c, c.c[src.customer_id] == m.c.customer_id)
            cols.append(c.c[src.email].label("email") if src.email else null().label("email"))
            cols.append(
                c.c[src.first_name].label("first_name") if src.first_name else null().label("first_name")
            )
    else:
        cols += [null().label("email"), null().label("first_name")]
    q = select(*cols).select_from(frm).where(m.c.campaign_id == campaign_id)
    if group is not None:
        q = q.where(m.c.member_group == group)
    return q.order_by(m.c.customer_id)


def iter_members(
    engine: Engine,
    campaign_id: str,
    *,
    group: str | None = None,
    settings: Settings | None = None,
    batch_size: int = 10_000,
) -> Iterator[CampaignMember]:
    """Members of a campaign (optionally one group) with email and first name, ordered by customer id.

    ``settings`` selects a mapped customers source (``Settings.customers``); without it the ``customers``
    table is used.
    """
    q = _members_query(engine, settings, campaign_id, group)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(q)
        for row in result:
            yield CampaignMember(
                row.campaign_id, row.customer_id, row.member_group, row.coupon_code, row.email, row.first_name
            )


def read_members(
    engine: Engine, campaign_id: str, *, group: str | None = None, settings: Settings | None = None
) -> list[CampaignMember]:
    """All members of a campaign as a list (see :func:`iter_members`)."""
    return list(iter_members(engine, campaign_id, group=group, settings=settings))


def export_campaigns(engine: Engine, as_of: date, scheme: str, out: Path) -> int:
    """Write the current campaigns' members as CSV (:data:`EXPORT_COLUMNS`); returns the row count.

    Raises:
        NotFoundError: no campaign was planned for ``as_of`` and ``scheme``.
    """
    out = output_file(out, example=f"campaigns-{as_of.isoformat()}.csv")
    rows = current_campaigns(engine, as_of, scheme)
    if not rows:
        raise NotFoundError(
            f"no campaigns planned for {scheme} as of {as_of.isoformat()}",
            fix=f"run `activation plan --as-of {as_of.isoformat()} --scheme {scheme}` first",
        )
    n = 0
    m = campaign_members
    with atomic_text(out) as fh, engine.connect() as conn:
        writer = csv_writer(fh)
        writer.writerow(EXPORT_COLUMNS)
        for camp in sorted(rows, key=lambda r: r.campaign_id):
            result = conn.execution_options(stream_results=True, yield_per=50_000).execute(
                select(m.c.customer_id, m.c.member_group, m.c.coupon_code)
                .where(m.c.campaign_id == camp.campaign_id)
                .order_by(m.c.customer_id)
            )
            for customer_id, grp, code in result:
                writer.writerow(
                    (
                        camp.campaign_id,
                        camp.segment,
                        customer_id,
                        grp,
                        camp.offer_type,
                        code or "",
                        camp.template_version,
                    )
                )
                n += 1
    return n
