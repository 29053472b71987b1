"""HubSpot CRM (v3) through httpx: contacts upserted by email with the segment, offer and coupon as
contact properties (so support can see VIPs), and one static (MANUAL) list per segment.

Per sync, only for changed members: ``POST /crm/v3/objects/contacts/batch/upsert`` (``idProperty``
email, ≤ 100 inputs), then ``PUT /crm/v3/lists/{id}/memberships/add`` for the new segment's list and
``…/memberships/remove`` for the old one. Properties ``rfm_segment``, ``rfm_offer``, ``rfm_coupon`` are
created when missing. HubSpot sends no email here: ``--send`` is recorded as skipped.

HubSpot validates every input of a batch (its email check is stricter than ours: the domain must end in a
known top-level domain) and may refuse the whole batch for one bad input (400 ``VALIDATION_ERROR`` naming
it) or answer 207 with per-input ``errors``. Either way the named contacts are skipped and recorded in the
sync log, and the rest of the batch is written; a 400 that names no input of the batch stops the sync.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from activation.errors import ConfigError
from activation.settings import HubSpotSettings
from connectors.base import CallStats, Journal, MemberChange, OutcomeEvent, SuppressionEvent, SyncPlan
from connectors.errors import (
    AuthError,
    BadRequestError,
    DestinationError,
    RateLimitedError,
    RemoteNotFoundError,
    ServerError,
    TransportError,
)
from connectors.http import CallPool, MemberTracker, RetryPolicy, call_with_retry, parse_retry_after, redact

_EMAIL_TOKEN = re.compile(r"[^\s\"'\[\](),;:{}<>]+@[^\s\"'\[\](),;:{}<>]+")


class RejectedInputsError(BadRequestError):
    """HubSpot refused a whole batch because of some of its inputs: ``reasons`` maps each input id it
    names (lower-cased email) to why."""

    def __init__(self, message: str, *, reasons: dict[str, str], status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.reasons = reasons


def _named_inputs(body: dict[str, Any]) -> dict[str, str]:
    """Input ids (emails) a 400 body names -> the reason given for each."""
    message = str(body.get("message") or "")
    reasons: dict[str, str] = {}
    checks: list[Any] = []
    head, sep, tail = message.partition(": [")
    if sep:
        try:
            checks = jsonlib.loads("[" + tail)
        except ValueError:
            checks = []
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict):
            text = str(check.get("message") or "")
            reason = f"{check.get('error') or 'refused'}: {text}" if text else str(check.get("error"))
            for token in _EMAIL_TOKEN.findall(text):
                reasons.setdefault(token.lower().rstrip("."), reason[:300])
    context = body.get("context")
    ids = context.get("ids") if isinstance(context, dict) else None
    for value in ids if isinstance(ids, list) else []:
        reasons.setdefault(str(value).lower(), message[:300])
    for token in _EMAIL_TOKEN.findall(message):
        reasons.setdefault(token.lower().rstrip("."), message[:300])
    return reasons


PROPERTIES = {"rfm_segment": "RFM segment", "rfm_offer": "RFM offer", "rfm_coupon": "RFM coupon code"}
CONTACTS = "0-1"


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


def _chunks(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def list_name(segment: str) -> str:
    return f"RFM: {segment}"


class HubSpotApi:
    """An httpx client with retries and errors mapped onto :mod:`connectors.errors`."""

    def __init__(
        self,
        settings: HubSpotSettings,
        *,
        retry: RetryPolicy | None = None,
        stats: CallStats | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if settings.token is None or not settings.token.get_secret_value():
            raise ConfigError(
                "no HubSpot token",
                fix="set ACTIVATION_HUBSPOT__TOKEN (a private app token with crm.objects.contacts and crm.lists scopes)",
            )
        self._token = settings.token.get_secret_value()
        self.retry = retry or RetryPolicy(max_retries=settings.max_retries)
        self.stats = stats or CallStats()
        self.client = httpx.Client(
            base_url=settings.base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
            timeout=settings.timeout_s,
            limits=httpx.Limits(
                max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
            ),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HubSpotApi(base_url={str(self.client.base_url)!r})"

    def call(
        self,
        what: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        write: bool,
        allow: tuple[int, ...] = (),
    ) -> Any:
        """One API call with retries; the JSON body (``{}`` when empty). Statuses in ``allow`` are returned as
        ``{"_status": code}`` instead of raised."""

        def attempt() -> Any:
            self.stats.add(write=write)
            try:
                r = self.client.request(method, path, json=json, params=params)
            except httpx.HTTPError as exc:
                raise TransportError(
                    redact(f"HubSpot {what}: connection failed ({type(exc).__name__})", (self._token,))
                ) from None
            if r.status_code in allow:
                return {"_status": r.status_code}
            if r.is_success:
                try:
                    return r.json() if r.content else {}
                except ValueError:
                    return {}
            raise self._error(what, r)

        return call_with_retry(attempt, self.retry, what=f"HubSpot {what}")

    def _error(self, what: str, r: httpx.Response) -> DestinationError:
        try:
            body = r.json()
        except ValueError:
            body = {}
        message = redact(str(body.get("message") or r.reason_phrase or ""), (self._token,))[:500]
        status = r.status_code
        retry_after = parse_retry_after(r.headers.get("Retry-After"))
        if retry_after is None and status == 429 and r.headers.get("X-HubSpot-RateLimit-Remaining") == "0":
            # a rolling-window limit without Retry-After: wait for the window (safe upper bound)
            try:
                retry_after = float(r.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds", "")) / 1000
            except ValueError:
                retry_after = None
        if status == 429:
            return RateLimitedError(f"HubSpot {what}: 429 {message}", retry_after=retry_after, status=status)
        if status >= 500:
            return ServerError(
                f"HubSpot {what}: {status} {message or 'server error'}",
                retry_after=retry_after,
                status=status,
            )
        if status in (401, 403):
            return AuthError(
                f"HubSpot rejected the token ({status}) during {what}: {message}",
                fix="check ACTIVATION_HUBSPOT__TOKEN and its scopes (crm.objects.contacts.write, crm.lists.write, crm.schemas.contacts.write)",
                status=status,
            )
        if status == 404:
            return RemoteNotFoundError(f"HubSpot {what}: not found ({message})", status=status)
        if status == 400 and isinstance(body, dict) and (reasons := _named_inputs(body)):
            return RejectedInputsError(f"HubSpot {what}: 400 {message}", reasons=reasons, status=status)
        return BadRequestError(f"HubSpot {what}: {status} {message}", status=status)

    def close(self) -> None:
        self.client.close()


class HubSpotDestination:
    """Contacts (with RFM properties) and one static list per segment in a HubSpot portal."""

    name = "hubspot"
    state_includes_campaign = False

    def __init__(
        self,
        settings: HubSpotSettings,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.retry = retry
        self.transport = transport
        self.stats = CallStats()
        self.batch_size = settings.batch_size
        self._api: HubSpotApi | None = None

    def __repr__(self) -> str:
        return f"HubSpotDestination(base_url={self.settings.base_url!r})"

    @property
    def api(self) -> HubSpotApi:
        if self._api is None:
            self._api = HubSpotApi(
                self.settings, retry=self.retry, stats=self.stats, transport=self.transport
            )
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()

    # --- plan -------------------------------------------------------------------------------------

    def plan(self, plan: SyncPlan) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        by_seg: dict[str, list[MemberChange]] = defaultdict(list)
        leavers: dict[str, int] = defaultdict(int)
        for c in plan.changes:
            if c.member is not None:
                by_seg[c.member.segment].append(c)
            elif c.tag_remove and c.email:
                leavers[c.tag_remove] += 1
        for seg, changes in by_seg.items():
            for chunk in _chunks(changes, self.batch_size):
                out[seg] += (
                    1
                    + (1 if any(c.tag_add for c in chunk) else 0)
                    + len({c.tag_remove for c in chunk if c.tag_remove})
                )
        for seg, n in leavers.items():
            out[seg] += 2 * _ceil(n, self.batch_size)
        if out or any(plan.audiences.values()):
            out[""] = 1 + len({c.segment for c in plan.campaigns})
        return dict(out)

    # --- apply ------------------------------------------------------------------------------------

    def apply(self, plan: SyncPlan, journal: Journal) -> None:
        publish = [
            c
            for c in plan.campaigns
            if plan.audiences.get(c.campaign_id) and journal.remote_campaign(c.campaign_id) is None
        ]
        if not plan.changes and not publish and not (plan.send or plan.schedule_at):
            return
        if plan.changes or publish:
            self.ensure_properties()  # the first call: a wrong token stops here, before any write
            needed = {c.tag_add for c in plan.changes if c.tag_add} | {c.segment for c in publish}
            removing = {c.tag_remove for c in plan.changes if c.tag_remove}
            list_ids = self.ensure_lists(needed, removing)
            self._sync_members(plan, journal, list_ids)
            for camp in publish:
                journal.record_campaign(camp.campaign_id, list_ids.get(camp.segment), "draft", None)
        if plan.send or plan.schedule_at:
            for camp in plan.campaigns:
                if plan.audiences.get(camp.campaign_id):
                    journal.log(
                        camp.campaign_id,
                        "send",
                        "skipped",
                        "HubSpot receives lists and properties; it sends nothing here",
                    )

    def ensure_properties(self) -> None:
        have = {
            p["name"]
            for p in self.api.call("properties", "GET", "/crm/v3/properties/contacts", write=False).get(
                "results", []
            )
        }
        for name, label in PROPERTIES.items():
            if name not in have:
                body = {
                    "name": name,
                    "label": label,
                    "type": "string",
                    "fieldType": "text",
                    "groupName": "contactinformation",
                    "description": "Set by rfm-activation",
                }
                self.api.call(
                    f"create property {name}",
                    "POST",
                    "/crm/v3/properties/contacts",
                    json=body,
                    write=True,
                    allow=(409,),
                )

    def ensure_lists(self, needed: set[str], existing_only: set[str]) -> dict[str, str]:
        """segment -> list id; lists in ``needed`` are created (MANUAL) when missing."""
        ids: dict[str, str] = {}
        for seg in sorted(needed | existing_only):
            res = self.api.call(
                f"find list {seg}",
                "GET",
                f"/crm/v3/lists/object-type-id/{CONTACTS}/name/{quote(list_name(seg), safe='')}",
                write=False,
                allow=(404,),
            )
            if res.get("_status") != 404:
                ids[seg] = str(res["list"]["listId"])
            elif seg in needed:
                created = self.api.call(
                    f"create list {seg}",
                    "POST",
                    "/crm/v3/lists",
                    json={"name": list_name(seg), "objectTypeId": CONTACTS, "processingType": "MANUAL"},
                    write=True,
                )
                ids[seg] = str(created["list"]["listId"])
        return ids

    def _sync_members(self, plan: SyncPlan, journal: Journal, list_ids: dict[str, str]) -> None:
        tracker = MemberTracker()
        by_seg: dict[str, list[MemberChange]] = defaultdict(list)
        leavers: dict[str, list[MemberChange]] = defaultdict(list)
        for c in plan.changes:
            remove = bool(c.tag_remove and c.email and c.tag_remove in list_ids)
            if c.member is not None:
                by_seg[c.member.segment].append(c)
                tracker.expect(c, 1 + (1 if c.tag_add else 0) + (1 if remove else 0))
            elif remove:
                leavers[c.tag_remove or ""].append(c)
                tracker.expect(c, 1)
            else:
                tracker.expect(c, 1)
                tracker.done(
                    c,
                    error=None
                    if c.email
                    else "cannot remove from the list: the customer has no email any more",
                )
        journal.confirmed(tracker.drain())
        pool = CallPool(self.settings.max_connections)

        def flush() -> None:
            journal.confirmed(tracker.drain())

        def membership(seg: str, op: str, items: Sequence[tuple[MemberChange, str]]) -> None:
            ids = [rid for _, rid in items]

            def run() -> Any:
                return self.api.call(
                    f"list {op} {seg}",
                    "PUT",
                    f"/crm/v3/lists/{list_ids[seg]}/memberships/{op}",
                    json=ids,
                    write=True,
                )

            def done(res: Any) -> None:
                missing = set(map(str, res.get("recordIdsMissing") or []))
                for c, rid in items:
                    tracker.done(
                        c, error=f"contact {rid} missing" if (op == "add" and rid in missing) else None
                    )
                flush()

            pool.submit(run, done)

        for seg, changes in by_seg.items():
            for chunk in _chunks(changes, self.batch_size):
                self._submit_upsert(pool, tracker, seg, chunk, list_ids, membership, flush)
        for seg, changes in leavers.items():
            for chunk in _chunks(changes, self.batch_size):
                self._submit_leave(pool, tracker, seg, chunk, list_ids, flush)
        try:
            pool.run()
        finally:
            pool.close()
            flush()

    def _submit_upsert(
        self,
        pool: CallPool,
        tracker: MemberTracker,
        seg: str,
        chunk: Sequence[MemberChange],
        list_ids: dict[str, str],
        membership: Callable[[str, str, Sequence[tuple[MemberChange, str]]], None],
        flush: Callable[[], None],
    ) -> None:
        inputs: list[dict[str, Any]] = []
        for c in chunk:
            assert c.member is not None
            f = c.member.fields
            props = {
                "email": c.email,
                "firstname": f.get("FNAME", ""),
                "rfm_segment": f.get("SEGMENT", ""),
                "rfm_offer": f.get("OFFER", ""),
                "rfm_coupon": f.get("COUPON", ""),
            }
            inputs.append({"idProperty": "email", "id": c.email, "properties": props})

        def run() -> Any:
            """The upsert; inputs a whole-batch 400 names are dropped (recorded) and the rest resent."""
            remaining = inputs
            refused: dict[str, str] = {}
            res: Any = {"results": []}
            while remaining:
                try:
                    res = self.api.call(
                        "batch upsert",
                        "POST",
                        "/crm/v3/objects/contacts/batch/upsert",
                        json={"inputs": remaining},
                        write=True,
                    )
                    break
                except RejectedInputsError as exc:
                    named = {i["id"] for i in remaining} & set(exc.reasons)
                    if not named:
                        raise
                    refused.update({e: exc.reasons[e] for e in named})
                    remaining = [i for i in remaining if i["id"] not in named]
                    res = {"results": []}
            if refused:
                res = dict(res)
                res["errors"] = list(res.get("errors") or []) + [
                    {"message": why, "context": {"ids": [email]}} for email, why in refused.items()
                ]
            return res

        def done(res: Any) -> None:
            ids = {
                str(r["properties"].get("email", "")).lower(): str(r["id"]) for r in res.get("results") or []
            }
            errors: dict[str, str] = {}
            for err in res.get("errors") or []:
                for email in (err.get("context") or {}).get("ids") or []:
                    errors[str(email).lower()] = str(err.get("message") or "refused")
            adds: list[tuple[MemberChange, str]] = []
            removes: dict[str, list[tuple[MemberChange, str]]] = defaultdict(list)
            for c in chunk:
                rid = ids.get(c.email)
                remove = bool(c.tag_remove and c.tag_remove in list_ids)
                if rid is None:
                    tracker.done(
                        c,
                        error=errors.get(c.email, "not confirmed by HubSpot"),
                        ops=1 + (1 if c.tag_add else 0) + (1 if remove else 0),
                    )
                    continue
                tracker.done(c)
                if c.tag_add:
                    adds.append((c, rid))
                if remove:
                    removes[c.tag_remove or ""].append((c, rid))
            if adds:
                membership(seg, "add", adds)
            for old, items in removes.items():
                membership(old, "remove", items)
            flush()

        pool.submit(run, done)

    def _submit_leave(
        self,
        pool: CallPool,
        tracker: MemberTracker,
        seg: str,
        chunk: Sequence[MemberChange],
        list_ids: dict[str, str],
        flush: Callable[[], None],
    ) -> None:
        def run() -> Any:
            found = self.api.call(
                "batch read",
                "POST",
                "/crm/v3/objects/contacts/batch/read",
                json={
                    "idProperty": "email",
                    "properties": ["email"],
                    "inputs": [{"id": c.email} for c in chunk],
                },
                write=False,
            )
            ids = [str(r["id"]) for r in found.get("results") or []]
            if ids:
                self.api.call(
                    f"list remove {seg}",
                    "PUT",
                    f"/crm/v3/lists/{list_ids[seg]}/memberships/remove",
                    json=ids,
                    write=True,
                )
            return None

        def done(_: Any) -> None:
            for c in chunk:
                tracker.done(c)
            flush()

        pool.submit(run, done)

    # --- reading back -------------------------------------------------------------------------------

    def read_outcomes(
        self, engine: Any, campaign_ids: Sequence[str], since: datetime | None = None
    ) -> Iterator[OutcomeEvent]:
        """Lists and properties only: no email events to read back."""
        return iter(())

    def read_suppressions(self, since: datetime | None) -> Iterator[SuppressionEvent]:
        """Nothing to read back (HubSpot sends no email here). Building the client checks the token is set,
        so a missing one stops the sync before it records a run."""
        _ = self.api
        return iter(())
