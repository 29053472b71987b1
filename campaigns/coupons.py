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
    suffix = f"|{attempt}" if attempt else ""
    prefix = f"{campaign_key}|".encode()
    digest = hmac.digest
    buf = b"".join(digest(key, prefix + str(cid).encode() + suffix.encode(), "sha256")[:8] for cid in customer_ids)
    return np.frombuffer(buf, dtype=">u8").astype(np.uint64)


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


def coupon_codes(key: bytes, campaign_key: str, customer_ids: Sequence[str], prefix: str,
                 attempt: int = 0) -> list[str]:
    """The code of each customer (no uniqueness handling; see :func:`assign_coupons`)."""
    return _encode(_digests(key, campaign_key, customer_ids, attempt), prefix)


def assign_coupons(key: bytes, campaign_key: str, customer_ids: Iterable[str], prefix: str,
                   taken: Callable[[list[str]], set[str]] | None = None) -> dict[str, str]:
    """A unique code per customer id; ``taken(codes)`` returns which of ``codes`` are already used elsewhere.

    Raises:
        ConfigError: no free code after many attempts (the code space is exhausted; never in practice).
    """
    ids = sorted(set(map(str, customer_ids)))
    codes = coupon_codes(key, campaign_key, ids, prefix)
    result: dict[str, str] = {}
    used: set[str] = set()
    pending: list[str] = []
    for cid, code in zip(ids, codes, strict=True):
        if code in used:
            pending.append(cid)
        else:
            used.add(code)
            result[cid] = code
    if taken is not None and result:
        clash = taken(list(result.values()))
        if clash:
            for cid in [c for c in ids if c in result and result[c] in clash]:
                used.discard(result.pop(cid))
                pending.append(cid)
            used |= clash
    attempt = 0
    while pending:
        attempt += 1
        if attempt > MAX_ATTEMPTS:
            raise ConfigError(f"could not find a free coupon code for {len(pending)} members of {campaign_key}",
                              fix="use a different coupon prefix for this offer")
        pending.sort()
        fresh = coupon_codes(key, campaign_key, pending, prefix, attempt)
        outside = taken(fresh) if taken is not None else set()
        still: list[str] = []
        for cid, code in zip(pending, fresh, strict=True):
            if code in used or code in outside:
                still.append(cid)
            else:
                used.add(code)
                result[cid] = code
        pending = still
    return result


_NORMALIZE = re.compile(r"[\s\-_]")


def normalize_coupon(code: str) -> str:
    """Canonical form for matching what a customer typed: upper case, no spaces or dashes, O→0 never needed."""
    return _NORMALIZE.sub("", code.strip().upper())


def coupon_fingerprint(code: str) -> str:
    """A short, non-reversible id of a code for logs (never log codes themselves)."""
    return hashlib.sha256(normalize_coupon(code).encode()).hexdigest()[:12]
