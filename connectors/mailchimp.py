"""Mailchimp through ``mailchimp-marketing``, wrapped so that its errors become ours.

The SDK has no retries, raises ``ApiClientError`` with an empty ``str()`` (the facts are in
``.status_code`` / ``.text``), returns a bare ``requests.Response`` instead of raising for a 5xx with an
empty body, and opens a new connection per call. :class:`MailchimpApi` fixes all four: one SDK client
and ``requests.Session`` per worker thread, every call retried per :class:`connectors.http.RetryPolicy`,
and every failure mapped onto :mod:`connectors.errors`.

What :class:`MailchimpDestination` writes, per sync, only for members whose state changed:

* members: ``POST /lists/{id}`` (≤ 500 a call, ``update_existing``, ``status_if_new`` only, so an
  unsubscribed or cleaned contact is never resubscribed), merge fields FNAME, SEGMENT, OFFER, COUPON,
  EXPIRES (created when missing);
* one static segment (tag) per segment name: ``members_to_add`` / ``members_to_remove`` (≤ 500 each), so a
  customer who moved loses the old tag; removals ride along with the next segment call when they can;
* one campaign per segment targeted at its static segment, content = the merge-tag render; a draft unless
  ``send`` / ``schedule_at``; a campaign is sent at most once (recorded in ``destination_campaigns`` and
  checked on the remote before sending).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from activation.errors import ConfigError
from activation.settings import BrandSettings, MailchimpSettings
from connectors.base import (
    CallStats,
    CampaignSpec,
    Journal,
    MemberChange,
    OutcomeEvent,
    SuppressionEvent,
    SyncPlan,
    merge_fields,
)
from connectors.errors import (
    AuthError,
    BadRequestError,
    ComplianceError,
    DestinationError,
    RateLimitedError,
    RemoteNotFoundError,
    ServerError,
    TransportError,
)
from connectors.http import CallPool, MemberTracker, RetryPolicy, call_with_retry, parse_retry_after, redact

PAGE = 1000


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


def _chunks(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


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

    def __repr__(self) -> str:
        return f"MailchimpApi(host={self.host!r}, list_id={self.list_id!r})"

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import mailchimp_marketing

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
            ComplianceError: the API refused a member for consent reasons.
        """

        def attempt() -> Any:
            from mailchimp_marketing.api_client import ApiClientError

            self.stats.add(write=write)
            self._local.last = None
            try:
                res = fn(self._client())
            except ApiClientError as exc:
                raise self._error(what, exc.status_code, exc.text) from None
            if isinstance(res, requests.Response):
                if not res.ok:
                    raise self._error(what, res.status_code, res.text)
                return {}
            return res

        return call_with_retry(attempt, self.retry, what=f"Mailchimp {what}")

    def _error(self, what: str, status: int | None, text: Any) -> DestinationError:
        secrets = (self._key,)
        if status is None:
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
            out[""] = 4  # ping, list, merge fields, segments
        return out

    # --- apply ------------------------------------------------------------------------------------

    def apply(self, plan: SyncPlan, journal: Journal) -> None:
        publish = [c for c in plan.campaigns if self._needs_publish(c, plan, journal)]
        if not plan.changes and not publish:
            return
        self.verify()
        needed = {c.tag_add for c in plan.changes if c.tag_add} | {c.segment for c in publish}
        segment_ids = self.ensure_segments(needed)
        if any(c.upsert for c in plan.changes):
            self.ensure_merge_fields()
        existing = (
            self._existing_campaigns() if any(self._remote_id(c, journal) is None for c in publish) else {}
        )
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

    def verify(self) -> None:
        """Cheap reads that fail fast (before any write) on a wrong key or list id."""
        self.api.call("ping", lambda c: c.ping.get(), write=False)
        try:
            self.api.call(
                "get list", lambda c: c.lists.get_list(self.api.list_id, fields="id,name"), write=False
            )
        except RemoteNotFoundError:
            raise self._no_such_list() from None

    def _no_such_list(self) -> RemoteNotFoundError:
        return RemoteNotFoundError(
            f"Mailchimp audience {self.api.list_id!r} does not exist",
            fix="set ACTIVATION_MAILCHIMP__LIST_ID to an audience id of this account",
            status=404,
        )

    def ensure_merge_fields(self) -> None:
        page = self.api.call(
            "merge fields", lambda c: c.lists.get_list_merge_fields(self.api.list_id, count=PAGE), write=False
        )
        have = {m["tag"] for m in page.get("merge_fields", [])}
        calls = []
        for tag, label in merge_fields().items():
            if tag not in have:
                body = {"tag": tag, "name": label, "type": "text", "required": False, "public": False}
                calls.append(
                    lambda b=body, t=tag: self.api.call(  # type: ignore[misc]  # default-argument lambda
                        f"create merge field {t}",
                        lambda c: c.lists.add_list_merge_field(self.api.list_id, b),
                        write=True,
                    )
                )
        self._parallel(calls)

    def ensure_segments(self, names: set[str]) -> dict[str, int]:
        """name -> static segment id, creating the ``names`` that are missing."""
        ids: dict[str, int] = {}
        offset = 0
        while True:
            page = self.api.call(
                "list segments",
                lambda c, o=offset: c.lists.list_segments(  # type: ignore[misc]  # default-argument lambda
                    self.api.list_id,
                    type="static",
                    count=PAGE,
                    offset=o,
                    fields="segments.id,segments.name,total_items",
                ),
                write=False,
            )
            segs = page.get("segments", [])
            ids.update({s["name"]: int(s["id"]) for s in segs})
            offset += len(segs)
            if not segs or offset >= int(page.get("total_items", 0)):
                break
        missing = sorted(names - set(ids))
        created = self._parallel(
            [
                lambda n=name: self.api.call(  # type: ignore[misc]  # default-argument lambda
                    f"create segment {n}",
                    lambda c: c.lists.create_segment(self.api.list_id, {"name": n, "static_segment": []}),
                    write=True,
                )
                for name in missing
            ]
        )
        ids.update({name: int(seg["id"]) for name, seg in zip(missing, created, strict=True)})
        return ids

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
            seg_id = segment_ids[seg]

            def run() -> Any:
                return self.api.call(
                    f"segment {seg}",
                    lambda cl: cl.lists.batch_segment_members(body, self.api.list_id, seg_id),
                    write=True,
                )

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
            chunks = _chunks(changes, B)
            rem = removes.pop(seg, [])
            for i, chunk in enumerate(chunks):
                riders = rem[i * B : (i + 1) * B]
                self._submit_upsert(pool, tracker, seg, chunk, riders, segment_call, flush)
            for rest in _chunks(rem[len(chunks) * B :], B):
                segment_call(seg, [], rest)
        for seg, rem in removes.items():
            for chunk in _chunks(rem, B):
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
        body = {
            "members": [
                {"email_address": c.email, "status_if_new": "subscribed", "merge_fields": c.member.fields}
                for c in chunk
                if c.member
            ],
            "update_existing": True,
        }

        def run() -> Any:
            return self.api.call(
                "batch upsert", lambda cl: cl.lists.batch_list_members(self.api.list_id, body), write=True
            )

        def done(res: Any) -> None:
            failed: dict[str, str] = {}
            for err in res.get("errors") or []:
                msg = str(err.get("error") or "refused")
                if err.get("field_message"):
                    msg += f" ({err['field_message']})"
                failed[str(err.get("email_address", "")).lower()] = msg
            to_add = []
            for c in chunk:
                err = failed.get(c.email)
                if err:
                    tracker.done(c, error=err, reason=_consent_reason(err), ops=1 + (1 if c.tag_add else 0))
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
                "subject_line": camp.subject,
                "title": self.title(camp),
                "from_name": self.brand.from_name,
                "reply_to": self.brand.reply_to or self.brand.from_email,
            },
        }

        def create() -> Any:
            return self.api.call(
                f"create campaign {camp.segment}", lambda c: c.campaigns.create(body), write=True
            )

        def created(res: Any) -> None:
            journal.record_campaign(camp.campaign_id, str(res["id"]), "created", None)
            set_content(str(res["id"]))

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

        def run() -> tuple[str, datetime | None, str | None]:
            remote = self.api.call(
                "get campaign",
                lambda c: c.campaigns.get(remote_id, fields="id,status,send_time"),
                write=False,
            )
            status = remote.get("status")
            if status in ("sent", "sending"):
                return "sent", _parse_ts(remote.get("send_time")) or _now(), None
            if status == "schedule":
                return "scheduled", _parse_ts(remote.get("send_time")) or plan.schedule_at, None
            if plan.schedule_at:
                when = plan.schedule_at if plan.schedule_at.tzinfo else plan.schedule_at.replace(tzinfo=UTC)
                self.api.call(
                    "schedule campaign",
                    lambda c: c.campaigns.schedule(remote_id, {"schedule_time": when.isoformat()}),
                    write=True,
                )
                return "scheduled", when.astimezone(UTC).replace(tzinfo=None), "schedule"
            self.api.call("send campaign", lambda c: c.campaigns.send(remote_id), write=True)
            return "sent", _now(), "send"

        def done(res: tuple[str, datetime | None, str | None]) -> None:
            status, when, op = res
            journal.record_campaign(camp.campaign_id, remote_id, status, when)
            if op:
                journal.log(camp.campaign_id, op, "ok")

        pool.submit(run, done)

    def _existing_campaigns(self) -> dict[str, str]:
        out: dict[str, str] = {}
        offset = 0
        while True:
            page = self.api.call(
                "list campaigns",
                lambda c, o=offset: c.campaigns.list(  # type: ignore[misc]  # default-argument lambda
                    list_id=self.api.list_id,
                    count=PAGE,
                    offset=o,
                    fields="campaigns.id,campaigns.settings.title,total_items",
                ),
                write=False,
            )
            rows = page.get("campaigns", [])
            out.update({r["settings"]["title"]: r["id"] for r in rows if r.get("settings", {}).get("title")})
            offset += len(rows)
            if not rows or offset >= int(page.get("total_items", 0)):
                return out

    # --- reading back -------------------------------------------------------------------------------

    def read_suppressions(self, since: datetime | None) -> Iterator[SuppressionEvent]:
        """Unsubscribed and cleaned members (changed since ``since``): they feed ``suppressions``."""
        for status in ("unsubscribed", "cleaned"):
            offset = 0
            while True:
                params: dict[str, Any] = {
                    "status": status,
                    "count": PAGE,
                    "offset": offset,
                    "fields": "members.email_address,members.status,total_items",
                }
                if since is not None:
                    params["since_last_changed"] = since.replace(tzinfo=UTC, microsecond=0).isoformat()
                try:
                    page = self.api.call(
                        "list members",
                        lambda c, p=params: c.lists.get_list_members_info(self.api.list_id, **p),  # type: ignore[misc]  # default-argument lambda
                        write=False,
                    )
                except RemoteNotFoundError:
                    raise self._no_such_list() from None
                members = page.get("members", [])
                for m in members:
                    yield SuppressionEvent(m["email_address"], status)
                offset += len(members)
                if not members or offset >= int(page.get("total_items", 0)):
                    break

    def read_outcomes(
        self, engine: Any, campaign_ids: Sequence[str], since: datetime | None = None
    ) -> Iterator[OutcomeEvent]:
        """sent / opened / clicked / bounced (email activity) and unsubscribed (report) per member."""
        from connectors.state import load_remote_campaigns
        from connectors.sync import customer_resolver

        remote = load_remote_campaigns(engine, self.name)
        resolve = customer_resolver(engine, self.name)
        actions = {"open": "opened", "click": "clicked", "bounce": "bounced"}
        for cid in campaign_ids:
            rc = remote.get(cid)
            if rc is None or not rc.remote_id or rc.status not in ("sent", "scheduled"):
                continue
            rid = rc.remote_id
            for row in self._pages(
                "email activity",
                lambda c, o, r=rid: c.reports.get_email_activity_for_campaign(r, count=PAGE, offset=o),  # type: ignore[misc]  # default-argument lambda
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
            rows = page.get(key, [])
            yield from rows
            offset += len(rows)
            if not rows or offset >= int(page.get("total_items", 0)):
                return


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _parse_ts(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts
