"""What both API destinations share: retries with exponential backoff, jitter and ``Retry-After``, a
bounded pool of in-flight calls, and keeping secrets out of messages.

Retries happen inside the worker thread that made the call, so a call waiting to be retried keeps its
connection slot: the number of requests in flight never exceeds ``max_connections``.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from connectors.base import MemberChange, MemberResult
from connectors.errors import DestinationError, RateLimitedError, RetriableError, RetriesExhaustedError

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter, capped by ``max_delay``. A server's ``Retry-After`` is waited in full
    (asking earlier only earns another 429), up to ``max_retry_after``: a longer wait stops the call."""

    max_retries: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after > 0:
            return retry_after + random.uniform(0, self.base_delay)
        backoff = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(backoff / 2, backoff)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def call_with_retry(
    fn: Callable[[], T], policy: RetryPolicy, *, what: str, sleep: Callable[[float], None] = time.sleep
) -> T:
    """``fn()``, retried on :class:`RetriableError` until ``policy.max_retries`` is exhausted.

    Raises:
        RetriesExhaustedError: the last retriable error, once retries are used up.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except RetriableError as exc:
            if exc.retry_after is not None and exc.retry_after > policy.max_retry_after:
                raise RetriesExhaustedError(
                    f"{what}: the API asks to wait {exc.retry_after:.0f} s before the next call ({exc.message})",
                    fix="the API's rate limit is used up for now; rerun the sync later (it resumes where it stopped)",
                    status=exc.status,
                ) from exc
            if attempt >= policy.max_retries:
                raise RetriesExhaustedError(
                    f"{what}: still failing after {attempt + 1} attempts ({exc.message})",
                    fix="the API is overloaded or down; rerun the sync later (it resumes where it stopped)",
                    status=exc.status,
                ) from exc
            sleep(policy.delay(attempt, exc.retry_after))
            attempt += 1


def create_once(
    create: Callable[[], T],
    find: Callable[[], T | None],
    already_exists: Callable[[DestinationError], bool],
    policy: RetryPolicy,
    *,
    what: str,
) -> T:
    """A create whose outcome may be unknown, retried like :func:`call_with_retry` without making a second
    copy: after a 5xx or a lost connection the write may have been applied and only its answer lost, so
    ``find()`` (a lookup by title or name; ``None`` when absent) runs before the create is sent again. A 429
    was refused before it was applied: nothing to look up. An error that ``already_exists`` means was found.

    Raises:
        RetriesExhaustedError: as :func:`call_with_retry`.
        DestinationError: the "already exists" error itself when ``find()`` does not return the object.
    """
    unsure = False

    def attempt() -> T:
        nonlocal unsure
        if unsure:
            found = find()
            if found is not None:
                return found
        try:
            return create()
        except RateLimitedError:
            raise
        except RetriableError:
            unsure = True
            raise
        except DestinationError as exc:
            if not already_exists(exc):
                raise
            found = find()
            if found is None:
                raise
            return found

    return call_with_retry(attempt, policy, what=what)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class CallPool:
    """Runs calls on at most ``max_workers`` threads; completion callbacks run in the caller's thread.

    Callbacks may submit follow-up calls (an upsert's tag call); those go to the front of the queue, so a
    batch is finished (and committed) before the next one starts. On the first error no new call starts;
    calls already in flight finish and their callbacks still run (their writes were confirmed), then the
    error is raised.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="api")
        self._queue: deque[tuple[Callable[[], Any], Callable[[Any], None]]] = deque()
        self._running: dict[Future[Any], Callable[[Any], None]] = {}
        self._in_callback = False
        self._error: BaseException | None = None

    def submit(self, fn: Callable[[], T], on_done: Callable[[T], None]) -> None:
        if self._error is not None:
            return
        if self._in_callback:
            self._queue.appendleft((fn, on_done))
        else:
            self._queue.append((fn, on_done))

    def _fill(self) -> None:
        while self._error is None and self._queue and len(self._running) < self.max_workers:
            fn, cb = self._queue.popleft()
            self._running[self._pool.submit(fn)] = cb

    def run(self) -> None:
        """Wait for every call (and the calls their callbacks submit); raise the first error."""
        self._fill()
        while self._running:
            done, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
            for fut in done:
                cb = self._running.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    if self._error is None:
                        self._error = exc
                        self._queue.clear()
                    continue
                self._in_callback = True
                try:
                    cb(fut.result())
                except BaseException as cb_exc:
                    if self._error is None:
                        self._error = cb_exc
                        self._queue.clear()
                finally:
                    self._in_callback = False
            self._fill()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class MemberTracker:
    """Per-member bookkeeping: a member's change is confirmed when all its calls are."""

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}
        self.errors: dict[int, str] = {}
        self.reasons: dict[int, str] = {}
        self.ready: list[MemberResult] = []

    def expect(self, change: MemberChange, n: int) -> None:
        self.pending[id(change)] = n

    def done(
        self, change: MemberChange, error: str | None = None, reason: str | None = None, ops: int = 1
    ) -> None:
        key = id(change)
        if error and key not in self.errors:
            self.errors[key] = error
            if reason:
                self.reasons[key] = reason
        self.pending[key] -= ops
        if self.pending[key] <= 0:
            del self.pending[key]
            err = self.errors.pop(key, None)
            self.ready.append(
                MemberResult(
                    change, "skipped" if err else "ok", change.kind, err, self.reasons.pop(key, None)
                )
            )

    def drain(self) -> list[MemberResult]:
        out, self.ready = self.ready, []
        return out
