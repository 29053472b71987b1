"""A HubSpot CRM API subset on 127.0.0.1, written from HubSpot's API reference (not from the connector).

Every behaviour names the page it comes from (``developers.hubspot.com/docs/...``, shortened to ``docs:``);
tests/fakes/README.md lists what is implemented and what is not.

* Paths: the legacy ``/crm/v3/...`` style and the date-versioned ``/crm/objects/2026-03/...`` style
  (docs: api-reference/2026-03/overview: "The 2026-03 APIs use a date-based versioning scheme that replaces the
  previous numeric version paths (e.g. /crm/v3/)"). A version the portal does not serve is a 404.
* The v1 contact-lists API answers 404 (docs: api-reference/latest/crm/lists/guide: "The legacy v1 lists API has
  been sunset as of April 30th, 2026. Calls made to the v1 endpoints will no longer function").
* Errors: ``{"status": "error", "message", "correlationId", "category", "subCategory"?, "context"?, "errors"?}``
  (docs: faq/api-error-responses; changelog/upcoming-changes-to-error-responses).
* Rate limits (docs: developer-tooling/platform/usage-guidelines): a ten-secondly rolling limit per app (190 for
  Professional) and a daily limit per account (625,000 for Professional); every response carries
  ``X-HubSpot-RateLimit-Max / -Remaining / -Interval-Milliseconds`` and ``X-HubSpot-RateLimit-Daily /
  -Daily-Remaining``; a 429 body names the limit hit in ``policyName`` (``TEN_SECONDLY_ROLLING`` or ``DAILY``).
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
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
READ_POSTS = re.compile(r"/contacts/(search|batch/read)$|/statuses/batch/(unsubscribe-all/)?read$")
DATE_VERSION = re.compile(r"^\d{4}-(0[1-9]|1[0-2])(-beta)?$")
BATCH_LIMIT = 100  # docs: api-reference/2026-03/crm/objects/contacts/batch/upsert-contacts ("up to 100")
SEARCH_PAGE_LIMIT = 200  # docs: guides/api/crm/search ("The maximum value is 200")
SEARCH_TOTAL_LIMIT = 10_000  # docs: guides/api/crm/search ("limited to 10,000 total results")
# docs: api-reference/2026-03/crm/properties/create-property (PropertyCreate.type / fieldType allowed values,
# as the generated SDK's hubspot/crm/properties/models/property_create.py lists them)
PROPERTY_TYPES = ("string", "number", "date", "datetime", "enumeration", "bool")
FIELD_TYPES = (
    "textarea",
    "text",
    "date",
    "file",
    "number",
    "select",
    "radio",
    "checkbox",
    "booleancheckbox",
    "calculation_equation",
)


def _prop(name: str, type_: str = "string", field: str = "text", read_only: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "label": name.replace("_", " ").title(),
        "type": type_,
        "fieldType": field,
        "groupName": "contactinformation",
        "hubspotDefined": True,
        "archived": False,
        "modificationMetadata": {"readOnlyValue": read_only, "archivable": not read_only},
    }


# default contact properties (docs: knowledge base "HubSpot's default contact properties"): hs_email_optout is
# "Unsubscribed from all email" and hs_marketable_status the marketing contact status; both are read-only to
# the CRM objects API (consent changes go through the communication preferences API)
BUILTIN_PROPERTIES = {
    p["name"]: p
    for p in (
        _prop("email"),
        _prop("firstname"),
        _prop("lastname"),
        _prop("phone"),
        _prop("company"),
        _prop("hs_object_id", "number", "number", read_only=True),
        _prop("createdate", "datetime", "date", read_only=True),
        _prop("lastmodifieddate", "datetime", "date", read_only=True),
        _prop("hs_email_optout", "bool", "booleancheckbox", read_only=True),
        _prop("hs_marketable_status", "enumeration", "select", read_only=True),
    )
}
DEFAULT_RETURNED = ("createdate", "lastmodifieddate", "hs_object_id")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(
    status: int,
    message: str,
    category: str = "VALIDATION_ERROR",
    sub_category: str | None = None,
    **extra: Any,
) -> JSONResponse:
    """docs: faq/api-error-responses (status, message, correlationId, category; subCategory and context
    where the API has them)."""
    body: dict[str, Any] = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }
    if sub_category:
        body["subCategory"] = sub_category
    return JSONResponse(body, status_code=status)


def valid_email(email: str) -> bool:
    """HubSpot's check: RFC-like syntax (no quotes, no empty or doubled dots) and a known TLD."""
    if not EMAIL_RE.match(email):
        return False
    local, _, domain = email.rpartition("@")
    if local.startswith(".") or local.endswith(".") or ".." in local or ".." in domain:
        return False
    return domain.rsplit(".", 1)[-1] in KNOWN_TLDS


Handler = Callable[[Request], Awaitable[Response]]


class FakeHubSpot(FakeApiServer):
    """The portal's state (contacts, properties, lists) behind HubSpot's documented endpoints.

    Modes (all off by default): ``batch_errors = "partial"`` (207 instead of a whole-batch 400 for
    validation errors), ``internal_errors`` (emails whose next N upserts fail with a 207 ``INTERNAL_ERROR``),
    ``membership_lag`` (a new contact is ``recordIdsMissing`` to list memberships for its first N membership
    calls: the lists index lags the contacts store), ``opt_out_on_write`` (emails that unsubscribe the moment
    they are next written: a late opt-out between read-back and write), ``garbled`` (paths whose next 200
    body is cut short after the work is done). Pre-existing state: :meth:`add_contact`, :meth:`add_list`,
    :meth:`add_property`, :meth:`opt_out`.
    """

    def __init__(self, token: str = "pat-na1-00000000-0000-0000-0000-000000000000", *, seed: int = 0) -> None:
        self.token = token
        self.versions: set[str] = {"v3", "2026-03"}  # what this portal serves (v3 = the legacy paths)
        self.batch_errors = "reject"  # or "partial": 207 with per-input errors
        # docs: usage-guidelines: Professional, 190 per 10 s per app, 625,000 per day per account
        self.rate_limit: int | None = 190
        self.rate_interval = 10.0
        self.rate_retry_after = False  # HubSpot documents no Retry-After on its 429s; tests may turn it on
        self.daily_limit = 625_000
        self.other_callers = 0  # requests other processes of the same app hold in every window
        self.daily_used = 0
        self.rate_limited = 0
        self.daily_limited = 0
        self._window: deque[float] = deque()
        self.internal_errors: dict[str, int] = {}
        self.membership_lag = 0
        self.missing_scopes: set[str] = set()  # scopes the token lacks: 403 MISSING_SCOPES
        self.opt_out_on_write: set[str] = set()
        self.contacts: dict[str, dict[str, Any]] = {}  # id -> {"id", "properties", "createdAt", ...}
        self.by_email: dict[str, str] = {}
        self._lag: dict[str, int] = {}
        self.properties: dict[str, dict[str, Any]] = {k: dict(v) for k, v in BUILTIN_PROPERTIES.items()}
        self.lists: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(5001)
        routes: list[Route] = []
        for style in ("v3", "dated"):
            # each endpoint's required scope (docs: the "Scopes" box of each api-reference page)
            routes += [
                self._route(
                    style,
                    "objects",
                    "/contacts/batch/upsert",
                    self.upsert,
                    "POST",
                    "crm.objects.contacts.write",
                ),
                self._route(
                    style,
                    "objects",
                    "/contacts/batch/read",
                    self.batch_read,
                    "POST",
                    "crm.objects.contacts.read",
                ),
                self._route(
                    style, "objects", "/contacts/search", self.search, "POST", "crm.objects.contacts.read"
                ),
                self._route(
                    style, "properties", "/contacts", self.get_properties, "GET", "crm.schemas.contacts.read"
                ),
                self._route(
                    style,
                    "properties",
                    "/contacts",
                    self.create_property,
                    "POST",
                    "crm.schemas.contacts.write",
                ),
                self._route(style, "lists", "", self.create_list, "POST", "crm.lists.write"),
                self._route(
                    style,
                    "lists",
                    "/object-type-id/{object_type}/name/{name:path}",
                    self.list_by_name,
                    "GET",
                    "crm.lists.read",
                ),
                self._route(style, "lists", "/{list_id}", self.get_list, "GET", "crm.lists.read"),
                self._route(
                    style, "lists", "/{list_id}/memberships/add", self.add_members, "PUT", "crm.lists.write"
                ),
                self._route(
                    style,
                    "lists",
                    "/{list_id}/memberships/remove",
                    self.remove_members,
                    "PUT",
                    "crm.lists.write",
                ),
            ]
        routes += [
            # docs: api-reference/legacy/communication-preferences/status/batch/get-unsubscribed-batch
            Route(
                "/communication-preferences/{version}/statuses/batch/unsubscribe-all/read",
                self._versioned(self.unsubscribe_all_read, comm=True),
                methods=["POST"],
            ),
            Route("/contacts/v1/{rest:path}", self.v1_sunset, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
        self.garbled: list[str] = []
        self._garble_next = False
        super().__init__(self._rate_limiter(Starlette(routes=routes)), seed=seed)

    # --- routing -------------------------------------------------------------------------------------

    def _route(self, style: str, api: str, rest: str, handler: Handler, method: str, scope: str) -> Route:
        # /crm/v3/objects/contacts/... | /crm/objects/2026-03/contacts/...  (docs: api-reference/2026-03/overview)
        path = f"/crm/v3/{api}{rest}" if style == "v3" else f"/crm/{api}/{{version}}{rest}"
        return Route(path, self._versioned(handler, scope=scope), methods=[method])

    def _versioned(self, handler: Handler, comm: bool = False, scope: str | None = None) -> Handler:
        async def wrapped(request: Request) -> Response:
            if scope in self.missing_scopes:
                # the 403 a private app without the scope gets (docs: faq/api-error-responses, MISSING_SCOPES)
                return _error(
                    403,
                    "This app hasn't been granted all required scopes to make this call. Read more about "
                    "required scopes here: https://developers.hubspot.com/scopes.",
                    "MISSING_SCOPES",
                    errors=[
                        {
                            "message": "One or more of the following scopes are required.",
                            "context": {"requiredGranularScopes": [scope]},
                        }
                    ],
                )
            version = request.path_params.get("version", "v3")
            served = version in self.versions and (version == "v3" or DATE_VERSION.match(version))
            if comm:
                served = version == "v4" or (
                    DATE_VERSION.match(version) is not None and version in self.versions
                )
            if not served:
                return _error(404, f"API version {version} is not available", "OBJECT_NOT_FOUND")
            return await handler(request)

        return wrapped

    async def v1_sunset(self, request: Request) -> Response:
        return _error(
            404,
            "The v1 lists API was sunset on April 30th, 2026; use the v3 (or date-versioned) lists API",
            "OBJECT_NOT_FOUND",
        )

    # --- rate limits ---------------------------------------------------------------------------------

    def _rate_limiter(self, app: Any) -> Any:
        """docs: developer-tooling/platform/usage-guidelines: the ten-secondly rolling limit and the daily
        limit, their headers on every response, and a 429 whose ``policyName`` says which limit was hit."""

        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            now = time.monotonic()
            while self._window and now - self._window[0] >= self.rate_interval:
                self._window.popleft()
            limit = self.rate_limit
            daily_spent = self.daily_used >= self.daily_limit
            used = len(self._window) + self.other_callers
            secondly_spent = limit is not None and used >= limit
            if not daily_spent and not secondly_spent:
                self._window.append(now)
                self.daily_used += 1

            def headers() -> list[tuple[bytes, bytes]]:
                out = [
                    (b"x-hubspot-ratelimit-daily", str(self.daily_limit).encode()),
                    (
                        b"x-hubspot-ratelimit-daily-remaining",
                        str(max(0, self.daily_limit - self.daily_used)).encode(),
                    ),
                ]
                if limit is not None:
                    out += [
                        (b"x-hubspot-ratelimit-max", str(limit).encode()),
                        (
                            b"x-hubspot-ratelimit-remaining",
                            str(max(0, limit - len(self._window) - self.other_callers)).encode(),
                        ),
                        (
                            b"x-hubspot-ratelimit-interval-milliseconds",
                            str(int(self.rate_interval * 1000)).encode(),
                        ),
                    ]
                return out

            if daily_spent or secondly_spent:
                if daily_spent:
                    self.daily_limited += 1
                    message, policy = "You have reached your daily limit.", "DAILY"
                else:
                    self.rate_limited += 1
                    message, policy = (
                        "You have reached your ten_secondly_rolling limit.",
                        "TEN_SECONDLY_ROLLING",
                    )
                body = json.dumps(
                    {
                        "status": "error",
                        "message": message,
                        "errorType": "RATE_LIMIT",
                        "correlationId": str(uuid.uuid4()),
                        "policyName": policy,
                        "category": "RATE_LIMITS",
                    }
                ).encode()
                hdrs = headers() + [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                if secondly_spent and not daily_spent and self.rate_retry_after:
                    wait = self.rate_interval - (now - self._window[0])
                    hdrs.append((b"retry-after", f"{wait:.3f}".encode()))
                await send({"type": "http.response.start", "status": 429, "headers": hdrs})
                await send({"type": "http.response.body", "body": body})
                return

            async def with_headers(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": list(message.get("headers") or []) + headers()}
                    path = scope["path"]
                    if message["status"] == 200 and path in self.garbled:
                        self.garbled.remove(path)
                        self._garble_next = True
                elif message["type"] == "http.response.body" and self._garble_next:
                    # the work is done; the 200 body arrives cut short but complete per Content-Length
                    self._garble_next = False
                    cut = message.get("body", b"")[: max(1, len(message.get("body", b"")) // 2)]
                    message = {**message, "body": cut.ljust(len(message.get("body", b"")))}
                await send(message)

            await app(scope, receive, with_headers)

        return wrapped

    @property
    def write_calls(self) -> int:
        """Requests that can change the portal (HubSpot reads by POST too: search, batch read)."""
        return sum(1 for c in self.log if c.write and not READ_POSTS.search(c.path))

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.token}"

    def unauthorized_body(self) -> dict[str, Any]:
        return {
            "status": "error",
            "message": "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
            "category": "INVALID_AUTHENTICATION",
            "correlationId": str(uuid.uuid4()),
        }

    # --- state set-up and inspection for tests -------------------------------------------------------

    def add_contact(self, email: str, **properties: str) -> str:
        """A contact that exists before the first sync (with its own name, say)."""
        return self._store(email.lower(), {k: str(v) for k, v in properties.items()}, created_by_api=False)[0]

    def add_list(self, name: str, processing_type: str = "MANUAL") -> str:
        lid = str(next(self._ids))
        self.lists[lid] = {"listId": lid, "name": name, "processingType": processing_type, "members": set()}
        return lid

    def add_property(self, name: str, type_: str = "string", archived: bool = False, **kw: Any) -> None:
        self.properties[name] = {
            **_prop(name, type_, "number" if type_ == "number" else "text"),
            "hubspotDefined": False,
            "archived": archived,
            **kw,
        }

    def opt_out(self, email: str) -> None:
        """The person unsubscribes from all email (in HubSpot's preference centre, say)."""
        cid = self.by_email[email.lower()]
        self.contacts[cid]["properties"].update({"hs_email_optout": "true", "hs_marketable_status": "false"})
        self._touch(cid)

    def contact(self, email: str) -> dict[str, Any] | None:
        cid = self.by_email.get(email.lower())
        if not cid:
            return None
        hidden = {"hs_object_id", "createdate", "lastmodifieddate", "hs_email_optout", "hs_marketable_status"}
        return {k: v for k, v in self.contacts[cid]["properties"].items() if k not in hidden}

    def list_emails(self, name: str) -> set[str]:
        lst = self._list_named(name)
        if lst is None:
            return set()
        return {self.contacts[c]["properties"]["email"] for c in lst["members"]}

    def lists_of(self, email: str) -> set[str]:
        cid = self.by_email.get(email.lower())
        return {x["name"] for x in self.lists.values() if cid in x["members"]}

    def lists_named(self, name: str) -> list[dict[str, Any]]:
        return [x for x in self.lists.values() if x["name"].lower() == name.lower()]

    # --- contacts --------------------------------------------------------------------------------------

    def _store(self, email: str, props: dict[str, str], created_by_api: bool = True) -> tuple[str, bool]:
        cid = self.by_email.get(email)
        new = cid is None
        if cid is None:
            cid = str(next(self._ids))
            self.by_email[email] = cid
            now = _now_iso()
            self.contacts[cid] = {
                "id": cid,
                "properties": {
                    "email": email,
                    "hs_object_id": cid,
                    "createdate": now,
                    "hs_email_optout": "false",
                },
                "createdAt": now,
            }
            self.contacts[cid]["properties"]["hs_marketable_status"] = "true"
            if created_by_api and self.membership_lag:
                self._lag[cid] = self.membership_lag
        stored = self.contacts[cid]["properties"]
        for k, v in props.items():
            if (
                v == ""
            ):  # docs: batch/update-contacts: "Properties values can be cleared by passing an empty string"
                stored.pop(k, None)
            else:
                stored[k] = v
        self._touch(cid)
        return cid, new

    def _touch(self, cid: str) -> None:
        now = datetime.now(UTC)
        c = self.contacts[cid]
        c["updatedAt"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        c["updated_ms"] = int(now.timestamp() * 1000)
        c["properties"]["lastmodifieddate"] = c["updatedAt"]

    def _object(self, cid: str, names: list[str] | None) -> dict[str, Any]:
        """docs: SimplePublicObject: id, properties (the requested ones plus the defaults), createdAt,
        updatedAt, archived."""
        c = self.contacts[cid]
        wanted = list(DEFAULT_RETURNED) + list(names or ["email", "firstname", "lastname"])
        props = {k: c["properties"].get(k) for k in wanted}
        return {
            "id": cid,
            "properties": props,
            "createdAt": c["createdAt"],
            "updatedAt": c["updatedAt"],
            "archived": False,
        }

    def _check_value(self, name: str, value: Any) -> tuple[str, str] | None:
        """(error code, message) when HubSpot refuses this property value (docs: properties guide,
        "Property type and fieldType values"; batch endpoints report PROPERTY_DOESNT_EXIST, READ_ONLY_VALUE,
        INVALID_OPTION, INVALID_INTEGER, INVALID_EMAIL)."""
        spec = self.properties.get(name)
        if spec is None or spec.get("archived"):
            return "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'
        if not isinstance(value, str):
            return "INVALID_PROPERTY_VALUE", f"{value!r} is not a string value for {name}"
        if (spec.get("modificationMetadata") or {}).get("readOnlyValue"):
            return "READ_ONLY_VALUE", f'"{name}" is a read only property; its value cannot be set'
        if value == "":
            return None
        if spec["type"] == "number":
            try:
                float(value)
            except ValueError:
                return "INVALID_INTEGER", f"{value} was not a valid number for {name}"
        if spec["type"] == "enumeration" and value not in {o["value"] for o in spec.get("options") or []}:
            return "INVALID_OPTION", f"{value} was not one of the allowed options for {name}"
        if spec["type"] == "bool" and value not in ("true", "false"):
            return "INVALID_OPTION", f"{value} was not a valid boolean for {name}"
        return None

    async def upsert(self, request: Request) -> Response:
        """docs: api-reference/2026-03/crm/objects/contacts/batch/upsert-contacts: ``{"inputs": [{"id",
        "idProperty", "properties"}]}`` → ``{"status", "results": [{"id", "properties", "new", ...}],
        "startedAt", "completedAt"}``, 207 with ``errors`` / ``numErrors`` when some inputs failed."""
        started = _now_iso()
        body = await request.json()
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return _error(400, "inputs: a non-empty list is required")
        if len(inputs) > BATCH_LIMIT:
            return _error(400, f"Batch input size {len(inputs)} exceeds the limit of {BATCH_LIMIT}")
        if any(not isinstance(i, dict) or i.get("idProperty") != "email" for i in inputs):
            return _error(400, "idProperty must be email for this fake")
        if any(not isinstance(i.get("properties"), dict) or not isinstance(i.get("id"), str) for i in inputs):
            return _error(400, "every input needs an id (string) and properties (object)")
        ids = [str(item["id"]).lower() for item in inputs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            return _error(
                400,
                f"Duplicate IDs found in batch input: [{', '.join(dupes)}]. IDs must be unique",
                context={"ids": dupes},
            )
        accepted, errors, checks = [], [], []
        for item, email in zip(inputs, ids, strict=True):
            props = dict(item["properties"])
            problem = next(
                (p for p in (self._check_value(k, v) for k, v in props.items() if k != "email") if p), None
            )
            if problem is None and not valid_email(email):
                problem = ("INVALID_EMAIL", f"Email address {email} is invalid")
            if problem is not None:
                code, text = problem
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "subCategory": code,
                        "message": text,
                        "context": {"ids": [email]},
                    }
                )
                checks.append({"isValid": False, "message": text, "error": code, "name": email})
                continue
            accepted.append((email, props))
        if checks and self.batch_errors == "reject":
            return _error(400, f"Property values were not valid: {json.dumps(checks)}")
        results = []
        for email, props in accepted:
            if self.internal_errors.get(email, 0) > 0:
                self.internal_errors[email] -= 1
                errors.append(
                    {
                        "status": "error",
                        "category": "INTERNAL_ERROR",
                        "message": "An internal error occurred while processing this input",
                        "context": {"ids": [email]},
                    }
                )
                continue
            cid, new = self._store(email, props)
            if email in self.opt_out_on_write:
                self.opt_out_on_write.discard(email)
                self.opt_out(email)
            results.append({**self._object(cid, list(props)), "new": new})
        payload: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _now_iso(),
        }
        if errors:
            payload["errors"] = errors
            payload["numErrors"] = len(errors)
        return JSONResponse(payload, status_code=207 if errors else 200)

    async def batch_read(self, request: Request) -> Response:
        """docs: api-reference/2026-03/crm/objects/contacts/batch/read-contacts: ``{"inputs": [{"id"}],
        "idProperty"?, "properties", "propertiesWithHistory"}``; by record id without ``idProperty``."""
        body = await request.json()
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list):
            return _error(400, "inputs: a list is required")
        if len(inputs) > BATCH_LIMIT:
            return _error(400, f"Batch input size {len(inputs)} exceeds the limit of {BATCH_LIMIT}")
        id_property = body.get("idProperty")
        if id_property not in (None, "email"):
            return _error(400, f"idProperty {id_property} is not a unique property")
        results = []
        for item in inputs:
            key = str(item.get("id", ""))
            cid = self.by_email.get(key.lower()) if id_property == "email" else key
            if cid in self.contacts:
                results.append(self._object(cid, list(body.get("properties") or [])))
        return JSONResponse(
            {"status": "COMPLETE", "results": results, "startedAt": _now_iso(), "completedAt": _now_iso()}
        )

    async def search(self, request: Request) -> Response:
        """docs: guides/api/crm/search: ``filterGroups`` (OR of groups, AND of filters), ``properties``,
        ``limit`` ≤ 200, ``after`` paging (``paging.next.after``), at most 10,000 results per query."""
        body = await request.json()
        limit = int(body.get("limit") or 10)
        after = int(body.get("after") or 0)
        if limit > SEARCH_PAGE_LIMIT:
            return _error(400, f"limit {limit} is above the maximum of {SEARCH_PAGE_LIMIT}")
        if after + limit > SEARCH_TOTAL_LIMIT:
            return _error(400, f"The search API returns at most {SEARCH_TOTAL_LIMIT} results per query")
        groups = body.get("filterGroups") or []
        for g in groups:
            for f in g.get("filters") or []:
                if f.get("propertyName") not in self.properties:
                    return _error(400, f"There was a problem with the request: {f.get('propertyName')}")

        def match(c: dict[str, Any], f: dict[str, Any]) -> bool:
            name, op, value = f["propertyName"], f["operator"], f.get("value")
            have = c["updated_ms"] if name == "lastmodifieddate" else c["properties"].get(name)
            if op == "HAS_PROPERTY":
                return have not in (None, "")
            if have is None:
                return op == "NEQ"
            if name == "lastmodifieddate" or name == "hs_object_id":
                have, value = int(have), int(value)
            return {
                "EQ": lambda: str(have) == str(value) if not isinstance(have, int) else have == value,
                "NEQ": lambda: str(have) != str(value),
                "GT": lambda: have > value,
                "GTE": lambda: have >= value,
                "LT": lambda: have < value,
                "LTE": lambda: have <= value,
            }[op]()

        hits = [
            cid
            for cid, c in sorted(self.contacts.items(), key=lambda kv: int(kv[0]))
            if not groups or any(all(match(c, f) for f in g.get("filters") or []) for g in groups)
        ]
        page = hits[after : after + limit]
        out: dict[str, Any] = {
            "total": len(hits),
            "results": [self._object(cid, list(body.get("properties") or [])) for cid in page],
        }
        if after + limit < len(hits):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return JSONResponse(out)

    async def unsubscribe_all_read(self, request: Request) -> Response:
        """docs: communication-preferences/status/batch/get-unsubscribed-batch: per email, ``wideStatuses``
        with ``status`` ``NOT_SUBSCRIBED`` once the person opted out of all email (``channel=EMAIL``)."""
        if request.query_params.get("channel") != "EMAIL":
            return _error(400, "channel is required (EMAIL)")
        body = await request.json()
        results = []
        for email in body.get("inputs") or []:
            cid = self.by_email.get(str(email).lower())
            out = cid is not None and self.contacts[cid]["properties"].get("hs_email_optout") == "true"
            results.append(
                {
                    "subscriberIdString": email,
                    "wideStatuses": [
                        {
                            "channel": "EMAIL",
                            "status": "NOT_SUBSCRIBED" if out else "NOT_SPECIFIED",
                            "subscriberIdString": email,
                            "wideStatusType": "PORTAL_WIDE",
                            "timestamp": _now_iso(),
                        }
                    ],
                }
            )
        return JSONResponse({"status": "COMPLETE", "results": results})

    # --- properties -------------------------------------------------------------------------------------

    async def get_properties(self, request: Request) -> Response:
        """docs: api-reference/2026-03/crm/properties/get-properties: ``?archived=true`` returns only the
        archived ones; each property has name, label, type, fieldType, groupName, archived."""
        archived = request.query_params.get("archived", "false").lower() == "true"
        return JSONResponse(
            {"results": [p for p in self.properties.values() if bool(p.get("archived")) == archived]}
        )

    async def create_property(self, request: Request) -> Response:
        """docs: properties guide: type and fieldType are required; a name in use (archived included) is
        409 Conflict."""
        body = await request.json()
        name = body.get("name")
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            return _error(400, f"required fields missing: {', '.join(missing)}")
        if body["type"] not in PROPERTY_TYPES or body["fieldType"] not in FIELD_TYPES:
            return _error(400, f"invalid type/fieldType {body['type']}/{body['fieldType']}")
        if name in self.properties:
            return _error(409, f"Property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS")
        self.properties[name] = {**body, "archived": False, "hubspotDefined": False}
        return JSONResponse(self.properties[name], status_code=201)

    # --- lists ------------------------------------------------------------------------------------------

    def _list_named(self, name: str) -> dict[str, Any] | None:
        # list names are unique without regard to case (the duplicate check and the lookup by name)
        return next((x for x in self.lists.values() if x["name"].lower() == name.lower()), None)

    @staticmethod
    def _list_json(x: dict[str, Any]) -> dict[str, Any]:
        return {
            "listId": x["listId"],
            "name": x["name"],
            "processingType": x["processingType"],
            "objectTypeId": "0-1",
            "size": len(x["members"]),
        }

    async def create_list(self, request: Request) -> Response:
        """docs: api-reference/2026-03/crm/lists/create-list: ``{"name", "objectTypeId", "processingType"}``
        (MANUAL, SNAPSHOT or DYNAMIC) → ``{"list": {"listId", ...}}``; a name in use is 400
        ``ILS.DUPLICATE_LIST_NAMES``."""
        body = await request.json()
        if (
            not body.get("name")
            or body.get("objectTypeId") != "0-1"
            or body.get("processingType") not in ("MANUAL", "SNAPSHOT", "DYNAMIC")
        ):
            return _error(
                400, "name, objectTypeId and processingType (MANUAL, SNAPSHOT, DYNAMIC) are required"
            )
        if self._list_named(body["name"]) is not None:
            return _error(
                400,
                f"The following list names already exist: {body['name']}",
                "VALIDATION_ERROR",
                "ILS.DUPLICATE_LIST_NAMES",
                context={"listNames": [body["name"]]},
            )
        lid = self.add_list(body["name"], body["processingType"])
        return JSONResponse({"list": self._list_json(self.lists[lid])})

    async def list_by_name(self, request: Request) -> Response:
        """docs: api-reference/2026-03/crm/lists/get-list ("Fetch List by Name")."""
        name = unquote(request.path_params["name"])
        lst = self._list_named(name)
        if lst is None:
            return _error(404, f"List with name {name} not found", "OBJECT_NOT_FOUND")
        return JSONResponse({"list": self._list_json(lst)})

    async def get_list(self, request: Request) -> Response:
        lst = self.lists.get(request.path_params["list_id"])
        if lst is None:
            return _error(404, "List not found", "OBJECT_NOT_FOUND")
        return JSONResponse({"list": self._list_json(lst)})

    async def _membership(self, request: Request, add: bool) -> Response:
        """docs: api-reference/2026-03/crm/lists/memberships/add-to-list: only for ``processingType`` MANUAL or
        SNAPSHOT; records that do not exist are returned in ``recordIdsMissing``."""
        lst = self.lists.get(request.path_params["list_id"])
        if lst is None:
            return _error(404, "List not found", "OBJECT_NOT_FOUND")
        if lst["processingType"] not in ("MANUAL", "SNAPSHOT"):
            return _error(
                400,
                f"List {lst['listId']} has processingType {lst['processingType']}; memberships can only be "
                "changed on MANUAL or SNAPSHOT lists",
                "VALIDATION_ERROR",  # the documented rule; the exact body of this refusal is not documented
            )
        ids = await request.json()
        if not isinstance(ids, list) or len(ids) > 100_000 or not all(isinstance(i, str) for i in ids):
            return _error(400, "a JSON array of at most 100,000 record ids (strings) is required")
        done, missing = [], []
        for rid in ids:
            if rid not in self.contacts or self._lag.get(rid, 0) > 0:
                if rid in self._lag:
                    self._lag[rid] -= 1
                missing.append(rid)
            elif add:
                if rid not in lst["members"]:
                    done.append(rid)
                lst["members"].add(rid)
            elif rid in lst["members"]:
                lst["members"].discard(rid)
                done.append(rid)
        key = "recordIdsAdded" if add else "recordIdsRemoved"
        return JSONResponse({key: done, "recordIdsMissing": missing})

    async def add_members(self, request: Request) -> Response:
        return await self._membership(request, True)

    async def remove_members(self, request: Request) -> Response:
        return await self._membership(request, False)
