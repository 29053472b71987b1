"""Personal coupon codes: unguessable (keyed HMAC), short, human-typable, unique.

A code is ``PREFIX-XXXXX-XXXXX``: the offer's prefix (``WB`` win-back, ``SP`` second purchase …) and 10
characters from an alphabet without look-alikes (no 0/O, 1/I), i.e. 50 bits of
``HMAC-SHA256(settings.coupon_key(), "<campaign_key>|<customer_id>")``. Without the key nobody can derive a
valid code from a customer id. The code depends on the campaign key (not its version), so a member keeps their
code when a campaign gets a new version. Collisions (within a campaign or with any stored code) are resolved
deterministically: the member with the smaller customer id keeps the code, the other is re-derived with a
counter (``"<campaign_key>|<customer_id>|<n>"``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from activation.errors import ConfigError

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # 32 symbols, no 0/O/1/I
CODE_CHARS = 10  # 50 bits
MAX_ATTEMPTS = 64
_ALPHA = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)


def _digests(key: bytes, campaign_key: str, customer_ids: Sequence[str], attempt: int) -> np.ndarray:
    """First 8 bytes of HMAC-SHA256(key, "<campaign_key>|<customer_id>[|<attempt>]") per customer, as uint64.

    The HMAC of the common prefix is computed once and copied per member (the same bytes as one
    ``hmac.digest`` per member, about twice as fast).
    """
    base = hmac.new(key, f"{campaign_key}|".encode(), hashlib.sha256)
    suffix = f"|{attempt}".encode() if attempt else b""
    out = bytearray(8 * len(customer_ids))
    for n, cid in enumerate(customer_ids):
        h = base.copy()
        h.update(str(cid).encode() + suffix)
        out[8 * n : 8 * n + 8] = h.digest()[:8]
    return np.frombuffer(bytes(out), dtype=">u8").astype(np.uint64)


def _encode(values: np.ndarray, prefix: str) -> list[str]:
    n = len(values)
    if n == 0:
        return []
    chars = np.empty((n, CODE_CHARS), dtype=np.uint8)
    for i in range(CODE_CHARS):
        shift = np.uint64(64 - 5 * (i + 1))
        chars[:, i] = _ALPHA[((values >> shift) & np.uint64(31)).astype(np.intp)]
    raw = chars.view(f"S{CODE_CHARS}").ravel()
    half = CODE_CHARS // 2
    head = f"{prefix}-" if prefix else ""
    return [f"{head}{s[:half]}-{s[half:]}" for s in (b.decode() for b in raw)]


def coupon_codes(
    key: bytes, campaign_key: str, customer_ids: Sequence[str], prefix: str, attempt: int = 0
) -> list[str]:
    """The code of each customer (no uniqueness handling; see :func:`unique_codes`)."""
    return _encode(_digests(key, campaign_key, customer_ids, attempt), prefix)


def unique_codes(
    key: bytes,
    campaign_key: str,
    customer_ids: Sequence[str],
    prefix: str,
    taken: Callable[[list[str]], set[str]] | None = None,
    reserved: set[str] | None = None,
) -> list[str]:
    """One unique code per customer id, aligned with ``customer_ids`` (which must be distinct).

    ``taken(codes)`` returns which of ``codes`` are already used elsewhere; ``reserved`` is a set of codes
    already handed out (e.g. earlier in the same plan run). On a clash the smaller customer id keeps its
    code; the other is re-derived with a counter until free.

    Raises:
        ConfigError: no free code after many attempts (the code space is exhausted; never in practice).
    """
    codes = coupon_codes(key, campaign_key, customer_ids, prefix)
    reserved = reserved or set()
    if taken is None and len(set(codes)) == len(codes) and reserved.isdisjoint(codes):
        return codes
    outer = taken

    def taken_or_reserved(batch: list[str]) -> set[str]:
        return (set(batch) & reserved) | (outer(batch) if outer is not None else set())

    taken = taken_or_reserved
    order = sorted(range(len(codes)), key=lambda i: str(customer_ids[i]))
    used: set[str] = set()
    pending: list[int] = []
    for i in order:
        if codes[i] in used:
            pending.append(i)
        else:
            used.add(codes[i])
    if taken is not None and used:
        clash = taken(sorted(used))
        if clash:
            waiting = set(pending)
            pending.extend(i for i in order if i not in waiting and codes[i] in clash)
    attempt = 0
    while pending:
        attempt += 1
        if attempt > MAX_ATTEMPTS:
            raise ConfigError(
                f"could not find a free coupon code for {len(pending)} members of {campaign_key}",
                fix="use a different coupon prefix for this offer",
            )
        pending.sort(key=lambda i: str(customer_ids[i]))
        fresh = coupon_codes(key, campaign_key, [customer_ids[i] for i in pending], prefix, attempt)
        outside = taken(fresh) if taken is not None else set()
        still: list[int] = []
        for i, code in zip(pending, fresh, strict=True):
            if code in used or code in outside:
                still.append(i)
            else:
                used.add(code)
                codes[i] = code
        pending = still
    return codes


def assign_coupons(
    key: bytes,
    campaign_key: str,
    customer_ids: Iterable[str],
    prefix: str,
    taken: Callable[[list[str]], set[str]] | None = None,
) -> dict[str, str]:
    """``{customer_id: code}``, unique (see :func:`unique_codes`)."""
    ids = sorted(set(map(str, customer_ids)))
    return dict(zip(ids, unique_codes(key, campaign_key, ids, prefix, taken), strict=True))


_NORMALIZE = re.compile(r"[\s\-_]")


def normalize_coupon(code: str) -> str:
    """Canonical form for matching what a customer typed: upper case, no spaces or dashes, O→0 never needed."""
    return _NORMALIZE.sub("", code.strip().upper())


def coupon_fingerprint(code: str) -> str:
    """A short, non-reversible id of a code for logs (never log codes themselves)."""
    return hashlib.sha256(normalize_coupon(code).encode()).hexdigest()[:12]
