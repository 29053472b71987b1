"""Coupon codes: the codes already handed out stay valid (fixed inputs -> the codes the project has always
derived), and they are the standard library's HMAC-SHA256."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest

from campaigns.coupons import ALPHABET, coupon_codes

# Codes derived before the derivation moved to the standard library's hmac: a stored code must keep matching.
KNOWN = [
    (b"secret-key", "rfm11/2025-12-31/At Risk", ["c00001", "c00002", "42"], "WB", 0,
     ["WB-CYRHQ-87EMP", "WB-GQMVB-P6MH9", "WB-ZPKTU-Q8FEE"]),
    (b"k" * 100, "rfm11/2025-12-31/Lost", ["c00001", "Zoë"], "", 3, ["KLC8D-3BWLX", "JLPMB-FJKB9"]),
    (b"", "seed5/2024-03-31/New", ["x"], "SP", 1, ["SP-NXQQS-X2QBV"]),
]  # fmt: skip


@pytest.mark.parametrize(("key", "campaign_key", "ids", "prefix", "attempt", "codes"), KNOWN)
def test_codes_for_fixed_inputs_are_the_ones_already_handed_out(
    key, campaign_key, ids, prefix, attempt, codes
):
    assert coupon_codes(key, campaign_key, ids, prefix, attempt) == codes


def _reference(key: bytes, campaign_key: str, customer_id: str, prefix: str, attempt: int) -> str:
    """One code from one ``hmac.digest``: 50 bits, 5 bits a symbol, most significant first."""
    msg = f"{campaign_key}|{customer_id}" + (f"|{attempt}" if attempt else "")
    value = int.from_bytes(hmac.digest(key, msg.encode(), hashlib.sha256)[:8], "big")
    body = "".join(ALPHABET[(value >> (64 - 5 * (i + 1))) & 31] for i in range(10))
    return f"{prefix}-{body[:5]}-{body[5:]}" if prefix else f"{body[:5]}-{body[5:]}"


def test_codes_are_hmac_sha256_of_campaign_and_customer():
    rng = np.random.default_rng(3)
    for _ in range(20):
        key = rng.bytes(int(rng.integers(0, 130)))  # short, block-sized and longer-than-block keys
        ids = [f"c{int(i)}" for i in rng.integers(0, 10**6, 5)]
        attempt = int(rng.integers(0, 3))
        got = coupon_codes(key, "rfm11/2025-12-31/At Risk", ids, "WB", attempt)
        assert got == [_reference(key, "rfm11/2025-12-31/At Risk", c, "WB", attempt) for c in ids]
