"""Mailchimp through ``mailchimp-marketing``, wrapped so that its errors become ours.

The SDK has no retries, raises ``ApiClientError`` with an empty ``str()`` (the facts are in
``.status_code`` / ``.text``), returns a bare ``requests.Response`` instead of raising for a 5xx with an
empty body, and opens a new connection per call. :class:`MailchimpApi` fixes all four: one SDK client
and ``requests.Session`` per worker thread, every call retried per :class:`connectors.http.RetryPolicy`,
and every failure mapped onto :mod:`connectors.errors`.

What :class:`MailchimpDestination` writes, per sync, only for members whose state changed:

* members: ``POST /lists/{id}`` (≤ 500 a call, ``update_existing``, ``status_if_new`` only, so an
  unsubscribed or cleaned contact is never resubscribed), merge fields FNAME, SEGMENT, OFFER, COUPON,
  EXPIRES (created when missing, with the renderer's defaults: FNAME reads "there"); an empty value is never
  sent (the API would erase the contact's own); a contact the answer lists as unsubscribed or cleaned is a
  consent refusal: suppressed, not tagged;
* one static segment (tag) per segment name: ``members_to_add`` / ``members_to_remove`` (≤ 500 each), so a
  customer who moved loses the old tag; removals ride along with the next segment call when they can;
* one campaign per segment targeted at its static segment, subject and content = the merge-tag render; a
  draft unless ``send`` / ``schedule_at`` (on a quarter-hour, checked before anything else); a campaign is
  sent at most once (recorded in ``destination_campaigns`` and checked on the remote before sending).

A create whose answer was lost (5xx, dropped connection) may have been applied: it is looked up by title,
name or tag before it is tried again, so a retry never makes a second draft or stops on "already exists".
Partial responses (``fields``) are asked for with lists of names, as the SDK declares them, and an answer
without the fields asked for is an error, never an empty audience.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from activation.chunks import chunked
from activation.clock import utcnow
from activation.errors import ConfigError, InputError, NotFoundError
from activation.settings import BrandSettings, MailchimpSettings
from connectors.base import (
    CallStats,
    CampaignSpec,
    CampaignStatus,
    Journal,
    MemberChange,
    OutcomeEvent,
    SuppressionEvent,
    SyncPlan,
    merge_field_defaults,
    merge_fields,
)
from connectors.errors import (
    AuthError,
    BadRequestError,
    ComplianceError,
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

PAGE = 1000  # the documented maximum of ``count`` (docs/methods-parameters/#pagination)
#: how far back the consent read-back reaches before the last sync's start: a change stamped in the same
#: second (or by a clock a little behind ours) is read again rather than missed
READ_BACK_MARGIN = timedelta(minutes=5)
BASE_URL_FIX = (
    "check ACTIVATION_MAILCHIMP__BASE_URL (if set) points at the Mailchimp API, e.g. "
    "https://us21.api.mailchimp.com/3.0, or unset it and set ACTIVATION_MAILCHIMP__SERVER_PREFIX"
)


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


class MailchimpApi:
    """The ``mailchimp-marketing`` client with retries, bounded connections and normalised errors."""

    def __init__(
        self, settings: MailchimpSettings, *, retry: RetryPolicy | None = None, stats: CallStats | None = None
    ) -> None:
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise ConfigError(
                "no Mailchimp API key", fix="set ACTIVATION_MAILCHIMP__API_KEY (Account → Extras → API keys)"
            )
        if not settings.list_id:
            raise ConfigError(
                "no Mailchimp audience (list) id",
                fix="set ACTIVATION_MAILCHIMP__LIST_ID (Audience → Settings → Audience name and defaults)",
            )
        self._key = settings.api_key.get_secret_value()
        server = settings.server_prefix or (self._key.rsplit("-", 1)[1] if "-" in self._key else None)
        if not settings.base_url and not server:
            raise ConfigError(
                "cannot tell the Mailchimp data center",
                fix="set ACTIVATION_MAILCHIMP__SERVER_PREFIX (e.g. us21, the end of the API key)",
            )
        self.host = (
            settings.base_url.rstrip("/") if settings.base_url else f"https://{server}.api.mailchimp.com/3.0"
        )
        self.list_id = settings.list_id
        self.timeout = settings.timeout_s
        self.pool_size = settings.max_connections
        self.retry = retry or RetryPolicy(max_retries=settings.max_retries)
        self.stats = stats or CallStats()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self.answered = False  # some call got an HTTP answer (a refused connection after that may pass)

    def __repr__(self) -> str:
        return f"MailchimpApi(host={self.host!r}, list_id={self.list_id!r})"

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import mailchimp_marketing  # the SDK's generated API modules take ~0.1 s: loaded on the first call

            client = mailchimp_marketing.Client({"api_key": self._key, "timeout": self.timeout})
            client.api_client.host = self.host
            client.api_client.server = ""  # the SDK would otherwise rewrite the word "server" in the host
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            # proxies and CA bundle from the environment, resolved once: requests would otherwise scan
            # the environment (and look for ~/.netrc) on every call
            env = session.merge_environment_settings(self.host, {}, None, None, None)
            session.proxies.update(env["proxies"])
            session.verify = env["verify"]
            session.trust_env = False
            self._sessions.append(session)
            key, timeout, local = self._key, self.timeout, self._local

            def request(
                method: str, url: str, query_params: Any = None, headers: Any = None, body: Any = None
            ) -> requests.Response:
                data = json.dumps(body) if method in ("POST", "PUT", "PATCH") else None
                resp = session.request(
                    method,
                    url,
                    params=query_params,
                    headers=headers,
                    auth=("user", key),
                    timeout=timeout,
                    data=data,
                )
                local.last = resp
                return resp

            client.api_client.request = request
            self._local.client = client
        return client

    def call(self, what: str, fn: Callable[[Any], Any], *, write: bool) -> Any:
        """``fn(sdk_client)`` with retries; returns the JSON body (``{}`` when there is none).

        Raises:
            AuthError, RemoteNotFoundError, BadRequestError, RetriesExhaustedError: stop the sync.
            FatalDestinationError: nothing listens at the configured URL (before any answer came).
            ComplianceError: the API refused a member for consent reasons.
        """
        return call_with_retry(lambda: self._once(what, fn, write), self.retry, what=f"Mailchimp {what}")

    def create(self, what: str, fn: Callable[[Any], Any], find: Callable[[], Any]) -> Any:
        """A create whose outcome may be unknown: after a 5xx or a lost connection the write may have been
        applied and only its answer lost, so ``find()`` (a lookup by title, name or tag; ``None`` when
        absent) runs before the create is tried again; an "already exists" answer means it was found.

        Returns:
            The created object, or what ``find()`` found.
        """
        return create_once(
            lambda: self._once(what, fn, True),
            find,
            lambda exc: isinstance(exc, BadRequestError) and "already exists" in exc.message.lower(),
            self.retry,
            what=f"Mailchimp {what}",
        )

    def _once(self, what: str, fn: Callable[[Any], Any], write: bool) -> Any:
        from mailchimp_marketing.api_client import ApiClientError  # with the SDK (see _client)

        self.stats.add(write=write)
        self._local.last = None
        try:
            res = fn(self._client())
        except ApiClientError as exc:
            if exc.status_code is not None:
                self.answered = True
            raise self._error(what, exc.status_code, exc.text) from None
        self.answered = True
        if isinstance(res, requests.Response):
            if not res.ok:
                raise self._error(what, res.status_code, res.text)
            return {}
        return res

    def need(self, res: Any, key: str, what: str) -> Any:
        """``res[key]``, or a clear error when the API answered without it (an empty object, a proxy)."""
        if isinstance(res, dict) and res.get(key) is not None:
            return res[key]
        got = redact(json.dumps(res)[:200] if isinstance(res, dict | list) else repr(res)[:200], (self._key,))
        raise FatalDestinationError(
            f"Mailchimp {what}: the answer has no {key!r} (got {got}) from {self.host}", fix=BASE_URL_FIX
        )

    def _error(self, what: str, status: int | None, text: Any) -> DestinationError:
        secrets = (self._key,)
        if status is None:
            reason = str(text)
            if "refused" in reason.lower():
                message = f"Mailchimp {what}: nothing is listening at {self.host} (connection refused)"
                if not self.answered:  # the first call: a wrong URL, not a passing fault
                    return FatalDestinationError(message, fix=BASE_URL_FIX)
                return TransportError(message)
            return TransportError(
                redact(f"Mailchimp {what}: connection failed ({type(text).__name__}: {text})", secrets)[:500]
            )
        body: dict[str, Any] = text if isinstance(text, dict) else {}
        if not body and isinstance(text, str) and text.strip().startswith("{"):
            try:
                body = json.loads(text)
            except ValueError:
                body = {}
        title = str(body.get("title") or "")
        detail = redact(str(body.get("detail") or (text if isinstance(text, str) else "") or ""), secrets)[
            :500
        ]
        last = getattr(self._local, "last", None)
        retry_after = (
            parse_retry_after(last.headers.get("Retry-After"))
            if last is not None and last.status_code == status
            else None
        )
        if status == 429:
            return RateLimitedError(
                f"Mailchimp {what}: 429 too many requests", retry_after=retry_after, status=status
            )
        if status >= 500:
            return ServerError(
                f"Mailchimp {what}: {status} {title or 'server error'}",
                retry_after=retry_after,
                status=status,
            )
        if status in (401, 403):
            return AuthError(
                f"Mailchimp rejected the API key ({status} {title or 'unauthorized'}) during {what}",
                fix="check ACTIVATION_MAILCHIMP__API_KEY and ACTIVATION_MAILCHIMP__SERVER_PREFIX (or __BASE_URL)",
                status=status,
            )
        if status == 404:
            return RemoteNotFoundError(
                f"Mailchimp {what}: not found ({detail or title})",
                fix="check ACTIVATION_MAILCHIMP__LIST_ID",
                status=status,
            )
        if "compliance state" in f"{title} {detail}".lower():
            return ComplianceError(f"Mailchimp {what}: {title}: {detail}", status=status)
        return BadRequestError(f"Mailchimp {what}: {status} {title}: {detail}", status=status)

    def close(self) -> None:
        for s in self._sessions:
            s.close()
        self._sessions.clear()


def _consent_reason(message: str) -> str | None:
    low = message.lower()
    if "compliance state" in low or "permanently deleted" in low:
        return (
            "cleaned" if ("clean" in low or "bounce" in low and "unsubscribe" not in low) else "unsubscribed"
        )
    return None


class MailchimpDestination:
    """Audience members, tags (static segments), merge fields and campaigns in one Mailchimp audience."""

    name = "mailchimp"
    state_includes_campaign = False

    def __init__(
        self,
        settings: MailchimpSettings,
        brand: BrandSettings | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.brand = brand or BrandSettings()
        self.retry = retry
        self.stats = CallStats()
        self._api: MailchimpApi | None = None
        self.batch_size = settings.batch_size

    def __repr__(self) -> str:
        return f"MailchimpDestination(list_id={self.settings.list_id!r})"

    @property
    def api(self) -> MailchimpApi:
        if self._api is None:
            self._api = MailchimpApi(self.settings, retry=self.retry, stats=self.stats)
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()

    # --- plan -------------------------------------------------------------------------------------

    def plan(self, plan: SyncPlan) -> dict[str, int]:
        upserts: dict[str, int] = defaultdict(int)
        adds: dict[str, int] = defaultdict(int)
        removes: dict[str, int] = defaultdict(int)
        for c in plan.changes:
            if c.member is not None and c.upsert:
                upserts[c.member.segment] += 1
            if c.tag_add:
                adds[c.tag_add] += 1
            if c.tag_remove and c.email:
                removes[c.tag_remove] += 1
        out: dict[str, int] = {}
        for seg in set(upserts) | set(adds) | set(removes):
            out[seg] = _ceil(upserts[seg], self.batch_size) + max(
                _ceil(adds[seg], self.batch_size),
                _ceil(removes[seg], self.batch_size),
                1 if upserts[seg] else 0,
            )
        publish = [c for c in plan.campaigns if plan.audiences.get(c.campaign_id)]
        for camp in publish:
            out[camp.segment] = out.get(camp.segment, 0) + 2 + (2 if plan.send or plan.schedule_at else 0)
        if out:
            out[""] = 5  # ping, list, segments, merge fields, campaigns
        return out

    # --- apply ------------------------------------------------------------------------------------

    def apply(self, plan: SyncPlan, journal: Journal) -> None:
        publish = [c for c in plan.campaigns if self._needs_publish(c, plan, journal)]
        if not plan.changes and not publish:
            return
        needed = {c.tag_add for c in plan.changes if c.tag_add} | {c.segment for c in publish}
        upserts = any(c.upsert for c in plan.changes)
        drafts = any(self._remote_id(c, journal) is None for c in publish)
        # the key first (one call when it is wrong), then the independent set-up reads in one round trip,
        # then the missing segments and merge fields at once: latency is paid per round trip
        self.api.call("ping", lambda c: c.ping.get(), write=False)
        reads: list[Callable[[], Any]] = [self._get_list, self._segments]
        reads += [self._merge_fields] if upserts else []
        reads += [self._existing_campaigns] if drafts else []
        try:
            found = self._parallel(reads)
        except RemoteNotFoundError:
            raise self._no_such_list() from None
        self.api.need(found[0], "id", "get list")
        segment_ids: dict[str, int] = found[1]
        existing: dict[str, str] = found[-1] if drafts else {}
        missing = sorted(needed - set(segment_ids))
        creates = self._segment_creates(missing)
        fields = self._merge_field_calls(found[2]) if upserts else []
        done = self._parallel(creates + fields)
        for name, seg in zip(missing, done[: len(missing)], strict=True):
            segment_ids[name] = int(self.api.need(seg, "id", f"create segment {name}"))
        pool = CallPool(self.settings.max_connections)
        try:
            # campaign drafts only need their static segment: they fill idle connections meanwhile
            for camp in publish:
                self._submit_draft(pool, plan, journal, camp, segment_ids, existing)
            self._sync_members(plan, journal, segment_ids, pool)
            pool.run()
            if plan.send or plan.schedule_at:
                for camp in publish:
                    self._submit_send(pool, plan, journal, camp)
                pool.run()
        finally:
            pool.close()

    def _parallel(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run independent calls on the bounded pool; results in order."""
        out: list[Any] = [None] * len(calls)
        pool = CallPool(self.settings.max_connections)
        try:
            for i, fn in enumerate(calls):
                pool.submit(fn, lambda res, i=i: out.__setitem__(i, res))  # type: ignore[misc]  # default-argument lambda
            pool.run()
        finally:
            pool.close()
        return out

    def check_schedule(self, schedule_at: datetime | None) -> None:
        """Mailchimp schedules only on the quarter-hour (api/campaigns/schedule-campaign/: ``schedule_time``
        "may only be scheduled to send on the quarter-hour (:00, :15, :30, :45)"): refuse any other time
        before anything is read or written, not after every member was synced.

        Raises:
            InputError: ``schedule_at`` is not on a quarter-hour (in UTC).
        """
        if schedule_at is None:
            return
        when = _utc(schedule_at)
        if when.minute % 15 == 0 and when.second == 0 and when.microsecond == 0:
            return
        earlier = when.replace(minute=when.minute - when.minute % 15, second=0, microsecond=0)
        later = earlier + timedelta(minutes=15)
        raise InputError(
            f"--schedule-at {schedule_at.isoformat()} is not on a quarter-hour: Mailchimp schedules campaigns "
            "only at :00, :15, :30 or :45 (UTC)",
            fix=f"use {earlier.strftime('%Y-%m-%dT%H:%M')} or {later.strftime('%Y-%m-%dT%H:%M')} (UTC)",
        )

    def verify(self) -> None:
        """Cheap reads that fail fast (before any write) on a wrong key, list id or URL."""
        self.api.call("ping", lambda c: c.ping.get(), write=False)
        try:
            found = self._get_list()
        except RemoteNotFoundError:
            raise self._no_such_list() from None
        self.api.need(found, "id", "get list")

    def _get_list(self) -> Any:
        return self.api.call(
            "get list", lambda c: c.lists.get_list(self.api.list_id, fields=["id", "name"]), write=False
        )

    def _no_such_list(self) -> RemoteNotFoundError:
        return RemoteNotFoundError(
            f"Mailchimp audience {self.api.list_id!r} does not exist",
            fix="set ACTIVATION_MAILCHIMP__LIST_ID to an audience id of this account",
            status=404,
        )

    def _merge_fields(self) -> dict[str, dict[str, Any]]:
        page = self.api.call(
            "merge fields",
            lambda c: c.lists.get_list_merge_fields(
                self.api.list_id,
                count=PAGE,
                fields=[
                    "merge_fields.merge_id",
                    "merge_fields.tag",
                    "merge_fields.default_value",
                    "total_items",
                ],
            ),
            write=False,
        )
        self.api.need(page, "total_items", "merge fields")
        return {str(m["tag"]): m for m in page.get("merge_fields") or []}

    def ensure_merge_fields(self) -> None:
        """Create the merge fields that are missing, and give each its default (FNAME reads "there" for a
        member without a first name, as in the outbox). The defaults of existing fields are updated."""
        self._parallel(self._merge_field_calls(self._merge_fields()))

    def _merge_field_calls(self, have: dict[str, dict[str, Any]]) -> list[Callable[[], Any]]:
        """The calls that bring the merge fields from ``have`` to :func:`merge_fields` with their defaults."""
        defaults = merge_field_defaults()
        calls: list[Callable[[], Any]] = []
        for tag, label in merge_fields().items():
            default = defaults.get(tag, "")
            if tag not in have:
                body = {
                    "tag": tag,
                    "name": label,
                    "type": "text",
                    "required": False,
                    "public": False,
                    "default_value": default,
                }
                calls.append(
                    lambda b=body, t=tag: self.api.create(  # type: ignore[misc]  # default-argument lambda
                        f"create merge field {t}",
                        lambda c: c.lists.add_list_merge_field(self.api.list_id, b),
                        lambda: self._merge_fields().get(t),
                    )
                )
            elif default and have[tag].get("default_value") != default:
                merge_id = str(have[tag]["merge_id"])
                calls.append(
                    lambda m=merge_id, t=tag, d=default: self.api.call(  # type: ignore[misc]  # default-argument lambda
                        f"set the default of merge field {t}",
                        lambda c: c.lists.update_list_merge_field(
                            self.api.list_id, m, {"name": merge_fields()[t], "default_value": d}
                        ),
                        write=True,
                    )
                )
        return calls

    def _segments(self) -> dict[str, int]:
        """name -> id of every static segment (tag) of the audience."""
        segs = self._pages(
            "list segments",
            lambda c, o: c.lists.list_segments(
                self.api.list_id,
                type="static",
                count=PAGE,
                offset=o,
                fields=["segments.id", "segments.name", "total_items"],
            ),
            "segments",
        )
        return {str(s["name"]): int(s["id"]) for s in segs}

    def ensure_segments(self, names: set[str]) -> dict[str, int]:
        """name -> static segment id, creating the ``names`` that are missing."""
        ids = self._segments()
        missing = sorted(names - set(ids))
        created = self._parallel(self._segment_creates(missing))
        for name, seg in zip(missing, created, strict=True):
            ids[name] = int(self.api.need(seg, "id", f"create segment {name}"))
        return ids

    def _segment_creates(self, names: Sequence[str]) -> list[Callable[[], Any]]:
        """One create per static segment in ``names``; each finds its segment if the answer was lost."""

        def find(name: str) -> dict[str, int] | None:
            seg_id = self._segments().get(name)
            return {"id": seg_id} if seg_id is not None else None

        return [
            lambda n=name: self.api.create(  # type: ignore[misc]  # default-argument lambda
                f"create segment {n}",
                lambda c: c.lists.create_segment(self.api.list_id, {"name": n, "static_segment": []}),
                lambda: find(n),
            )
            for name in names
        ]

    def _sync_members(
        self, plan: SyncPlan, journal: Journal, segment_ids: dict[str, int], pool: CallPool
    ) -> None:
        tracker = MemberTracker()
        upserts: dict[str, list[MemberChange]] = defaultdict(list)
        removes: dict[str, list[MemberChange]] = defaultdict(list)
        for c in plan.changes:
            ops = 0
            if c.member is not None and c.upsert:
                upserts[c.member.segment].append(c)
                ops += 1 + (1 if c.tag_add else 0)
            if c.tag_remove:
                if c.email and c.tag_remove in segment_ids:
                    removes[c.tag_remove].append(c)
                    ops += 1
                elif not c.email:
                    tracker.expect(c, 1)
                    tracker.done(c, error="cannot remove the tag: the customer has no email any more")
                    continue
            if ops == 0:
                tracker.expect(c, 1)
                tracker.done(c)
                continue
            tracker.expect(c, ops)
        journal.confirmed(tracker.drain())
        B = self.batch_size

        def flush() -> None:
            journal.confirmed(tracker.drain())

        def segment_call(seg: str, to_add: Sequence[MemberChange], to_remove: Sequence[MemberChange]) -> None:
            body = {
                "members_to_add": [c.email for c in to_add],
                "members_to_remove": [c.email for c in to_remove],
            }
            seg_id = str(segment_ids[seg])

            def run() -> Any:
                res = self.api.call(
                    f"segment {seg}",
                    lambda cl: cl.lists.batch_segment_members(body, self.api.list_id, seg_id),
                    write=True,
                )
                self.api.need(res, "total_added", f"segment {seg}")
                return res

            def done(res: Any) -> None:
                failed: dict[str, str] = {}
                for err in res.get("errors") or []:
                    for email in err.get("email_addresses") or []:
                        failed[email.lower()] = str(err.get("error") or "refused")
                for c in to_add:
                    tracker.done(c, error=failed.get(c.email))
                for c in to_remove:
                    tracker.done(c)  # not in the segment or the list any more: the goal is reached
                flush()

            pool.submit(run, done)

        for seg, changes in upserts.items():
            chunks = chunked(changes, B)
            rem = removes.pop(seg, [])
            for i, chunk in enumerate(chunks):
                riders = rem[i * B : (i + 1) * B]
                self._submit_upsert(pool, tracker, seg, chunk, riders, segment_call, flush)
            for rest in chunked(rem[len(chunks) * B :], B):
                segment_call(seg, [], rest)
        for seg, rem in removes.items():
            for chunk in chunked(rem, B):
                segment_call(seg, [], chunk)

    def _submit_upsert(
        self,
        pool: CallPool,
        tracker: MemberTracker,
        seg: str,
        chunk: Sequence[MemberChange],
        riders: Sequence[MemberChange],
        segment_call: Callable[[str, Sequence[MemberChange], Sequence[MemberChange]], None],
        flush: Callable[[], None],
    ) -> None:
        # never an empty value: the API stores what it is sent, and an empty FNAME would erase the name a
        # contact gave Mailchimp (a member without one reads the merge field's default instead)
        body = {
            "members": [
                {
                    "email_address": c.email,
                    "status_if_new": "subscribed",
                    "merge_fields": {k: v for k, v in c.member.fields.items() if v != ""},
                }
                for c in chunk
                if c.member
            ],
            "update_existing": True,
        }

        def run() -> Any:
            res = self.api.call(
                "batch upsert", lambda cl: cl.lists.batch_list_members(self.api.list_id, body), write=True
            )
            self.api.need(res, "error_count", "batch upsert")
            return res

        def done(res: Any) -> None:
            failed: dict[str, tuple[str, str | None]] = {}
            for err in res.get("errors") or []:
                msg = str(err.get("error") or "refused")
                if err.get("field_message"):
                    msg += f" ({err['field_message']})"
                failed[str(err.get("email_address", "")).lower()] = (msg, _consent_reason(msg))
            # an existing contact keeps its own status: one who unsubscribed (or was cleaned) in Mailchimp
            # is listed with it, and that is a consent refusal, whatever the read-back said a moment ago
            for m in res.get("updated_members") or []:
                status = str(m.get("status") or "")
                if status in ("unsubscribed", "cleaned"):
                    failed[str(m.get("email_address", "")).lower()] = (
                        f"{status} in Mailchimp: not tagged, suppressed",
                        status,
                    )
            to_add = []
            for c in chunk:
                refused = failed.get(c.email)
                if refused:
                    msg, reason = refused
                    tracker.done(c, error=msg, reason=reason, ops=1 + (1 if c.tag_add else 0))
                elif c.tag_add:
                    tracker.done(c)
                    to_add.append(c)
                else:
                    tracker.done(c)
            if to_add or riders:
                segment_call(seg, to_add, riders)
            flush()

        pool.submit(run, done)

    # --- campaigns --------------------------------------------------------------------------------

    def _needs_publish(self, camp: CampaignSpec, plan: SyncPlan, journal: Journal) -> bool:
        if not plan.audiences.get(camp.campaign_id):
            return False
        rc = journal.remote_campaign(camp.campaign_id)
        if rc is None or rc.status == "created":
            return True
        return rc.status == "draft" and bool(plan.send or plan.schedule_at)

    def title(self, camp: CampaignSpec) -> str:
        return f"{camp.scheme} {camp.as_of.isoformat()} {camp.segment} [{camp.campaign_id}]"

    def _remote_id(self, camp: CampaignSpec, journal: Journal) -> str | None:
        rc = journal.remote_campaign(camp.campaign_id)
        return rc.remote_id if rc else None

    def _submit_draft(
        self,
        pool: CallPool,
        plan: SyncPlan,
        journal: Journal,
        camp: CampaignSpec,
        segment_ids: dict[str, int],
        existing: dict[str, str],
    ) -> None:
        """create (unless it exists, e.g. after a crash) → set content → recorded as a draft."""
        rc = journal.remote_campaign(camp.campaign_id)
        if rc is not None and rc.status not in ("created",):
            return
        assert plan.content is not None
        content = plan.content.for_campaign(camp)

        def set_content(remote_id: str) -> None:
            def run() -> Any:
                return self.api.call(
                    f"set content {camp.segment}",
                    lambda c: c.campaigns.set_content(
                        remote_id, {"html": content.html, "plain_text": content.text}
                    ),
                    write=True,
                )

            def done(_: Any) -> None:
                journal.record_campaign(camp.campaign_id, remote_id, "draft", None)
                journal.log(camp.campaign_id, "create_campaign", "ok")

            pool.submit(run, done)

        remote_id = (rc.remote_id if rc else None) or existing.get(self.title(camp))
        if remote_id is not None:
            set_content(remote_id)
            return
        body = {
            "type": "regular",
            "recipients": {
                "list_id": self.api.list_id,
                "segment_opts": {"saved_segment_id": segment_ids[camp.segment]},
            },
            "settings": {
                # the merge-tag render (``*|FNAME|*``), never the policy's Jinja source
                "subject_line": content.subject,
                "title": self.title(camp),
                "from_name": self.brand.from_name,
                "reply_to": self.brand.reply_to or self.brand.from_email,
            },
        }

        title = self.title(camp)

        def find() -> dict[str, str] | None:
            remote = self._existing_campaigns().get(title)
            return {"id": remote} if remote else None

        def create() -> str:
            res = self.api.create(f"create campaign {camp.segment}", lambda c: c.campaigns.create(body), find)
            return str(self.api.need(res, "id", f"create campaign {camp.segment}"))

        def created(remote_id: str) -> None:
            journal.record_campaign(camp.campaign_id, remote_id, "created", None)
            set_content(remote_id)

        pool.submit(create, created)

    def _submit_send(self, pool: CallPool, plan: SyncPlan, journal: Journal, camp: CampaignSpec) -> None:
        """Send or schedule once: skipped when this campaign (any version) is on record as sent, and the
        remote status is checked first (a crash between sending and recording must not send twice)."""
        remote_id = self._remote_id(camp, journal)
        rc = journal.remote_campaign(camp.campaign_id)
        if remote_id is None or rc is None or rc.status != "draft":
            return
        if journal.campaign_sent_before(camp):
            journal.log(
                camp.campaign_id, "send", "skipped", "an earlier version of this campaign was already sent"
            )
            return

        def remote_state() -> tuple[CampaignStatus, datetime | None] | None:
            remote = self.api.call(
                "get campaign",
                lambda c: c.campaigns.get(remote_id, fields=["id", "status", "send_time"]),
                write=False,
            )
            status = self.api.need(remote, "status", "get campaign")
            if status in ("sent", "sending"):
                return "sent", _parse_ts(remote.get("send_time")) or utcnow()
            if status == "schedule":
                return "scheduled", _parse_ts(remote.get("send_time")) or plan.schedule_at
            return None

        def run() -> tuple[CampaignStatus, datetime | None, str | None]:
            done_before = remote_state()
            if done_before is not None:
                return (*done_before, None)
            # a send whose answer was lost may have gone out: the status is read again before a retry
            if plan.schedule_at:
                when = _utc(plan.schedule_at)
                at = when.strftime("%Y-%m-%dT%H:%M:%S+00:00")
                self.api.create(
                    "schedule campaign",
                    lambda c: c.campaigns.schedule(remote_id, {"schedule_time": at}),
                    remote_state,
                )
                return "scheduled", when.replace(tzinfo=None), "schedule"
            self.api.create("send campaign", lambda c: c.campaigns.send(remote_id), remote_state)
            return "sent", utcnow(), "send"

        def done(res: tuple[CampaignStatus, datetime | None, str | None]) -> None:
            status, when, op = res
            journal.record_campaign(camp.campaign_id, remote_id, status, when)
            if op:
                journal.log(camp.campaign_id, op, "ok")

        pool.submit(run, done)

    def _existing_campaigns(self) -> dict[str, str]:
        rows = self._pages(
            "list campaigns",
            lambda c, o: c.campaigns.list(
                list_id=self.api.list_id,
                count=PAGE,
                offset=o,
                fields=["campaigns.id", "campaigns.settings.title", "total_items"],
            ),
            "campaigns",
        )
        return {r["settings"]["title"]: r["id"] for r in rows if r.get("settings", {}).get("title")}

    # --- reading back -------------------------------------------------------------------------------

    def read_suppressions(self, since: datetime | None) -> Iterator[SuppressionEvent]:
        """Unsubscribed and cleaned members (changed since ``since``): they feed ``suppressions``."""
        after = None if since is None else _utc(since - READ_BACK_MARGIN).replace(microsecond=0).isoformat()
        for status in ("unsubscribed", "cleaned"):
            params: dict[str, Any] = {
                "status": status,
                "count": PAGE,
                "fields": ["members.email_address", "members.status", "total_items"],
            }
            if after is not None:
                params["since_last_changed"] = after
            members = self._pages(
                "list members",
                lambda c, o, p=params: c.lists.get_list_members_info(self.api.list_id, **p, offset=o),  # type: ignore[misc]  # default-argument lambda
                "members",
            )
            try:
                # a partial response that lost its fields reads as "nobody unsubscribed": never silently
                for m in members:
                    yield SuppressionEvent(self.api.need(m, "email_address", "list members"), status)
            except RemoteNotFoundError:
                raise self._no_such_list() from None

    def read_outcomes(
        self, engine: Any, campaign_ids: Sequence[str], since: datetime | None = None
    ) -> Iterator[OutcomeEvent]:
        """sent / opened / clicked / bounced (email activity) and unsubscribed (report) per member."""
        api = self.api  # no credentials: a ConfigError now, not an empty answer
        remote = load_remote_campaigns(engine, self.name)
        sent = [
            (cid, rc)
            for cid in campaign_ids
            if (rc := remote.get(cid)) is not None and rc.remote_id and rc.status in ("sent", "scheduled")
        ]
        if campaign_ids and not sent:
            drafts = sum(1 for cid in campaign_ids if cid in remote)
            raise NotFoundError(
                f"none of the {len(campaign_ids)} campaigns asked for was sent or scheduled through Mailchimp "
                f"(audience {api.list_id}; {drafts} drafts there): there are no email events to read",
                fix="send them first with `activation sync --destination mailchimp --send` (or --schedule-at), "
                "or collect without --destination",
            )
        resolve = customer_resolver(engine, self.name)
        actions = {"open": "opened", "click": "clicked", "bounce": "bounced"}
        for cid, rc in sent:
            rid = str(rc.remote_id)
            for row in self._pages(
                "email activity",
                lambda c, o, r=rid: c.reports.get_email_activity_for_campaign(
                    r, count=PAGE, offset=o, fields=["emails.email_address", "emails.activity", "total_items"]
                ),  # type: ignore[misc]  # default-argument lambda
                "emails",
            ):
                email = row["email_address"]
                cust = resolve(email)
                yield OutcomeEvent(cid, cust, "sent", rc.sent_at, email)
                for a in row.get("activity") or []:
                    if a.get("action") in actions:
                        yield OutcomeEvent(
                            cid, cust, actions[a["action"]], _parse_ts(a.get("timestamp")), email
                        )
            for row in self._pages(
                "unsubscribes",
                lambda c, o, r=rid: c.reports.get_unsubscribed_list_for_campaign(r, count=PAGE, offset=o),  # type: ignore[misc]  # default-argument lambda
                "unsubscribes",
            ):
                email = row["email_address"]
                yield OutcomeEvent(
                    cid, resolve(email), "unsubscribed", _parse_ts(row.get("timestamp")), email
                )

    def _pages(self, what: str, fetch: Callable[[Any, int], Any], key: str) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.api.call(what, lambda c, o=offset: fetch(c, o), write=False)  # type: ignore[misc]  # default-argument lambda
            total = int(self.api.need(page, "total_items", what))
            rows = page.get(key) or []
            yield from rows
            offset += len(rows)
            if not rows or offset >= total:
                return


def _utc(when: datetime) -> datetime:
    """An aware UTC time (a naive one is UTC already)."""
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _parse_ts(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts
