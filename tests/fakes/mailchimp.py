"""A Mailchimp Marketing API (3.0) subset on 127.0.0.1 that enforces the rules this project relies on.

Enforced: Basic auth with the API key (401 "API Key Invalid"); ≤ 500 members per ``POST /lists/{id}``
and per ``members_to_add`` / ``members_to_remove`` (400 beyond); "Member In Compliance State" for any
attempt to (re)subscribe an unsubscribed or cleaned member with ``status`` and for emails in
``compliance`` (permanently deleted); unknown merge fields rejected per member; static segments (tags);
campaigns, content, send/schedule (content merge tags must exist; a campaign is sent once); reports and
email activity; members listing with ``status`` and ``since_last_changed``; at most 10 requests in
flight (429 beyond); faults and latency from :class:`tests.fakes.server.Faults`.
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
}  # Mailchimp's own merge tags (no merge field needed)
MERGE_TAG_RE = re.compile(r"\*\|([A-Z0-9_:]+)\|\*")


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _err(status: int, title: str, detail: str = "") -> JSONResponse:
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
        self.merge_fields: dict[str, dict[str, Any]] = {
            "FNAME": {"merge_id": 1, "tag": "FNAME", "name": "First Name", "type": "text"},
            "LNAME": {"merge_id": 2, "tag": "LNAME", "name": "Last Name", "type": "text"},
        }
        self.segments: dict[int, dict[str, Any]] = {}
        self.campaigns: dict[str, dict[str, Any]] = {}
        self.activity: dict[str, dict[str, list[dict[str, str]]]] = {}  # campaign -> email -> actions
        self.unsubscribes: dict[str, list[dict[str, str]]] = {}
        self.compliance: set[str] = set()  # permanently deleted emails: any write is refused
        self._ids = itertools.count(1001)
        app = Starlette(
            routes=[
                Route("/3.0/ping", self.ping),
                Route("/3.0/lists/{list_id}", self.get_list, methods=["GET"]),
                Route("/3.0/lists/{list_id}", self.batch_members, methods=["POST"]),
                Route("/3.0/lists/{list_id}/members", self.list_members, methods=["GET"]),
                Route("/3.0/lists/{list_id}/merge-fields", self.get_merge_fields, methods=["GET"]),
                Route("/3.0/lists/{list_id}/merge-fields", self.add_merge_field, methods=["POST"]),
                Route("/3.0/lists/{list_id}/segments", self.list_segments, methods=["GET"]),
                Route("/3.0/lists/{list_id}/segments", self.create_segment, methods=["POST"]),
                Route("/3.0/lists/{list_id}/segments/{segment_id:int}", self.batch_segment, methods=["POST"]),
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

    # --- auth -----------------------------------------------------------------------------------------

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
            "title": "API Key Invalid",
            "status": 401,
            "detail": "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            "instance": "",
        }

    # --- helpers for tests ----------------------------------------------------------------------------

    def add_member(self, email: str, status: str = "subscribed", **merge: str) -> None:
        self.members[email.lower()] = {
            "email_address": email,
            "status": status,
            "merge_fields": dict(merge),
            "last_changed": now_iso(),
        }

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

    def _check_list(self, request: Request) -> JSONResponse | None:
        if request.path_params["list_id"] != self.list_id:
            return _err(404, "Resource Not Found", "The requested resource could not be found.")
        return None

    # --- endpoints ----------------------------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        return JSONResponse({"health_status": "Everything's Chimpy!"})

    async def get_list(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        return JSONResponse(
            {
                "id": self.list_id,
                "name": "Customers",
                "stats": {"member_count": sum(m["status"] == "subscribed" for m in self.members.values())},
            }
        )

    async def batch_members(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        body = await request.json()
        members = body.get("members") or []
        if len(members) > 500:
            return _err(
                400, "Invalid Resource", f"members: a maximum of 500 members per call ({len(members)} given)"
            )
        update_existing = bool(body.get("update_existing"))
        stamp = now_iso()
        new, updated, errors = [], [], []
        for item in members:
            email = str(item.get("email_address", ""))
            key = email.lower()
            unknown = [t for t in (item.get("merge_fields") or {}) if t not in self.merge_fields]
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
                if status not in ("subscribed", "unsubscribed", "cleaned", "pending", "transactional"):
                    errors.append(
                        {
                            "email_address": email,
                            "error": "status_if_new or status is required for new members",
                            "error_code": "ERROR_GENERIC",
                        }
                    )
                    continue
                self.members[key] = {
                    "email_address": email,
                    "status": status,
                    "merge_fields": dict(item.get("merge_fields") or {}),
                    "last_changed": stamp,
                }
                new.append({"email_address": email, "status": status})
                continue
            if not update_existing:
                errors.append(
                    {
                        "email_address": email,
                        "error": f"{email} is already a list member.",
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
            existing["merge_fields"].update(item.get("merge_fields") or {})
            existing["last_changed"] = stamp
            updated.append({"email_address": email, "status": existing["status"]})
        return JSONResponse(
            {
                "new_members": new,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(new),
                "total_updated": len(updated),
                "error_count": len(errors),
            }
        )

    async def list_members(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        q = request.query_params
        rows = list(self.members.values())
        if q.get("status"):
            rows = [m for m in rows if m["status"] == q["status"]]
        if q.get("since_last_changed"):
            since = datetime.fromisoformat(q["since_last_changed"])
            rows = [m for m in rows if datetime.fromisoformat(m["last_changed"]) >= since]
        count, offset = min(int(q.get("count", 10)), 1000), int(q.get("offset", 0))
        page = rows[offset : offset + count]
        return JSONResponse(
            {
                "members": [
                    {
                        "email_address": m["email_address"],
                        "status": m["status"],
                        "merge_fields": m["merge_fields"],
                        "last_changed": m["last_changed"],
                    }
                    for m in page
                ],
                "total_items": len(rows),
            }
        )

    async def get_merge_fields(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        return JSONResponse(
            {"merge_fields": list(self.merge_fields.values()), "total_items": len(self.merge_fields)}
        )

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
        if tag in self.merge_fields or len(tag) > 10:
            return _err(
                400, "Invalid Resource", f'A Merge Field with the tag "{tag}" already exists or is too long.'
            )
        self.merge_fields[tag] = {
            "merge_id": len(self.merge_fields) + 1,
            "tag": tag,
            "name": body["name"],
            "type": body["type"],
        }
        return JSONResponse(self.merge_fields[tag])

    async def list_segments(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        q = request.query_params
        rows = [s for s in self.segments.values() if not q.get("type") or s["type"] == q["type"]]
        count, offset = min(int(q.get("count", 10)), 1000), int(q.get("offset", 0))
        return JSONResponse(
            {
                "segments": [self._segment_json(s) for s in rows[offset : offset + count]],
                "total_items": len(rows),
            }
        )

    @staticmethod
    def _segment_json(s: dict[str, Any]) -> dict[str, Any]:
        return {"id": s["id"], "name": s["name"], "type": s["type"], "member_count": len(s["members"])}

    async def create_segment(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        body = await request.json()
        name = str(body.get("name", ""))
        if not name or "static_segment" not in body:
            return _err(400, "Invalid Resource", "name and static_segment are required")
        if any(s["name"] == name for s in self.segments.values()):
            return _err(400, "Invalid Resource", f"A segment named {name!r} already exists")
        seg = {"id": next(self._ids), "name": name, "type": "static", "members": set()}
        for email in body["static_segment"]:
            if email.lower() in self.members:
                seg["members"].add(email.lower())
        self.segments[seg["id"]] = seg
        return JSONResponse(self._segment_json(seg))

    async def batch_segment(self, request: Request) -> Response:
        if (e := self._check_list(request)) is not None:
            return e
        seg = self.segments.get(request.path_params["segment_id"])
        if seg is None:
            return _err(404, "Resource Not Found", "segment not found")
        body = await request.json()
        adds, removes = body.get("members_to_add") or [], body.get("members_to_remove") or []
        if len(adds) > 500 or len(removes) > 500:
            return _err(
                400, "Invalid Resource", "members_to_add and members_to_remove take at most 500 emails each"
            )
        added, removed, missing = [], [], []
        for email in adds:
            if email.lower() not in self.members:
                missing.append(email)
                continue
            seg["members"].add(email.lower())
            added.append({"email_address": email})
        for email in removes:
            if email.lower() in seg["members"]:
                seg["members"].discard(email.lower())
                removed.append({"email_address": email})
        errors = (
            [{"email_addresses": missing, "error": "Email addresses do not belong to the list"}]
            if missing
            else []
        )
        return JSONResponse(
            {
                "members_added": added,
                "members_removed": removed,
                "errors": errors,
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": len(missing),
            }
        )

    async def list_campaigns(self, request: Request) -> Response:
        q = request.query_params
        rows = [
            c
            for c in self.campaigns.values()
            if not q.get("list_id") or c["recipients"]["list_id"] == q["list_id"]
        ]
        count, offset = min(int(q.get("count", 10)), 1000), int(q.get("offset", 0))
        return JSONResponse(
            {
                "campaigns": [self._campaign_json(c) for c in rows[offset : offset + count]],
                "total_items": len(rows),
            }
        )

    @staticmethod
    def _campaign_json(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in ("content", "recipients_sent")}

    async def create_campaign(self, request: Request) -> Response:
        body = await request.json()
        rec = body.get("recipients") or {}
        if body.get("type") != "regular":
            return _err(400, "Invalid Resource", "type must be regular")
        if rec.get("list_id") != self.list_id:
            return _err(400, "Invalid Resource", "recipients.list_id does not exist")
        seg_id = (rec.get("segment_opts") or {}).get("saved_segment_id")
        if seg_id is not None and seg_id not in self.segments:
            return _err(400, "Invalid Resource", "saved_segment_id does not exist")
        cid = hashlib.md5(str(next(self._ids)).encode()).hexdigest()[:10]
        self.campaigns[cid] = {
            "id": cid,
            "type": "regular",
            "status": "save",
            "recipients": rec,
            "settings": body.get("settings") or {},
            "content": None,
            "send_time": "",
            "recipients_sent": [],
        }
        return JSONResponse(self._campaign_json(self.campaigns[cid]))

    async def get_campaign(self, request: Request) -> Response:
        c = self.campaigns.get(request.path_params["campaign_id"])
        if c is None:
            return _err(404, "Resource Not Found", "campaign not found")
        return JSONResponse(self._campaign_json(c))

    async def set_content(self, request: Request) -> Response:
        c = self.campaigns.get(request.path_params["campaign_id"])
        if c is None:
            return _err(404, "Resource Not Found", "campaign not found")
        if c["status"] != "save":
            return _err(400, "Bad Request", "Cannot edit the content of a sent or scheduled campaign")
        body = await request.json()
        c["content"] = {"html": body.get("html", ""), "plain_text": body.get("plain_text", "")}
        return JSONResponse({"html": c["content"]["html"], "plain_text": c["content"]["plain_text"]})

    def _ready(self, c: dict[str, Any]) -> JSONResponse | None:
        if c["status"] != "save":
            return _err(400, "Bad Request", "This campaign has already been sent or scheduled.")
        if not c["content"] or not c["content"]["html"]:
            return _err(400, "Bad Request", "Your Campaign is not ready to send: content is missing.")
        text = c["content"]["html"] + c["content"]["plain_text"]
        unknown = sorted(
            {t for t in MERGE_TAG_RE.findall(text) if t not in self.merge_fields and t not in BUILTIN_TAGS}
        )
        if unknown:
            return _err(
                400, "Bad Request", f"Your Campaign is not ready to send: unknown merge tags {unknown}"
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
        c = self.campaigns.get(request.path_params["campaign_id"])
        if c is None:
            return _err(404, "Resource Not Found", "campaign not found")
        body = await request.json()
        if not body.get("schedule_time"):
            return _err(400, "Invalid Resource", "schedule_time is required")
        if (e := self._ready(c)) is not None:
            return e
        c["status"], c["send_time"] = "schedule", body["schedule_time"]
        return Response(status_code=204)

    async def email_activity(self, request: Request) -> Response:
        acts = self.activity.get(request.path_params["campaign_id"])
        if acts is None:
            return _err(404, "Resource Not Found", "report not found")
        q = request.query_params
        rows = [
            {
                "campaign_id": request.path_params["campaign_id"],
                "list_id": self.list_id,
                "email_address": e,
                "activity": a,
            }
            for e, a in acts.items()
        ]
        count, offset = min(int(q.get("count", 10)), 1000), int(q.get("offset", 0))
        return JSONResponse({"emails": rows[offset : offset + count], "total_items": len(rows)})

    async def unsubscribed(self, request: Request) -> Response:
        cid = request.path_params["campaign_id"]
        if cid not in self.campaigns:
            return _err(404, "Resource Not Found", "report not found")
        rows = self.unsubscribes.get(cid, [])
        q = request.query_params
        count, offset = min(int(q.get("count", 10)), 1000), int(q.get("offset", 0))
        return JSONResponse({"unsubscribes": rows[offset : offset + count], "total_items": len(rows)})
