"""A HubSpot CRM API (v3) subset on 127.0.0.1 with its rules: Bearer token (401 otherwise), contacts batch
upsert by email (≤ 100 inputs, 400 beyond; duplicate ids in one batch refused), HubSpot's email validation
(RFC syntax plus a known top-level domain: ``INVALID_EMAIL``), contact properties (unknown ones refused),
batch read by email, static (MANUAL) lists and their memberships, a rolling rate limit (429 with
``X-HubSpot-RateLimit-*`` headers and, unless turned off, ``Retry-After``), 429 beyond 10 requests in
flight, injectable faults.

Validation errors of a batch upsert reject the whole batch by default (``batch_errors = "reject"``:
400 ``VALIDATION_ERROR`` naming the offending inputs, nothing written), as HubSpot's batch endpoints do;
``batch_errors = "partial"`` answers 207 with per-input ``errors`` instead (the multi-status form)."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import deque
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import FakeApiServer

EMAIL_RE = re.compile(r"^[^@\s\"]+@[^@\s]+\.[^@\s]+$")
# a few real top-level domains: HubSpot refuses an address whose domain does not end in one from IANA's list
KNOWN_TLDS = frozenset(
    "com org net edu gov io co info biz shop store email app dev uk de fr nl es it be ch at se no dk fi "
    "pl pt ie us ca au nz jp br mx in".split()
)
BUILTIN_PROPERTIES = {"email", "firstname", "lastname", "phone", "company"}


def _err(status: int, message: str, category: str = "VALIDATION_ERROR", **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "message": message, "category": category, "correlationId": "fake", **extra},
        status_code=status,
    )


def valid_email(email: str) -> bool:
    """HubSpot's check: RFC-like syntax (no quotes, no empty or doubled dots) and a known TLD."""
    if not EMAIL_RE.match(email):
        return False
    local, _, domain = email.rpartition("@")
    if local.startswith(".") or local.endswith(".") or ".." in local or ".." in domain:
        return False
    return domain.rsplit(".", 1)[-1] in KNOWN_TLDS


class FakeHubSpot(FakeApiServer):
    def __init__(self, token: str = "pat-na1-00000000-0000-0000-0000-000000000000", *, seed: int = 0) -> None:
        self.token = token
        self.batch_errors = "reject"  # or "partial": 207 with per-input errors
        # rolling rate limit: at most ``rate_limit`` requests per ``rate_interval`` seconds (None: off)
        self.rate_limit: int | None = None
        self.rate_interval = 10.0
        self.rate_retry_after = True  # send Retry-After with a rate-limit 429 (the X-HubSpot headers always)
        self.rate_limited = 0
        self._window: deque[float] = deque()
        self.contacts: dict[str, dict[str, Any]] = {}  # id -> {"id", "properties"}
        self.by_email: dict[str, str] = {}
        self.properties: dict[str, dict[str, Any]] = {
            p: {
                "name": p,
                "label": p.title(),
                "type": "string",
                "fieldType": "text",
                "groupName": "contactinformation",
            }
            for p in BUILTIN_PROPERTIES
        }
        self.lists: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(5001)
        app = Starlette(
            routes=[
                Route("/crm/v3/objects/contacts/batch/upsert", self.upsert, methods=["POST"]),
                Route("/crm/v3/objects/contacts/batch/read", self.batch_read, methods=["POST"]),
                Route("/crm/v3/properties/contacts", self.get_properties, methods=["GET"]),
                Route("/crm/v3/properties/contacts", self.create_property, methods=["POST"]),
                Route("/crm/v3/lists", self.create_list, methods=["POST"]),
                Route(
                    "/crm/v3/lists/object-type-id/{object_type}/name/{name:path}",
                    self.list_by_name,
                    methods=["GET"],
                ),
                Route("/crm/v3/lists/{list_id}/memberships/add", self.add_members, methods=["PUT"]),
                Route("/crm/v3/lists/{list_id}/memberships/remove", self.remove_members, methods=["PUT"]),
            ]
        )
        super().__init__(self._rate_limiter(app), seed=seed)

    def _rate_limiter(self, app: Any) -> Any:
        """HubSpot's ten-secondly rolling limit, per token: 429 once ``rate_limit`` requests arrived in the
        last ``rate_interval`` seconds."""

        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            if self.rate_limit is not None:
                now = time.monotonic()
                while self._window and now - self._window[0] >= self.rate_interval:
                    self._window.popleft()
                if len(self._window) >= self.rate_limit:
                    self.rate_limited += 1
                    wait = self.rate_interval - (now - self._window[0])
                    headers = [
                        (b"content-type", b"application/json"),
                        (b"x-hubspot-ratelimit-max", str(self.rate_limit).encode()),
                        (b"x-hubspot-ratelimit-remaining", b"0"),
                        (
                            b"x-hubspot-ratelimit-interval-milliseconds",
                            str(int(self.rate_interval * 1000)).encode(),
                        ),
                    ]
                    if self.rate_retry_after:
                        headers.append((b"retry-after", f"{wait:.3f}".encode()))
                    body = json.dumps(
                        {
                            "status": "error",
                            "message": "You have reached your ten_secondly_rolling limit.",
                            "errorType": "RATE_LIMIT",
                            "correlationId": "fake",
                            "policyName": "TEN_SECONDLY_ROLLING",
                        }
                    ).encode()
                    headers.append((b"content-length", str(len(body)).encode()))
                    await send({"type": "http.response.start", "status": 429, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
                self._window.append(now)
            await app(scope, receive, send)

        return wrapped

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.token}"

    def unauthorized_body(self) -> dict[str, Any]:
        return {
            "status": "error",
            "message": "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
            "category": "INVALID_AUTHENTICATION",
            "correlationId": "fake",
        }

    # --- helpers for tests ----------------------------------------------------------------------------

    def contact(self, email: str) -> dict[str, Any] | None:
        cid = self.by_email.get(email.lower())
        return self.contacts[cid]["properties"] if cid else None

    def list_emails(self, name: str) -> set[str]:
        lst = next((x for x in self.lists.values() if x["name"] == name), None)
        if lst is None:
            return set()
        return {self.contacts[c]["properties"]["email"] for c in lst["members"]}

    def lists_of(self, email: str) -> set[str]:
        cid = self.by_email.get(email.lower())
        return {x["name"] for x in self.lists.values() if cid in x["members"]}

    # --- endpoints ----------------------------------------------------------------------------------

    async def upsert(self, request: Request) -> Response:
        body = await request.json()
        inputs = body.get("inputs") or []
        if len(inputs) > 100:
            return _err(400, f"Batch input size {len(inputs)} exceeds the limit of 100")
        if any(item.get("idProperty") != "email" for item in inputs):
            return _err(400, "idProperty must be email for this fake")
        ids = [str(item.get("id", "")).lower() for item in inputs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            return _err(
                400,
                f"Duplicate IDs found in batch input: [{', '.join(dupes)}]. IDs must be unique",
                context={"ids": dupes},
            )
        results, errors = [], []
        for item, email in zip(inputs, ids, strict=True):
            props = dict(item.get("properties") or {})
            unknown = [p for p in props if p not in self.properties]
            if unknown:
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": f"Property values were not valid: unknown properties {unknown}",
                        "context": {"ids": [email]},
                        "_check": {
                            "isValid": False,
                            "error": "PROPERTY_DOESNT_EXIST",
                            "name": unknown[0],
                            "message": f'Property "{unknown[0]}" does not exist',
                        },
                    }
                )
                continue
            if not valid_email(email):
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": f"Email address {email} is invalid",
                        "context": {"ids": [email]},
                        "_check": {
                            "isValid": False,
                            "message": f"Email address {email} is invalid",
                            "error": "INVALID_EMAIL",
                            "name": "email",
                        },
                    }
                )
                continue
            results.append((email, props))
        if errors and self.batch_errors == "reject":
            checks = [e["_check"] for e in errors]
            return _err(400, f"Property values were not valid: {json.dumps(checks)}")
        out = []
        for email, props in results:
            cid = self.by_email.get(email)
            new = cid is None
            if new:
                cid = str(next(self._ids))
                self.by_email[email] = cid
                self.contacts[cid] = {"id": cid, "properties": {"email": email}}
            self.contacts[cid]["properties"].update(props)
            out.append({"id": cid, "properties": dict(self.contacts[cid]["properties"]), "new": new})
        payload: dict[str, Any] = {"status": "COMPLETE", "results": out}
        if errors:
            payload["errors"] = [{k: v for k, v in e.items() if k != "_check"} for e in errors]
            payload["numErrors"] = len(errors)
        return JSONResponse(payload, status_code=207 if errors else 200)

    async def batch_read(self, request: Request) -> Response:
        body = await request.json()
        inputs = body.get("inputs") or []
        if len(inputs) > 100:
            return _err(400, f"Batch input size {len(inputs)} exceeds the limit of 100")
        results = []
        for item in inputs:
            cid = self.by_email.get(str(item.get("id", "")).lower())
            if cid:
                results.append(
                    {"id": cid, "properties": {"email": self.contacts[cid]["properties"]["email"]}}
                )
        return JSONResponse({"status": "COMPLETE", "results": results})

    async def get_properties(self, request: Request) -> Response:
        return JSONResponse({"results": list(self.properties.values())})

    async def create_property(self, request: Request) -> Response:
        body = await request.json()
        name = body.get("name")
        if (
            not name
            or not body.get("label")
            or not body.get("type")
            or not body.get("fieldType")
            or not body.get("groupName")
        ):
            return _err(400, "name, label, type, fieldType and groupName are required")
        if name in self.properties:
            return _err(409, f"Property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS")
        self.properties[name] = dict(body)
        return JSONResponse(self.properties[name], status_code=201)

    async def create_list(self, request: Request) -> Response:
        body = await request.json()
        if body.get("objectTypeId") != "0-1" or body.get("processingType") not in (
            "MANUAL",
            "SNAPSHOT",
            "DYNAMIC",
        ):
            return _err(400, "objectTypeId 0-1 and a processingType are required")
        if any(x["name"] == body.get("name") for x in self.lists.values()):
            return _err(400, f"A list named {body.get('name')!r} already exists", "VALIDATION_ERROR")
        lid = str(next(self._ids))
        self.lists[lid] = {
            "listId": lid,
            "name": body["name"],
            "processingType": body["processingType"],
            "members": set(),
        }
        return JSONResponse({"list": self._list_json(self.lists[lid])})

    @staticmethod
    def _list_json(x: dict[str, Any]) -> dict[str, Any]:
        return {
            "listId": x["listId"],
            "name": x["name"],
            "processingType": x["processingType"],
            "objectTypeId": "0-1",
            "size": len(x["members"]),
        }

    async def list_by_name(self, request: Request) -> Response:
        name = unquote(request.path_params["name"])
        lst = next((x for x in self.lists.values() if x["name"] == name), None)
        if lst is None:
            return _err(404, f"List with name {name} not found", "OBJECT_NOT_FOUND")
        return JSONResponse({"list": self._list_json(lst)})

    async def _membership(self, request: Request, add: bool) -> Response:
        lst = self.lists.get(request.path_params["list_id"])
        if lst is None:
            return _err(404, "List not found", "OBJECT_NOT_FOUND")
        if lst["processingType"] != "MANUAL":
            return _err(400, "Memberships of a DYNAMIC list cannot be edited")
        ids = await request.json()
        if not isinstance(ids, list) or len(ids) > 100_000:
            return _err(400, "a JSON array of at most 100,000 record ids is required")
        done, missing = [], []
        for rid in map(str, ids):
            if rid not in self.contacts:
                missing.append(rid)
            elif add:
                lst["members"].add(rid)
                done.append(rid)
            elif rid in lst["members"]:
                lst["members"].discard(rid)
                done.append(rid)
        key = "recordIdsAdded" if add else "recordIdsRemoved"
        return JSONResponse({key: done, "recordIdsMissing": missing})

    async def add_members(self, request: Request) -> Response:
        return await self._membership(request, True)

    async def remove_members(self, request: Request) -> Response:
        return await self._membership(request, False)
