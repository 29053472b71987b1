"""The studio's web app (Starlette): one page, a JSON API for it, and server-sent events that tell the page
to re-render after a save.

Safety: every response carries a strict Content-Security-Policy (scripts only with the page's nonce,
nothing loaded from anywhere, only this server connected to), and :class:`Guard` refuses requests for
another host name (a web page cannot reach the studio through a DNS name of its own) and, when the studio
listens beyond loopback, requests without the token. The only write is a test message into the outbox.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from activation.errors import ActivationError, NotFoundError
from campaigns.render import RenderError
from studio.page import page
from studio.state import Studio, problem
from studio.watch import Watcher

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_HEADER = "x-studio-token"
#: Nothing from anywhere: the page's own nonce'd script, inline styles (emails are styled inline; a style
#: can load nothing while images, fonts and frames are refused), fetch and events from this server only.
_CSP = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; frame-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
#: How often the event stream looks for a new version, and sends a keep-alive comment.
EVENT_POLL_S = 0.05
KEEPALIVE_S = 15.0


class Guard:
    """Refuses a request whose Host is not one of ``hosts`` (when given) or that lacks ``token`` (when
    set; as the ``X-Studio-Token`` header or the ``token`` query parameter), and adds the security
    headers to every response."""

    def __init__(self, app: ASGIApp, *, token: str | None, hosts: set[str] | None) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
        if self.hosts is not None and host not in self.hosts:
            return JSONResponse({"error": f"unknown host {host!r}"}, status_code=403)
        if self.token is not None:
            given = headers.get(TOKEN_HEADER) or QueryParams(scope.get("query_string", b"")).get("token", "")
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                names = {k.lower() for k, _ in raw}
                if b"content-security-policy" not in names:
                    raw.append((b"content-security-policy", _CSP.format(nonce="none").encode()))
                raw += [(k.encode(), v.encode()) for k, v in _HEADERS.items()]
                message["headers"] = raw
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _error(exc: ActivationError) -> JSONResponse:
    status = 404 if isinstance(exc, NotFoundError) else 422
    body: dict[str, Any] = {"error": exc.message, "fix": exc.fix}
    if isinstance(exc, RenderError):
        body["problem"] = problem(exc)
    return JSONResponse(body, status_code=status)


def _routes(studio: Studio) -> list[Route]:
    def index(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(page(nonce), headers={"content-security-policy": _CSP.format(nonce=nonce)})

    def catalog(request: Request) -> Response:
        return JSONResponse(studio.catalog())

    def preview(request: Request) -> Response:
        q = request.query_params
        try:
            return JSONResponse(studio.preview(q["scheme"], q["segment"], int(q.get("member", "0"))))
        except (KeyError, ValueError):
            return JSONResponse({"error": "scheme, segment and member (a number) are needed"}, 400)
        except ActivationError as exc:
            return _error(exc)

    async def send_test(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"error": "send JSON"}, status_code=415)  # no cross-site form post
        try:
            body = await request.json()
            args = (str(body["scheme"]), str(body["segment"]), int(body.get("member", 0)))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "scheme, segment and member (a number) are needed"}, 400)
        try:
            path = await asyncio.to_thread(studio.send_test, *args)
        except ActivationError as exc:
            return _error(exc)
        return JSONResponse({"path": str(path)})

    async def events(request: Request) -> Response:
        return StreamingResponse(_event_stream(studio), media_type="text/event-stream")

    return [
        Route("/", index),
        Route("/api/catalog", catalog),
        Route("/api/preview", preview),
        Route("/api/send-test", send_test, methods=["POST"]),
        Route("/api/events", events),
    ]


async def _event_stream(studio: Studio) -> AsyncIterator[str]:
    """``change`` with the new version each time the studio refreshed; a comment now and then keeps the
    connection open. The stream ends when the client leaves (Starlette cancels it) or the server stops."""
    seen, quiet = -1, 0.0
    while not studio.closing.is_set():
        if studio.version != seen:
            seen = studio.version
            yield f"event: change\ndata: {json.dumps({'version': seen})}\n\n"
            quiet = 0.0
        elif quiet >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(EVENT_POLL_S)
        quiet += EVENT_POLL_S


def create_app(
    studio: Studio, *, token: str | None = None, hosts: set[str] | None = None, watch: bool = True
) -> ASGIApp:
    """The studio's ASGI app; with ``watch`` a :class:`Watcher` refreshes it when a template or the policy
    changes, for as long as the app runs."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher = Watcher([studio.settings.templates_dir], studio.saved)
        if watch:
            watcher.start()
        try:
            yield
        finally:
            watcher.stop()

    return Guard(Starlette(routes=_routes(studio), lifespan=lifespan), token=token, hosts=hosts)
