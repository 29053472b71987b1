"""A real HTTP server on 127.0.0.1 (uvicorn in a thread) wrapping a Starlette app with what every API
fake needs: authentication, a limit on requests in flight (429 beyond), injectable latency and faults,
and a log of every request for assertions (``write_calls``)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

FAULT_KINDS = ("429", "500", "503", "empty500", "drop")
# The same faults *after* the request was applied: the server did the work and the response was lost
# (a 503 from a proxy, an empty 500, a dropped connection). A client that retries a create blindly
# makes a duplicate; one that looks up what it created first does not.
APPLIED_FAULT_KINDS = ("applied-503", "applied-empty500", "applied-drop")


@dataclass
class Faults:
    """What can go wrong. ``script`` holds faults for the next calls, in order (deterministic tests);
    ``fail_rate`` picks a random fault from ``kinds`` for that share of calls."""

    latency: float = 0.0
    fail_rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: str = "0.05"
    slow_rate: float = 0.0
    slow_seconds: float = 0.3
    script: list[str] = field(default_factory=list)
    hang_after_writes: int | None = None  # every write after N writes blocks (a process killed mid-sync)
    hang_paths: str | None = None  # regex: only writes to matching paths count and hang (None: all writes)
    fatal_after_writes: int | None = None  # every call after N writes gets 401 (credentials revoked)
    only_paths: str | None = None  # faults only for paths containing this


@dataclass
class Call:
    method: str
    path: str
    query: str
    status: int
    fault: str | None
    body: Any = None
    started: float = 0.0
    ended: float = 0.0

    @property
    def write(self) -> bool:
        return self.method != "GET"


class FakeApiServer:
    """Serve ``app`` on a random local port. Subclasses define ``authorized(headers)`` and the app."""

    max_in_flight = 10

    def __init__(self, app: ASGIApp, *, seed: int = 0) -> None:
        self.app = app
        self.faults = Faults()
        self.log: list[Call] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.rejected_concurrency = 0
        self._writes = 0
        self._hang_writes = 0  # writes counted for ``hang_after_writes`` (those matching ``hang_paths``)
        self._rng = random.Random(seed)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            log_level="critical",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
            backlog=2048,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("fake API server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.faults.hang_after_writes = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- assertions -----------------------------------------------------------------------------------

    @property
    def write_calls(self) -> int:
        return sum(1 for c in self.log if c.write)

    @property
    def calls(self) -> int:
        return len(self.log)

    def reset_log(self) -> None:
        self.log.clear()
        self.peak_in_flight = 0

    def api_window(self) -> float:
        """Seconds from the first request's arrival to the last response (0 without requests)."""
        if not self.log:
            return 0.0
        return max(c.ended for c in self.log) - min(c.started for c in self.log)

    # --- the ASGI wrapper -------------------------------------------------------------------------

    def authorized(self, headers: dict[str, str]) -> bool:  # pragma: no cover - overridden
        return True

    def unauthorized_body(self) -> dict[str, Any]:  # pragma: no cover - overridden
        return {"status": 401}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path.startswith("/_fake/"):
            await self._admin(method, path, receive, send)
            return
        query = scope.get("query_string", b"").decode()
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        is_write = method != "GET"
        started = time.perf_counter()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        status_box = {"status": 0}
        body_box: dict[str, Any] = {}
        fault: str | None = None
        try:
            if self.in_flight > self.max_in_flight:
                self.rejected_concurrency += 1
                fault = "concurrency"
                await self._json(
                    send,
                    429,
                    {
                        "title": "Too Many Requests",
                        "status": 429,
                        "detail": "too many concurrent connections",
                    },
                    {"retry-after": self.faults.retry_after},
                    status_box,
                )
                return
            f = self.faults
            if f.latency:
                await asyncio.sleep(f.latency)
            if f.slow_rate and self._rng.random() < f.slow_rate:
                await asyncio.sleep(f.slow_seconds)
            hangable = is_write and (f.hang_paths is None or re.fullmatch(f.hang_paths, path) is not None)
            if hangable and f.hang_after_writes is not None and self._hang_writes >= f.hang_after_writes:
                fault = "hang"
                while f.hang_after_writes is not None and self._hang_writes >= f.hang_after_writes:
                    await asyncio.sleep(0.05)
                await self._json(send, 503, {"status": 503}, {}, status_box)
                return
            if (
                hangable
            ):  # counted here, with no await since the check: concurrent calls cannot both slip through
                self._hang_writes += 1
            if f.fatal_after_writes is not None and self._writes >= f.fatal_after_writes:
                fault = "revoked"
                await self._json(send, 401, self.unauthorized_body(), {}, status_box)
                return
            if not self.authorized(headers):
                fault = "auth"
                await self._json(send, 401, self.unauthorized_body(), {}, status_box)
                return
            fault = self._pick_fault(path)
            if fault and not fault.startswith("applied-"):
                await self._send_fault(fault, send, status_box)
                return
            raw = await _read_body(receive)
            try:
                body_box["body"] = json.loads(raw) if raw else None
            except ValueError:
                body_box["body"] = None
            if is_write:
                self._writes += 1

            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": raw, "more_body": False}

            async def capture(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status_box["status"] = message["status"]
                await send(message)

            async def swallow(message: dict[str, Any]) -> None:
                return None

            if fault:  # an "applied-" fault: do the work, lose the answer
                await self.app(scope, replay, swallow)
                await self._send_fault(fault.removeprefix("applied-"), send, status_box)
                return
            await self.app(scope, replay, capture)
        finally:
            self.in_flight -= 1
            self.log.append(
                Call(
                    method,
                    path,
                    query,
                    status_box["status"],
                    fault,
                    body_box.get("body"),
                    started,
                    time.perf_counter(),
                )
            )

    async def _admin(self, method: str, path: str, receive: Any, send: Any) -> None:
        """Out-of-band control for a server running in another process (benchmarks): not logged."""
        box = {"status": 0}
        if path == "/_fake/stats":
            await self._json(
                send,
                200,
                {
                    "calls": self.calls,
                    "writes": self.write_calls,
                    "window": self.api_window(),
                    "peak_in_flight": self.peak_in_flight,
                    "rejected": self.rejected_concurrency,
                },
                {},
                box,
            )
        elif path == "/_fake/reset" and method == "POST":
            self.reset_log()
            await self._json(send, 200, {}, {}, box)
        elif path == "/_fake/faults" and method == "POST":
            for k, v in json.loads(await _read_body(receive) or b"{}").items():
                setattr(self.faults, k, v)
            await self._json(send, 200, {}, {}, box)
        else:
            await self._json(send, 404, {}, {}, box)

    def _pick_fault(self, path: str) -> str | None:
        f = self.faults
        if f.only_paths and f.only_paths not in path:
            return None
        if f.script:
            return f.script.pop(0) or None
        if f.fail_rate and self._rng.random() < f.fail_rate:
            return self._rng.choice(f.kinds)
        return None

    async def _send_fault(self, fault: str, send: Any, box: dict[str, int]) -> None:
        if fault == "429":
            await self._json(
                send,
                429,
                {"title": "Too Many Requests", "status": 429},
                {"retry-after": self.faults.retry_after},
                box,
            )
        elif fault in ("500", "503"):
            await self._json(
                send, int(fault), {"title": "Internal Server Error", "status": int(fault)}, {}, box
            )
        elif fault == "empty500":
            box["status"] = 500
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
        elif fault == "drop":
            # promise a body, send part of it, then break the connection
            box["status"] = -1
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"par', "more_body": True})
            raise ConnectionAbortedError("fault injected: connection dropped")
        else:
            raise ValueError(f"unknown fault {fault!r}")

    @staticmethod
    async def _json(send: Any, status: int, body: Any, headers: dict[str, str], box: dict[str, int]) -> None:
        box["status"] = status
        data = json.dumps(body).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        hdrs += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": data})


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)
