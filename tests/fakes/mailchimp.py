"""The Mailchimp Marketing API 3.0, the parts this project calls, on 127.0.0.1, written from the vendor's
reference (not from the connector): each behaviour cites the page it comes from. ``tests/fakes/README.md``
lists what is implemented and what is not.

Docs cited below (all under https://mailchimp.com/developer/marketing/):

* ``docs/methods-parameters/`` — partial responses (``fields`` / ``exclude_fields``: comma-separated,
  dot notation into sub-objects and the items of lists), pagination (``count`` default 10, maximum 1000;
  ``offset`` default 0; ``total_items`` irrespective of pagination).
* ``docs/errors/`` — the problem-detail error body (``type``, ``title``, ``status``, ``detail``,
  ``instance``); "API Key Invalid" 401; "Resource Not Found" 404; "Invalid Resource" 400; "Member In
  Compliance State".
* ``api/lists/batch-subscribe-or-unsubscribe/`` — ``POST /lists/{list_id}``: up to 500 members a call,
  ``update_existing``, ``status_if_new`` vs ``status``; the response's ``new_members``, ``updated_members``
  (member objects, with their ``status``), ``errors[]`` (``email_address``, ``error``, ``error_code``,
  ``field``, ``field_message``), ``total_created`` / ``total_updated`` / ``error_count``.
* ``api/list-members/list-members-info/`` — ``GET /lists/{list_id}/members``: ``status``,
  ``since_last_changed`` ("whose information changed after the set timeframe").
* ``api/list-merges/`` — merge fields: ``tag``, ``name``, ``type``, ``default_value`` ("the default value
  for the merge field if null"), add (``POST``) and update (``PATCH .../merge-fields/{merge_id}``).
* ``api/list-segments/`` — static segments (tags): create with ``name`` + ``static_segment``; list with
  ``type``; batch add/remove ``members_to_add`` / ``members_to_remove`` ("A maximum of 500 members can be
  sent"; "emails not present on the list will be ignored").
* ``api/campaigns/`` — add (``type``, ``recipients.list_id``, ``segment_opts.saved_segment_id``,
  ``settings.subject_line`` / ``title`` / ``from_name`` / ``reply_to``), list (``list_id``, ``status``),
  get, set content (``PUT .../content``), send, schedule ("``schedule_time``: the UTC date and time …
  Campaigns may only be scheduled to send on the quarter-hour (:00, :15, :30, :45)").
* ``api/reports/`` — ``email-activity`` and ``unsubscribed`` per campaign.
* guides https://mailchimp.com/help/all-the-merge-tags-cheat-sheet/ and
  https://mailchimp.com/help/set-default-merge-values/ — ``*|FNAME|*`` renders the member's value, or the
  merge field's default when the member has none; Mailchimp's own tags (``*|UNSUB|*`` …) need no field.

Test modes (what the world does to a sync, not documented API behaviour): pre-existing audiences
(:meth:`FakeMailchimp.add_member` with any status, :attr:`compliance` for permanently deleted
addresses), late opt-outs (:attr:`late_opt_outs`: these contacts unsubscribe just before the next write
that names them lands), and the faults of :class:`tests.fakes.server.Faults` (including faults *after*
a request was applied: the work is done and the answer lost).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FakeApiServer

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
BUILTIN_TAGS = {
    "UNSUB",
    "EMAIL",
    "UPDATE_PROFILE",
    "ARCHIVE",
    "FORWARD",
    "LIST:ADDRESS",
    "LIST:ADDRESSLINE",
    "LIST:COMPANY",
    "LIST:NAME",
    "LIST:DESCRIPTION",
    "CURRENT_YEAR",
    "DATE:Y",
    "MC:SUBJECT",
    "MC_PREVIEW_TEXT",
    "REWARDS",
}  # Mailchimp's own merge tags (the merge-tag cheat sheet: no merge field needed)
MERGE_TAG_RE = re.compile(r"\*\|([A-Z0-9_:]+)\|\*")
MEMBER_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")
MAX_COUNT = 1000  # docs/methods-parameters/#pagination
MAX_BATCH = 500  # api/lists/batch-subscribe-or-unsubscribe/, api/list-segments/ (members_to_add/remove)


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _err(status: int, title: str, detail: str = "") -> JSONResponse:
    """docs/errors/: every error is a problem-detail document."""
    return JSONResponse(
        {
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": "",
        },
        status_code=status,
    )


def _split(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def partial_response(obj: Any, fields: list[str], exclude: list[str]) -> Any:
    """docs/methods-parameters/#partial-responses: ``fields`` keeps only the named paths, ``exclude_fields``
    drops them; ``a.b`` reaches into object ``a``, and into every item when ``a`` is a list. A name that
    matches nothing selects nothing (``fields=m,e,m`` returns ``{}``)."""
    if fields:
        obj = _keep(obj, [f.split(".") for f in fields])
    for f in exclude:
        obj = _drop(obj, f.split("."))
    return obj


def _keep(obj: Any, paths: list[list[str]]) -> Any:
    if isinstance(obj, list):
        return [_keep(item, paths) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        sub = [p[1:] for p in paths if p[0] == key]
        if not sub:
            continue
        out[key] = value if any(not p for p in sub) else _keep(value, [p for p in sub if p])
    return out


def _drop(obj: Any, path: list[str]) -> Any:
    if isinstance(obj, list):
        return [_drop(item, path) for item in obj]
    if not isinstance(obj, dict) or path[0] not in obj:
        return obj
    if len(path) == 1:
        return {k: v for k, v in obj.items() if k != path[0]}
    return {**obj, path[0]: _drop(obj[path[0]], path[1:])}


def _parse_time(value: str) -> datetime | None:
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def subscriber_hash(email: str) -> str:
    """api/list-members/: a member's id is the MD5 hash of the lower-cased email address."""
    return hashlib.md5(email.lower().encode()).hexdigest()


class FakeMailchimp(FakeApiServer):
    """``FakeMailchimp(api_key).start()``; point ``ACTIVATION_MAILCHIMP__BASE_URL`` at ``.base_url``."""

    def __init__(
        self,
        api_key: str = "0123456789abcdef0123456789abcdef-us1",
        list_id: str = "a1b2c3d4e5",
        *,
        seed: int = 0,
    ) -> None:
        self.api_key = api_key
        self.list_id = list_id
        self.members: dict[str, dict[str, Any]] = {}  # lower email -> member
        # every audience starts with these two (api/list-merges/: FNAME and LNAME are default fields)
        self.merge_fields: dict[str, dict[str, Any]] = {
            "FNAME": {
                "merge_id": 1,
                "tag": "FNAME",
                "name": "First Name",
                "type": "text",
                "default_value": "",
            },
            "LNAME": {
                "merge_id": 2,
                "tag": "LNAME",
                "name": "Last Name",
                "type": "text",
                "default_value": "",
            },
        }
        self.segments: dict[int, dict[str, Any]] = {}
        self.campaigns: dict[str, dict[str, Any]] = {}
        self.activity: dict[str, dict[str, list[dict[str, str]]]] = {}  # campaign -> email -> actions
        self.unsubscribes: dict[str, list[dict[str, str]]] = {}
        self.compliance: set[str] = set()  # permanently deleted emails: any write is refused
        self.late_opt_outs: set[str] = set()  # they unsubscribe just before the next write naming them
        self._ids = itertools.count(1001)
        lid = "/3.0/lists/{list_id}"
        app = Starlette(
            routes=[
                Route("/3.0/ping", self.ping),
                Route(lid, self.get_list, methods=["GET"]),
                Route(lid, self.batch_members, methods=["POST"]),
                Route(f"{lid}/members", self.list_members, methods=["GET"]),
                Route(f"{lid}/merge-fields", self.get_merge_fields, methods=["GET"]),
                Route(f"{lid}/merge-fields", self.add_merge_field, methods=["POST"]),
                Route(f"{lid}/merge-fields/{{merge_id}}", self.update_merge_field, methods=["PATCH"]),
                Route(f"{lid}/segments", self.list_segments, methods=["GET"]),
                Route(f"{lid}/segments", self.create_segment, methods=["POST"]),
                Route(f"{lid}/segments/{{segment_id}}", self.batch_segment, methods=["POST"]),
                Route("/3.0/campaigns", self.list_campaigns, methods=["GET"]),
                Route("/3.0/campaigns", self.create_campaign, methods=["POST"]),
                Route("/3.0/campaigns/{campaign_id}", self.get_campaign, methods=["GET"]),
                Route("/3.0/campaigns/{campaign_id}/content", self.set_content, methods=["PUT"]),
                Route("/3.0/campaigns/{campaign_id}/actions/send", self.send_campaign, methods=["POST"]),
                Route(
                    "/3.0/campaigns/{campaign_id}/actions/schedule", self.schedule_campaign, methods=["POST"]
                ),
                Route("/3.0/reports/{campaign_id}/email-activity", self.email_activity, methods=["GET"]),
                Route("/3.0/reports/{campaign_id}/unsubscribed", self.unsubscribed, methods=["GET"]),
            ]
        )
        super().__init__(app, seed=seed)

    @property
    def base_url(self) -> str:
        return f"{self.url}/3.0"

    # --- auth (docs/errors/: 401 "API Key Invalid") ----------------------------------------------

    def authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if not auth.startswith("Basic "):
            return False
        try:
            _, _, key = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return False
        return key == self.api_key

    def unauthorized_body(self) -> dict[str, Any]:
        return {
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": "API Key Invalid",
            "status": 401,
            "detail": "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            "instance": "",
        }

    # --- helpers for tests ----------------------------------------------------------------------------

    def add_member(self, email: str, status: str = "subscribed", **merge: str) -> None:
        """A contact already in the audience (any status, its own merge values)."""
        assert status in MEMBER_STATUSES, status
        self.members[email.lower()] = self._new_member(email, status, dict(merge), now_iso())

    def unsubscribe(self, email: str, status: str = "unsubscribed") -> None:
        m = self.members[email.lower()]
        m["status"] = status
        m["last_changed"] = now_iso()
        for cid, camp in self.campaigns.items():
            if camp["status"] == "sent" and email.lower() in camp["recipients_sent"]:
                self.unsubscribes.setdefault(cid, []).append({"email_address": email, "timestamp": now_iso()})

    def tags_of(self, email: str) -> set[str]:
        return {s["name"] for s in self.segments.values() if email.lower() in s["members"]}

    def segment_members(self, name: str) -> set[str]:
        return next((set(s["members"]) for s in self.segments.values() if s["name"] == name), set())

    def sent_to(self) -> dict[str, set[str]]:
        """Campaign title -> emails it was sent to."""
        return {
            c["settings"]["title"]: set(c["recipients_sent"])
            for c in self.campaigns.values()
            if c["status"] == "sent"
        }

    def render(self, text: str, email: str) -> str:
        """``text`` as ``email`` receives it (set-default-merge-values guide): each ``*|TAG|*`` of a merge field becomes
        the member's value, or the field's ``default_value`` when the member has none."""
        values = self.members[email.lower()]["merge_fields"]

        def one(m: re.Match[str]) -> str:
            tag = m.group(1)
            if tag not in self.merge_fields:
                return m.group(0)
            return str(values.get(tag) or self.merge_fields[tag].get("default_value") or "")

        return MERGE_TAG_RE.sub(one, text)

    def _new_member(self, email: str, status: str, merge: dict[str, Any], stamp: str) -> dict[str, Any]:
        return {
            "id": subscriber_hash(email),
            "email_address": email,
            "unique_email_id": subscriber_hash(email)[:10],
            "status": status,
            "merge_fields": merge,
            "list_id": self.list_id,
            "last_changed": stamp,
        }

    def _check_list(self, request: Request) -> JSONResponse | None:
        if request.path_params["list_id"] != self.list_id:
            return _err(404, "Resource Not Found", "The requested resource could not be found.")
        return None

    @staticmethod
    def _reply(request: Request, obj: Any) -> JSONResponse:
        """docs/methods-parameters/#partial-responses, on every response."""
        q = request.query_params
        return JSONResponse(partial_response(obj, _split(q.get("fields")), _split(q.get("exclude_fields"))))

    @staticmethod
    def _page(request: Request) -> tuple[int, int] | JSONResponse:
        """docs/methods-parameters/#pagination: ``count`` (default 10, at most 1000) and ``offset``."""
        q = request.query_params
        try:
            count, offset = int(q.get("count", 10)), int(q.get("offset", 0))
        except ValueError:
            return _err(400, "Invalid Resource", "count and offset must be integers")
        if count > MAX_COUNT or count < 0 or offset < 0:
            return _err(400, "Invalid Resource", f"count must be between 0 and {MAX_COUNT} ({count} given)")
        return count, offset

    # --- endpoints ----------------------------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        return self._reply(request, {"health_status": "Everything's Chimpy!"})

    async def get_list(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        return self._reply(
            request,
            {
                "id": self.list_id,
                "web_id": 1,
                "name": "Customers",
                "stats": {"member_count": sum(m["status"] == "subscribed" for m in self.members.values())},
            },
        )

    async def batch_members(self, request: Request) -> Response:
        """api/lists/batch-subscribe-or-unsubscribe/."""
        if (e := self._check_list(request)) is not None:
            return e
        body = await request.json()
        members = body.get("members") or []
        if len(members) > MAX_BATCH:
            return _err(
                400,
                "Invalid Resource",
                f"members: a maximum of {MAX_BATCH} members per call ({len(members)} given)",
            )
        update_existing = bool(body.get("update_existing"))
        stamp = now_iso()
        new, updated, errors = [], [], []
        for item in members:
            email = str(item.get("email_address", ""))
            key = email.lower()
            if key in self.late_opt_outs and key in self.members:
                self.late_opt_outs.discard(key)
                self.unsubscribe(email)
            merge = item.get("merge_fields") or {}
            unknown = [t for t in merge if t not in self.merge_fields]
            if not EMAIL_RE.match(email):
                errors.append(
                    {
                        "email_address": email,
                        "error": f"{email} looks fake or invalid, please enter a real email address.",
                        "error_code": "ERROR_GENERIC",
                    }
                )
                continue
            if unknown:
                errors.append(
                    {
                        "email_address": email,
                        "error": "Your merge fields were invalid.",
                        "error_code": "ERROR_GENERIC",
                        "field": "merge_fields",
                        "field_message": f"unknown merge field(s) {', '.join(unknown)}",
                    }
                )
                continue
            if key in self.compliance:
                errors.append(
                    {
                        "email_address": email,
                        "error": f"{email} was permanently deleted and cannot be re-imported. Member In Compliance State.",
                        "error_code": "ERROR_CONTACT_EXISTS",
                    }
                )
                continue
            existing = self.members.get(key)
            if existing is None:
                status = item.get("status") or item.get("status_if_new")
                if status not in MEMBER_STATUSES[:-1]:
                    errors.append(
                        {
                            "email_address": email,
                            "error": "status_if_new or status is required for new members",
                            "error_code": "ERROR_GENERIC",
                        }
                    )
                    continue
                self.members[key] = self._new_member(email, status, dict(merge), stamp)
                new.append(dict(self.members[key]))
                continue
            if not update_existing:
                errors.append(
                    {
                        "email_address": email,
                        "error": f"{email} is already a list member. Use PUT to insert or update list members.",
                        "error_code": "ERROR_CONTACT_EXISTS",
                    }
                )
                continue
            if (
                "status" in item
                and item["status"] != existing["status"]
                and existing["status"] in ("unsubscribed", "cleaned")
            ):
                errors.append(
                    {
                        "email_address": email,
                        "error": f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed. Member In Compliance State",
                        "error_code": "ERROR_CONTACT_EXISTS",
                    }
                )
                continue
            if "status" in item:
                existing["status"] = item["status"]
            # the API stores what it is sent: an empty value erases the one the contact gave
            existing["merge_fields"].update(merge)
            existing["last_changed"] = stamp
            # an existing contact is listed with its own status (an unsubscribed one stays unsubscribed)
            updated.append(dict(existing))
        return self._reply(
            request,
            {
                "new_members": new,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(new),
                "total_updated": len(updated),
                "error_count": len(errors),
            },
        )

    async def list_members(self, request: Request) -> Response:
        """api/list-members/list-members-info/."""
        if (e := self._check_list(request)) is not None:
            return e
        q = request.query_params
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        count, offset = page
        rows = list(self.members.values())
        if q.get("status"):
            if q["status"] not in MEMBER_STATUSES:
                return _err(400, "Invalid Resource", f"status: {q['status']!r} is not a member status")
            rows = [m for m in rows if m["status"] == q["status"]]
        if q.get("since_last_changed"):
            since = _parse_time(q["since_last_changed"])
            if since is None:
                return _err(400, "Invalid Resource", "since_last_changed: not an ISO 8601 time")
            rows = [m for m in rows if datetime.fromisoformat(m["last_changed"]) > since]  # "after"
        return self._reply(
            request,
            {
                "members": [dict(m) for m in rows[offset : offset + count]],
                "list_id": self.list_id,
                "total_items": len(rows),
            },
        )

    async def get_merge_fields(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        count, offset = page
        rows = list(self.merge_fields.values())
        return self._reply(request, {"merge_fields": rows[offset : offset + count], "total_items": len(rows)})

    async def add_merge_field(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        body = await request.json()
        tag = str(body.get("tag", "")).upper()
        if (
            not tag
            or not body.get("name")
            or body.get("type") not in ("text", "number", "date", "address", "phone", "url")
        ):
            return _err(400, "Invalid Resource", "tag, name and a valid type are required")
        if len(tag) > 10:
            return _err(400, "Invalid Resource", f"tag {tag!r}: at most 10 characters")
        if tag in self.merge_fields:
            return _err(
                400, "Invalid Resource", f'A Merge Field with the tag "{tag}" already exists for this list.'
            )
        self.merge_fields[tag] = {
            "merge_id": max(f["merge_id"] for f in self.merge_fields.values()) + 1,
            "tag": tag,
            "name": body["name"],
            "type": body["type"],
            "default_value": str(body.get("default_value") or ""),
        }
        return self._reply(request, self.merge_fields[tag])

    async def update_merge_field(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        field = next(
            (f for f in self.merge_fields.values() if str(f["merge_id"]) == request.path_params["merge_id"]),
            None,
        )
        if field is None:
            return _err(404, "Resource Not Found", "merge field not found")
        body = await request.json()
        for k in ("name", "default_value", "required", "public"):
            if k in body:
                field[k] = body[k]
        return self._reply(request, field)

    async def list_segments(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        q = request.query_params
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        count, offset = page
        rows = [s for s in self.segments.values() if not q.get("type") or s["type"] == q["type"]]
        return self._reply(
            request,
            {
                "segments": [self._segment_json(s) for s in rows[offset : offset + count]],
                "total_items": len(rows),
            },
        )

    def _segment_json(self, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": s["id"],
            "name": s["name"],
            "type": s["type"],
            "member_count": len(s["members"]),
            "list_id": self.list_id,
        }

    async def create_segment(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        body = await request.json()
        name = str(body.get("name", ""))
        if not name or "static_segment" not in body:
            return _err(400, "Invalid Resource", "name and static_segment are required")
        if any(s["name"] == name for s in self.segments.values()):
            return _err(400, "Bad Request", "Sorry, that tag already exists.")
        seg = {"id": next(self._ids), "name": name, "type": "static", "members": set()}
        for email in body["static_segment"]:
            if email.lower() in self.members:
                seg["members"].add(email.lower())
        self.segments[seg["id"]] = seg
        return self._reply(request, self._segment_json(seg))

    async def batch_segment(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        try:
            seg = self.segments.get(int(request.path_params["segment_id"]))
        except ValueError:
            seg = None
        if seg is None:
            return _err(404, "Resource Not Found", "segment not found")
        body = await request.json()
        adds, removes = body.get("members_to_add") or [], body.get("members_to_remove") or []
        if len(adds) > MAX_BATCH or len(removes) > MAX_BATCH:
            return _err(
                400,
                "Invalid Resource",
                f"members_to_add and members_to_remove take at most {MAX_BATCH} emails each",
            )
        added, removed, missing = [], [], []
        for email in adds:
            # a tag is added to any contact on the list, whatever its status: consent is the caller's job
            if email.lower() not in self.members:
                missing.append(email)
                continue
            seg["members"].add(email.lower())
            added.append(dict(self.members[email.lower()]))
        for email in removes:
            if email.lower() in seg["members"]:
                seg["members"].discard(email.lower())
                removed.append(dict(self.members[email.lower()]))
        errors = (
            [{"email_addresses": missing, "error": "Email addresses do not belong to the list"}]
            if missing
            else []
        )
        return self._reply(
            request,
            {
                "members_added": added,
                "members_removed": removed,
                "errors": errors,
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": len(missing),
            },
        )

    async def list_campaigns(self, request: Request) -> Response:
        q = request.query_params
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        count, offset = page
        rows = [
            c
            for c in self.campaigns.values()
            if (not q.get("list_id") or c["recipients"]["list_id"] == q["list_id"])
            and (not q.get("status") or c["status"] == q["status"])
        ]
        return self._reply(
            request,
            {
                "campaigns": [self._campaign_json(c) for c in rows[offset : offset + count]],
                "total_items": len(rows),
            },
        )

    @staticmethod
    def _campaign_json(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in ("content", "recipients_sent")}

    async def create_campaign(self, request: Request) -> Response:
        """api/campaigns/add-campaign/: titles need not be unique (a blind retry makes a second draft)."""
        body = await request.json()
        rec = body.get("recipients") or {}
        if body.get("type") not in ("regular", "plaintext", "absplit", "rss", "variate"):
            return _err(400, "Invalid Resource", "type: a valid campaign type is required")
        if rec.get("list_id") != self.list_id:
            return _err(400, "Invalid Resource", "recipients.list_id does not exist")
        seg_id = (rec.get("segment_opts") or {}).get("saved_segment_id")
        if seg_id is not None and seg_id not in self.segments:
            return _err(400, "Invalid Resource", "saved_segment_id does not exist")
        cid = hashlib.md5(str(next(self._ids)).encode()).hexdigest()[:10]
        self.campaigns[cid] = {
            "id": cid,
            "type": body["type"],
            "status": "save",
            "create_time": now_iso(),
            "recipients": rec,
            "settings": body.get("settings") or {},
            "content": None,
            "send_time": "",
            "recipients_sent": [],
        }
        return self._reply(request, self._campaign_json(self.campaigns[cid]))

    async def get_campaign(self, request: Request) -> Response:
        c = self.campaigns.get(request.path_params["campaign_id"])
        if c is None:
            return _err(404, "Resource Not Found", "campaign not found")
        return self._reply(request, self._campaign_json(c))

    async def set_content(self, request: Request) -> Response:
        c = self.campaigns.get(request.path_params["campaign_id"])
        if c is None:
            return _err(404, "Resource Not Found", "campaign not found")
        if c["status"] != "save":
            return _err(400, "Bad Request", "Cannot edit the content of a sent or scheduled campaign")
        body = await request.json()
        c["content"] = {"html": body.get("html", ""), "plain_text": body.get("plain_text", "")}
        return self._reply(request, {"html": c["content"]["html"], "plain_text": c["content"]["plain_text"]})

    def _ready(self, c: dict[str, Any]) -> JSONResponse | None:
        if c["status"] != "save":
            return _err(400, "Bad Request", "This campaign has already been sent or scheduled.")
        if not c["content"] or not c["content"]["html"]:
            return _err(400, "Bad Request", "Your Campaign is not ready to send: content is missing.")
        text = c["content"]["html"] + c["content"]["plain_text"] + str(c["settings"].get("subject_line", ""))
        unknown = sorted(
            {t for t in MERGE_TAG_RE.findall(text) if t not in self.merge_fields and t not in BUILTIN_TAGS}
        )
        if unknown:
            return _err(
                400, "Bad Request", f"Your Campaign is not ready to send: unknown merge tags {unknown}"
            )
        if not c["settings"].get("subject_line"):
            return _err(
                400, "Bad Request", "Your Campaign is not ready to send: the subject line is missing."
            )
        if not self._recipients(c):
            return _err(
                400,
                "Bad Request",
                "Your Campaign is not ready to send: the segment has no subscribed member.",
            )
        return None

    def _recipients(self, c: dict[str, Any]) -> list[str]:
        seg_id = (c["recipients"].get("segment_opts") or {}).get("saved_segment_id")
        pool = self.segments[seg_id]["members"] if seg_id is not None else set(self.members)
        return sorted(e for e in pool if self.members[e]["status"] == "subscribed")

    async def send_campaign(self, request: Request) -> Response:
        """api/campaigns/send-campaign/: once; only subscribed members of the segment receive it."""
        c = self.campaigns.get(request.path_params["campaign_id"])
        if c is None:
            return _err(404, "Resource Not Found", "campaign not found")
        if (e := self._ready(c)) is not None:
            return e
        c["status"], c["send_time"] = "sent", now_iso()
        c["recipients_sent"] = self._recipients(c)
        acts = self.activity.setdefault(c["id"], {})
        for email in c["recipients_sent"]:
            h = int(hashlib.sha256(email.encode()).hexdigest(), 16) % 10
            acts[email] = ([{"action": "open", "timestamp": now_iso()}] if h < 4 else []) + (
                [{"action": "click", "timestamp": now_iso(), "url": "https://shop.example.com"}]
                if h < 1
                else []
            )
        return Response(status_code=204)

    async def schedule_campaign(self, request: Request) -> Response:
        """api/campaigns/schedule-campaign/: ``schedule_time`` in UTC, on the quarter-hour, in the future."""
        c = self.campaigns.get(request.path_params["campaign_id"])
        if c is None:
            return _err(404, "Resource Not Found", "campaign not found")
        body = await request.json()
        when = _parse_time(str(body.get("schedule_time") or ""))
        if when is None:
            return _err(400, "Invalid Resource", "schedule_time: an ISO 8601 date and time is required")
        if when.minute % 15 or when.second or when.microsecond:
            return _err(
                400,
                "Invalid Resource",
                "Schedule time must be on the quarter-hour (:00, :15, :30, :45).",
            )
        if when <= datetime.now(UTC):
            return _err(400, "Invalid Resource", "Schedule time must be in the future.")
        if (e := self._ready(c)) is not None:
            return e
        c["status"], c["send_time"] = "schedule", when.astimezone(UTC).isoformat()
        return Response(status_code=204)

    async def email_activity(self, request: Request) -> Response:
        acts = self.activity.get(request.path_params["campaign_id"])
        if acts is None:
            return _err(404, "Resource Not Found", "report not found")
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        count, offset = page
        rows = [
            {
                "campaign_id": request.path_params["campaign_id"],
                "list_id": self.list_id,
                "email_address": e,
                "activity": a,
            }
            for e, a in acts.items()
        ]
        return self._reply(request, {"emails": rows[offset : offset + count], "total_items": len(rows)})

    async def unsubscribed(self, request: Request) -> Response:
        cid = request.path_params["campaign_id"]
        if cid not in self.campaigns:
            return _err(404, "Resource Not Found", "report not found")
        page = self._page(request)
        if isinstance(page, JSONResponse):
            return page
        count, offset = page
        rows = self.unsubscribes.get(cid, [])
        return self._reply(request, {"unsubscribes": rows[offset : offset + count], "total_items": len(rows)})
