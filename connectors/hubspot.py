"""HubSpot CRM through httpx: contacts upserted by email with the segment, offer and coupon as contact
properties (so support can see VIPs), and one static (MANUAL) list per segment.

Per sync, only for changed members: ``POST …/objects/contacts/batch/upsert`` (``idProperty`` email, ≤ 100
inputs), then ``PUT …/lists/{id}/memberships/add`` for the new segment's list and ``…/memberships/remove``
for the old one. Properties ``rfm_segment``, ``rfm_offer``, ``rfm_coupon`` are created when missing (and an
existing one of another type, or archived, stops the sync before any write). HubSpot sends no email here:
``--send`` is recorded as skipped. The API version is one setting (``api_version``): a dated version
(``/crm/objects/2026-03/…``, HubSpot's scheme since 2026-03-30) or ``v3`` (``/crm/v3/…``).

What is retried and what is final:

* Only HubSpot's per-contact *validation* errors (category ``VALIDATION_ERROR``: an address HubSpot refuses,
  a value of the wrong type) are refusals, recorded in the sync log and not resent until the member changes.
  HubSpot may refuse a whole batch for them (400 naming the inputs) or answer 207 with per-input ``errors``;
  either way the rest of the batch is written.
* Anything else is temporary: a 5xx, a dropped connection, a 200 whose body cannot be read, a 207
  ``INTERNAL_ERROR`` for some inputs, contacts a list reports in ``recordIdsMissing`` (its index lags the
  contacts store). Those are retried; what still fails is logged ``failed`` without sync state, so the next
  sync writes it again.
* A create whose answer was lost (a list) is looked up by name before it is sent again, and "already exists"
  (409, ``ILS.DUPLICATE_LIST_NAMES``) on a retry means it was created.
* 429s are paced with the ``X-HubSpot-RateLimit-*`` headers; a spent *daily* limit stops the sync at once
  with the reset time in the message (retrying cannot help before midnight).

Values are never blanked: an empty first name is not sent (HubSpot clears a property sent as ``""``). The
``rfm_*`` properties belong to this project and carry the current plan, so an empty one (no coupon this
quarter) does clear last quarter's value. Consent is read back: contacts that unsubscribed from all email in
HubSpot (``hs_email_optout``) feed the shared suppression list before every sync and in
``outcomes collect --destination hubspot``; an existing contact is checked again right after its upsert, so
one who unsubscribed moments ago is not added to a list. Email addresses in HubSpot's error messages are
stored as their sha256 (as ``sync_state`` and ``suppressions`` refer to people).
"""

from __future__ import annotations

import json as jsonlib
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import select

from activation.chunks import chunked
from activation.errors import ConfigError, NotFoundError
from activation.settings import HubSpotSettings
from activation.tables import campaign_members
from connectors.base import (
    CallStats,
    Journal,
    MemberChange,
    MemberResult,
    OutcomeEvent,
    SuppressionEvent,
    SyncPlan,
    email_hash,
)
from connectors.errors import (
    AuthError,
    BadRequestError,
    DestinationError,
    FatalDestinationError,
    RateLimitedError,
    RemoteNotFoundError,
    ServerError,
    TransportError,
)
from connectors.http import (
    CallPool,
    MemberTracker,
    RetryPolicy,
    call_with_retry,
    create_once,
    parse_retry_after,
    redact,
)
from connectors.state import customer_resolver, load_remote_campaigns

# an address as it appears in HubSpot's messages: RFC 5322 atext in the local part (' { } included, which
# the project's own validator accepts), then a domain
_EMAIL_TOKEN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_QUOTES = "'\"`{}"

SCOPES = (
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.schemas.contacts.read",
    "crm.schemas.contacts.write",
    "crm.lists.read",
    "crm.lists.write",
)
PROPERTIES = {"rfm_segment": "RFM segment", "rfm_offer": "RFM offer", "rfm_coupon": "RFM coupon code"}
CONTACTS = "0-1"
WRITABLE_LISTS = ("MANUAL", "SNAPSHOT")  # memberships can be changed on these only
SEARCH_PAGE = 100  # HubSpot allows 200; 100 is what every version of its search reference allows
SEARCH_WINDOW = 10_000  # results one search query can page through


def mask_emails(text: str) -> str:
    """``text`` with every email address replaced by ``sha256:<hash of the normalized address>``."""
    return _EMAIL_TOKEN.sub(lambda m: "sha256:" + email_hash(m.group(0).strip(_QUOTES).rstrip(".")), text)


class RejectedInputsError(BadRequestError):
    """HubSpot refused a whole batch because of some of its inputs: ``reasons`` maps each input id it
    names (lower-cased email) to why (emails in the reason masked)."""

    def __init__(self, message: str, *, reasons: dict[str, str], status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.reasons = reasons


class DailyLimitError(FatalDestinationError):
    """HubSpot's daily request limit for the portal is used up (429, policy ``DAILY``)."""


class DuplicateListNameError(BadRequestError):
    """400 ``ILS.DUPLICATE_LIST_NAMES``: a list of that name (compared without case) exists."""


class UnsupportedListError(FatalDestinationError):
    """A list of the segment's name exists but its memberships cannot be edited (``DYNAMIC``)."""


def _tokens(text: str) -> set[str]:
    out: set[str] = set()
    for token in _EMAIL_TOKEN.findall(text):
        token = token.lower().rstrip(".")
        out |= {token, token.strip(_QUOTES), token.lstrip(_QUOTES), token.rstrip(_QUOTES)}
    return out


def _named_inputs(body: dict[str, Any]) -> dict[str, str]:
    """Input ids (emails) a 400 body names -> the reason given for each (emails masked)."""
    message = str(body.get("message") or "")
    reasons: dict[str, str] = {}
    checks: list[Any] = []
    _, sep, tail = message.partition(": [")
    if sep:
        try:
            checks = jsonlib.loads("[" + tail)
        except ValueError:
            checks = []
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict):
            text = str(check.get("message") or "")
            reason = f"{check.get('error') or 'refused'}: {text}" if text else str(check.get("error"))
            for token in _tokens(text):
                reasons.setdefault(token, mask_emails(reason)[:300])
    context = body.get("context")
    ids = context.get("ids") if isinstance(context, dict) else None
    for value in ids if isinstance(ids, list) else []:
        reasons.setdefault(str(value).lower(), mask_emails(message)[:300])
    for token in _tokens(message):
        reasons.setdefault(token, mask_emails(message)[:300])
    return reasons


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


def list_name(segment: str) -> str:
    return f"RFM: {segment}"


class HubSpotPaths:
    """Endpoint paths for one API version: ``v3`` → ``/crm/v3/objects/contacts/…``; a dated version
    ``YYYY-MM`` → ``/crm/objects/YYYY-MM/contacts/…`` (the scheme HubSpot introduced on 2026-03-30)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.upsert = self._crm("objects", "/contacts/batch/upsert")
        self.batch_read = self._crm("objects", "/contacts/batch/read")
        self.search = self._crm("objects", "/contacts/search")
        self.properties = self._crm("properties", "/contacts")
        self.lists = self._crm("lists", "")

    def _crm(self, api: str, rest: str) -> str:
        if self.version == "v3":
            return f"/crm/v3/{api}{rest}"
        return f"/crm/{api}/{self.version}{rest}"

    def list_by_name(self, name: str) -> str:
        return self._crm("lists", f"/object-type-id/{CONTACTS}/name/{quote(name, safe='')}")

    def membership(self, list_id: str, op: str) -> str:
        return self._crm("lists", f"/{list_id}/memberships/{op}")


class RatePacer:
    """Keeps this client inside HubSpot's rolling window: the window's length and size come from the
    ``X-HubSpot-RateLimit-Interval-Milliseconds`` and ``-Max`` headers of every response; a request that
    would be the window's ``Max``-th (counting this client's own requests of the last interval, in flight
    included) waits until the oldest leaves it, instead of earning a 429."""

    margin = 1  # one request of the window left to other callers of the same app

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: deque[float] = deque()
        self._max: int | None = None
        self._window = 0.0

    def update(self, headers: httpx.Headers) -> None:
        try:
            most = int(headers["X-HubSpot-RateLimit-Max"])
            window = float(headers["X-HubSpot-RateLimit-Interval-Milliseconds"]) / 1000
        except (KeyError, ValueError):
            return
        with self._lock:
            self._max, self._window = most, window

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                # a little longer than the window: the server counts a request when it arrives
                span = self._window * 1.02 + 0.01
                while self._sent and now - self._sent[0] >= span:
                    self._sent.popleft()
                if self._max is None or len(self._sent) < max(1, self._max - self.margin):
                    self._sent.append(now)
                    return
                delay = self._sent[0] + span - now
            sleep(max(delay, 0.001))


class HubSpotApi:
    """An httpx client with retries, pacing and errors mapped onto :mod:`connectors.errors`."""

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
                fix=f"set ACTIVATION_HUBSPOT__TOKEN (a private app token with the scopes {', '.join(SCOPES)})",
            )
        self._token = settings.token.get_secret_value()
        self.retry = retry or RetryPolicy(max_retries=settings.max_retries)
        self.stats = stats or CallStats()
        self.paths = HubSpotPaths(settings.api_version)
        self.pacer = RatePacer()
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
        retry: bool = True,
    ) -> Any:
        """One API call; the JSON body (``{}`` when empty). Statuses in ``allow`` are returned as
        ``{"_status": code, **body}`` instead of raised. ``retry=False``: one attempt, a temporary failure is
        raised as :class:`RetriableError` (for creates, which must be looked up before they are resent)."""

        def attempt() -> Any:
            self.pacer.wait()
            self.stats.add(write=write)
            try:
                r = self.client.request(method, path, json=json, params=params)
            except httpx.HTTPError as exc:
                raise TransportError(
                    redact(f"HubSpot {what}: connection failed ({type(exc).__name__})", (self._token,))
                ) from None
            self.pacer.update(r.headers)
            if r.status_code in allow:
                try:
                    body = r.json()
                except ValueError:
                    body = {}
                return {**(body if isinstance(body, dict) else {}), "_status": r.status_code}
            if r.is_success:
                if not r.content:
                    return {}
                try:
                    return r.json()
                except ValueError:
                    # the request may well have been applied; every write here is idempotent or looked up
                    raise TransportError(
                        f"HubSpot {what}: the {r.status_code} response could not be read"
                    ) from None
            raise self._error(what, r)

        if not retry:
            return attempt()
        return call_with_retry(attempt, self.retry, what=f"HubSpot {what}")

    def _error(self, what: str, r: httpx.Response) -> DestinationError:
        try:
            body = r.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        message = mask_emails(redact(str(body.get("message") or r.reason_phrase or ""), (self._token,)))[:500]
        status = r.status_code
        kind = "/".join(str(body[k]) for k in ("category", "subCategory") if body.get(k))
        where = f" (correlationId {body['correlationId']})" if body.get("correlationId") else ""
        detail = f"{kind}: {message}" if kind else message
        if status == 429:
            if str(body.get("policyName") or "").upper() == "DAILY":
                limit = r.headers.get("X-HubSpot-RateLimit-Daily")
                return DailyLimitError(
                    f"HubSpot {what}: the portal's daily API limit"
                    f"{f' of {limit} requests' if limit else ''} is used up{where}",
                    fix="it resets at midnight in the HubSpot account's time zone; rerun the sync then (it "
                    "resumes where it stopped), or buy an API limit increase",
                    status=status,
                )
            retry_after = parse_retry_after(r.headers.get("Retry-After"))
            if retry_after is None:
                # a rolling window without Retry-After: wait one window (a safe upper bound)
                try:
                    retry_after = float(r.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds", "")) / 1000
                except ValueError:
                    retry_after = None
            return RateLimitedError(
                f"HubSpot {what}: 429 {detail}{where}", retry_after=retry_after, status=status
            )
        if status >= 500:
            return ServerError(
                f"HubSpot {what}: {status} {detail or 'server error'}{where}",
                retry_after=parse_retry_after(r.headers.get("Retry-After")),
                status=status,
            )
        scopes = f"give the private app the scopes {', '.join(SCOPES)}"
        if status == 401:
            return AuthError(
                f"HubSpot rejected the token (401) during {what}: {detail}{where}",
                fix=f"check ACTIVATION_HUBSPOT__TOKEN (a private app access token); {scopes}",
                status=status,
            )
        if status == 403:
            return AuthError(
                f"HubSpot refused {what} (403 {detail}){where}",
                fix=f"the token lacks a scope or the account lacks the feature: {scopes}",
                status=status,
            )
        if status == 404:
            return RemoteNotFoundError(f"HubSpot {what}: not found ({detail}){where}", status=status)
        if status == 400 and (reasons := _named_inputs(body)):
            return RejectedInputsError(f"HubSpot {what}: 400 {detail}{where}", reasons=reasons, status=status)
        if body.get("subCategory") == "ILS.DUPLICATE_LIST_NAMES":
            return DuplicateListNameError(f"HubSpot {what}: {status} {detail}{where}", status=status)
        return BadRequestError(f"HubSpot {what}: {status} {detail}{where}", status=status)

    def close(self) -> None:
        self.client.close()


class _Tracker(MemberTracker):
    """A :class:`MemberTracker` that also knows temporary failures: ``failed`` results keep no sync state,
    so the next sync writes them again (a refusal is ``skipped`` and final for that content)."""

    def __init__(self) -> None:
        super().__init__()
        self._failed: set[int] = set()

    def fail(self, change: MemberChange, error: str, ops: int = 1) -> None:
        self._failed.add(id(change))
        self.done(change, error=error, ops=ops)

    def drain(self) -> list[MemberResult]:
        out = super().drain()
        for i, r in enumerate(out):
            if id(r.change) in self._failed:
                self._failed.discard(id(r.change))
                out[i] = MemberResult(r.change, "failed", r.operation, r.error)
        return out


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

    @property
    def paths(self) -> HubSpotPaths:
        return self.api.paths

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
            for chunk in chunked(changes, self.batch_size):
                out[seg] += (
                    1
                    + (1 if any(c.tag_add for c in chunk) else 0)
                    + len({c.tag_remove for c in chunk if c.tag_remove})
                    + (1 if any(c.kind == "update" for c in chunk) else 0)  # consent re-check
                )
        for seg, n in leavers.items():
            out[seg] += 2 * _ceil(n, self.batch_size)
        if out or any(plan.audiences.values()):
            # consent search, properties, one list lookup per segment
            out[""] = 2 + len({c.segment for c in plan.campaigns})
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
            # reads and checks first (a wrong token, property or list type stops here, before any write)
            missing = self.check_properties()
            needed = {c.tag_add for c in plan.changes if c.tag_add} | {c.segment for c in publish}
            removing = {c.tag_remove for c in plan.changes if c.tag_remove}
            found = self.find_lists(needed | removing)
            self.create_properties(missing)
            list_ids = {seg: lst for seg, lst in found.items()}
            for seg in sorted(needed - set(found)):
                list_ids[seg] = self.create_list(seg)
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

    # --- properties ---------------------------------------------------------------------------------

    def check_properties(self) -> list[str]:
        """The ``rfm_*`` properties still to create. One that exists must be a string property and not
        archived (a number property would refuse every segment name; an archived one cannot be written or
        created again).

        Raises:
            ConfigError: an existing ``rfm_*`` property of another type, or archived.
        """
        active = {
            p["name"]: p
            for p in self.api.call("properties", "GET", self.paths.properties, write=False).get("results", [])
        }
        missing = []
        for name in PROPERTIES:
            p = active.get(name)
            if p is None:
                missing.append(name)
            elif p.get("type") != "string":
                raise ConfigError(
                    f"the HubSpot contact property {name} exists with type {p.get('type')!r}; rfm-activation "
                    "writes text to it",
                    fix=f"change {name} to a single-line text property in HubSpot (Settings → Properties), or "
                    "delete it so the sync creates it",
                )
        if missing:
            archived = {
                p["name"]
                for p in self.api.call(
                    "archived properties",
                    "GET",
                    self.paths.properties,
                    params={"archived": "true"},
                    write=False,
                ).get("results", [])
            }
            for name in missing:
                if name in archived:
                    raise ConfigError(
                        f"the HubSpot contact property {name} is archived",
                        fix=f"restore {name} in HubSpot (Settings → Properties → Archived properties), or "
                        "delete it permanently so the sync creates it",
                    )
        return missing

    def create_properties(self, names: Sequence[str]) -> None:
        for name in names:
            body = {
                "name": name,
                "label": PROPERTIES[name],
                "type": "string",
                "fieldType": "text",
                "groupName": "contactinformation",
                "description": "Set by rfm-activation",
            }
            # a create retried after a lost answer meets 409: it exists, which is the goal
            self.api.call(
                f"create property {name}",
                "POST",
                self.paths.properties,
                json=body,
                write=True,
                allow=(409,),
            )

    # --- lists ------------------------------------------------------------------------------------------

    def _find_list(self, seg: str) -> dict[str, Any] | None:
        res = self.api.call(
            f"find list {seg}", "GET", self.paths.list_by_name(list_name(seg)), write=False, allow=(404,)
        )
        if res.get("_status") == 404:
            return None
        lst: dict[str, Any] = res["list"]
        kind = str(lst.get("processingType") or "")
        if kind not in WRITABLE_LISTS:
            raise UnsupportedListError(
                f"the HubSpot list {lst.get('name')!r} (id {lst.get('listId')}) for segment {seg!r} is a "
                f"{kind or 'non-static'} list: its members cannot be added or removed",
                fix=f"rename or delete that list in HubSpot so the sync can create a static (MANUAL) "
                f"{list_name(seg)!r}",
            )
        return lst

    def find_lists(self, segments: set[str]) -> dict[str, str]:
        """segment -> list id of the lists that exist (names compare without case, as HubSpot's do).

        Raises:
            UnsupportedListError: a list of that name whose memberships cannot be edited (``DYNAMIC``).
        """
        out: dict[str, str] = {}
        for seg in sorted(segments):
            lst = self._find_list(seg)
            if lst is not None:
                out[seg] = str(lst["listId"])
        return out

    def create_list(self, seg: str) -> str:
        """Create the segment's MANUAL list. A create whose outcome is unknown (5xx, dropped, unreadable) is
        looked up by name before it is sent again; a duplicate-name refusal means an earlier try got through."""
        body = {"name": list_name(seg), "objectTypeId": CONTACTS, "processingType": "MANUAL"}
        try:
            return create_once(
                lambda: str(
                    self.api.call(
                        f"create list {seg}", "POST", self.paths.lists, json=body, write=True, retry=False
                    )["list"]["listId"]
                ),
                lambda: None if (lst := self._find_list(seg)) is None else str(lst["listId"]),
                lambda exc: isinstance(exc, DuplicateListNameError),
                self.api.retry,
                what=f"HubSpot create list {seg}",
            )
        except DuplicateListNameError as exc:
            raise BadRequestError(
                f"HubSpot create list {seg}: HubSpot says a list named {list_name(seg)!r} exists but does not "
                "return it by name"
            ) from exc

    # --- members ----------------------------------------------------------------------------------------

    def _properties(self, c: MemberChange) -> dict[str, str]:
        assert c.member is not None
        f = c.member.fields
        props = {
            "email": c.email,
            "rfm_segment": f.get("SEGMENT", ""),
            "rfm_offer": f.get("OFFER", ""),
            "rfm_coupon": f.get("COUPON", ""),
        }
        if f.get("FNAME"):  # "" would erase the name the contact gave HubSpot
            props["firstname"] = f["FNAME"]
        return props

    def _sync_members(self, plan: SyncPlan, journal: Journal, list_ids: dict[str, str]) -> None:
        tracker = _Tracker()
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
            def run() -> set[str]:
                return self._membership(seg, list_ids[seg], op, [rid for _, rid in items])

            def done(missing: set[str]) -> None:
                for c, rid in items:
                    if rid in missing:
                        tracker.fail(c, f"HubSpot still reports contact {rid} missing from the {op}")
                    else:
                        tracker.done(c)
                flush()

            pool.submit(run, done)

        for seg, changes in by_seg.items():
            for chunk in chunked(changes, self.batch_size):
                self._submit_upsert(pool, tracker, seg, chunk, list_ids, membership, flush)
        for seg, changes in leavers.items():
            for chunk in chunked(changes, self.batch_size):
                self._submit_leave(pool, tracker, seg, chunk, list_ids, flush)
        try:
            pool.run()
        finally:
            pool.close()
            flush()

    def _membership(self, seg: str, list_id: str, op: str, ids: list[str]) -> set[str]:
        """Add or remove ``ids``; the ids still missing after retries (``add`` only: a contact missing from a
        removal is not in the list, which is the goal)."""
        remaining = ids
        attempt = 0
        while True:
            res = self.api.call(
                f"list {op} {seg}", "PUT", self.paths.membership(list_id, op), json=remaining, write=True
            )
            missing = set(map(str, res.get("recordIdsMissing") or [])) if op == "add" else set()
            remaining = [rid for rid in remaining if rid in missing]
            if not remaining or attempt >= self.api.retry.max_retries:
                return set(remaining)
            time.sleep(self.api.retry.delay(attempt))  # the lists index catches up with new contacts
            attempt += 1

    def _upsert(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
        """Upsert ``inputs``: (email -> result object, email -> refusal, email -> temporary failure).

        Inputs a whole-batch 400 names are refusals, dropped and the rest resent; per-input 207 errors are
        refusals when they are validation errors and are resent otherwise (``INTERNAL_ERROR``)."""
        remaining = inputs
        results: dict[str, Any] = {}
        refused: dict[str, str] = {}
        failed: dict[str, str] = {}
        attempt = 0
        while remaining:
            try:
                res = self.api.call(
                    "batch upsert", "POST", self.paths.upsert, json={"inputs": remaining}, write=True
                )
            except RejectedInputsError as exc:
                named = {i["id"] for i in remaining} & set(exc.reasons)
                if not named:
                    raise
                refused.update({e: exc.reasons[e] for e in named})
                remaining = [i for i in remaining if i["id"] not in named]
                continue
            for r in res.get("results") or []:
                email = str((r.get("properties") or {}).get("email", "")).lower()
                results[email] = r
                failed.pop(email, None)
            again: set[str] = set()
            for err in res.get("errors") or []:
                why = mask_emails(str(err.get("message") or "refused"))[:300]
                code = err.get("subCategory") or err.get("category") or "error"
                for email in (err.get("context") or {}).get("ids") or []:
                    email = str(email).lower()
                    if err.get("category") == "VALIDATION_ERROR":
                        refused[email] = f"{code}: {why}"
                    else:
                        failed[email] = f"{code}: {why}"
                        again.add(email)
            remaining = [i for i in remaining if i["id"] in again]
            if remaining:
                if attempt >= self.api.retry.max_retries:
                    break
                time.sleep(self.api.retry.delay(attempt))
                attempt += 1
        return results, refused, failed

    def _opted_out(self, ids: list[str]) -> set[str]:
        """Record ids of these contacts that unsubscribed from all email (``hs_email_optout``)."""
        out: set[str] = set()
        for chunk in chunked(ids, self.batch_size):
            found = self.api.call(
                "consent read",
                "POST",
                self.paths.batch_read,
                json={
                    "inputs": [{"id": rid} for rid in chunk],
                    "properties": ["email", "hs_email_optout"],
                    "propertiesWithHistory": [],
                },
                write=False,
            )
            out |= {
                str(r["id"])
                for r in found.get("results") or []
                if str((r.get("properties") or {}).get("hs_email_optout")).lower() == "true"
            }
        return out

    def _submit_upsert(
        self,
        pool: CallPool,
        tracker: _Tracker,
        seg: str,
        chunk: Sequence[MemberChange],
        list_ids: dict[str, str],
        membership: Callable[[str, str, Sequence[tuple[MemberChange, str]]], None],
        flush: Callable[[], None],
    ) -> None:
        inputs = [{"idProperty": "email", "id": c.email, "properties": self._properties(c)} for c in chunk]

        def run() -> tuple[dict[str, Any], dict[str, str], dict[str, str], set[str]]:
            results, refused, failed = self._upsert(inputs)
            # a contact that existed may have unsubscribed since the read-back: ask again before listing it
            existing = [str(r["id"]) for r in results.values() if r.get("new") is False]
            return results, refused, failed, self._opted_out(existing) if existing else set()

        def done(out: tuple[dict[str, Any], dict[str, str], dict[str, str], set[str]]) -> None:
            results, refused, failed, opted_out = out
            adds: list[tuple[MemberChange, str]] = []
            removes: dict[str, list[tuple[MemberChange, str]]] = defaultdict(list)
            for c in chunk:
                remove = bool(c.tag_remove and c.tag_remove in list_ids)
                ops = 1 + (1 if c.tag_add else 0) + (1 if remove else 0)
                r = results.get(c.email)
                if r is None:
                    if c.email in refused:
                        tracker.done(c, error=refused[c.email], ops=ops)
                    else:
                        tracker.fail(c, failed.get(c.email, "not confirmed by HubSpot"), ops=ops)
                    continue
                rid = str(r["id"])
                tracker.done(c)
                if c.tag_add:
                    if rid in opted_out:
                        tracker.done(c, error="unsubscribed from all email in HubSpot", reason="unsubscribed")
                    else:
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
        tracker: _Tracker,
        seg: str,
        chunk: Sequence[MemberChange],
        list_ids: dict[str, str],
        flush: Callable[[], None],
    ) -> None:
        def run() -> None:
            found = self.api.call(
                "batch read",
                "POST",
                self.paths.batch_read,
                json={
                    "idProperty": "email",
                    "inputs": [{"id": c.email} for c in chunk],
                    "properties": ["email"],
                    "propertiesWithHistory": [],
                },
                write=False,
            )
            ids = [str(r["id"]) for r in found.get("results") or []]
            if ids:
                self._membership(seg, list_ids[seg], "remove", ids)

        def done(_: None) -> None:
            for c in chunk:
                tracker.done(c)
            flush()

        pool.submit(run, done)

    # --- reading back -------------------------------------------------------------------------------

    def opted_out_contacts(self, since: datetime | None) -> Iterator[tuple[str, str]]:
        """(record id, email) of every contact unsubscribed from all email (``hs_email_optout``), changed
        since ``since``: the CRM search, ``after`` paging, and a new query past HubSpot's 10,000-result
        window (continuing above the last record id, in record-id order)."""
        last_id = 0
        while True:
            filters: list[dict[str, Any]] = [
                {"propertyName": "hs_email_optout", "operator": "EQ", "value": "true"},
                {"propertyName": "hs_object_id", "operator": "GT", "value": str(last_id)},
            ]
            if since is not None:
                ms = int(since.replace(tzinfo=since.tzinfo or UTC).timestamp() * 1000)
                filters.append({"propertyName": "lastmodifieddate", "operator": "GTE", "value": str(ms)})
            after: str | None = None
            seen = 0
            while True:
                body: dict[str, Any] = {
                    "filterGroups": [{"filters": filters}],
                    "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                    "properties": ["email", "hs_email_optout"],
                    "limit": SEARCH_PAGE,
                }
                if after is not None:
                    body["after"] = after
                page = self.api.call("consent search", "POST", self.paths.search, json=body, write=False)
                rows = page.get("results") or []
                for row in rows:
                    email = (row.get("properties") or {}).get("email")
                    last_id = max(last_id, int(row["id"]))
                    if email:
                        yield str(row["id"]), str(email)
                seen += len(rows)
                after = ((page.get("paging") or {}).get("next") or {}).get("after")
                if not rows or after is None:
                    return
                if seen + SEARCH_PAGE > SEARCH_WINDOW:
                    break  # the window is full: a new query above the last id

    def read_suppressions(self, since: datetime | None) -> Iterator[SuppressionEvent]:
        """Contacts unsubscribed from all email in HubSpot (changed since ``since``): they feed the shared
        ``suppressions``. Building the client checks the token, so a missing one stops the sync before it
        records a run."""
        _ = self.api
        return (SuppressionEvent(email, "unsubscribed") for _, email in self.opted_out_contacts(since))

    def read_outcomes(
        self, engine: Any, campaign_ids: Sequence[str], since: datetime | None = None
    ) -> Iterator[OutcomeEvent]:
        """``unsubscribed`` for every member of these campaigns who unsubscribed from all email in HubSpot
        (HubSpot sends nothing here, so there are no sent/opened/clicked events).

        Raises:
            ConfigError: no token.
            NotFoundError: none of these campaigns was synced to HubSpot.
        """
        _ = self.api
        remote = load_remote_campaigns(engine, self.name)
        synced = [cid for cid in campaign_ids if cid in remote]
        if not synced:
            raise NotFoundError(
                "none of these campaigns was synced to HubSpot",
                fix="run `activation sync --destination hubspot` for this quarter first",
            )
        resolve = customer_resolver(engine, self.name)
        who: dict[str, str] = {}
        for _, email in self.opted_out_contacts(since):
            customer = resolve(email)
            if customer is not None:
                who[customer] = email
        if not who:
            return iter(())
        found: list[OutcomeEvent] = []
        with engine.connect() as conn:
            ids = sorted(who)
            for part in chunked(ids, 500):
                rows = conn.execute(
                    select(campaign_members.c.campaign_id, campaign_members.c.customer_id).where(
                        campaign_members.c.campaign_id.in_(synced),
                        campaign_members.c.customer_id.in_(part),
                    )
                )
                found += [OutcomeEvent(cid, cust, "unsubscribed", None, who[cust]) for cid, cust in rows]
        return iter(found)
