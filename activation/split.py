"""Who is held out: the stable hash splits, in Python and in the warehouse (one home for both).

* **A campaign's holdout.** ``md5("<campaign_key>|<customer_id>")``'s first 32 bits / 2**32 < the holdout
  share puts a member in the holdout, else in the treatment group. ``campaign_key`` =
  ``<scheme>/<as_of>/<segment>`` excludes the campaign's version, so a member keeps their group when the
  campaign gets a new version. ``campaigns.plan`` computes it in the warehouse (:func:`holdout_bucket_sql`);
  the demo data generator computes it in Python (:func:`member_group`) to plant a known effect for exactly
  the members the plan will treat.
* **The global control group.** ``md5("<salt>|<customer_id>")``'s first 32 bits / 2**32 < the global
  control share: a customer in it is never treated by any campaign, in any quarter (the salt is its own,
  so membership is independent of every campaign's holdout and stays the same across quarters).

Both give the same value on every dialect (``activation.dialect.hash_bucket``) and in Python.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Any, Literal

from sqlalchemy import String, literal
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from activation import dialect

Group = Literal["treatment", "holdout"]

#: the salt of the global control split (changing it reshuffles the whole control group: don't)
GLOBAL_CONTROL_SALT = "global-control"
#: the exclusion reason (``campaigns.excluded``) of a member held out as the global control group
GLOBAL_CONTROL = "global_control"


def campaign_key(scheme: str, as_of: date, segment: str) -> str:
    """``<scheme>/<as_of>/<segment>``: the campaign's identity across versions (and its split's key)."""
    return f"{scheme}/{as_of.isoformat()}/{segment}"


def holdout_threshold(share: float) -> int:
    """The bucket below which a member is held out, for a share in [0, 1]."""
    return int(round(share * 2**32))


def hash_bucket(key: str, customer_id: str) -> int:
    """First 32 bits of ``md5("<key>|<customer_id>")``: the Python twin of :func:`bucket_sql`."""
    return int(hashlib.md5(f"{key}|{customer_id}".encode()).hexdigest()[:8], 16)


def member_group(key: str, customer_id: str, share: float) -> Group:
    """The campaign group of a member (the plan's warehouse split, in Python)."""
    return "holdout" if hash_bucket(key, customer_id) < holdout_threshold(share) else "treatment"


def in_global_control(customer_id: str, share: float, salt: str = GLOBAL_CONTROL_SALT) -> bool:
    """Whether a customer belongs to the global control group of ``share`` (never treated)."""
    return share > 0 and hash_bucket(salt, customer_id) < holdout_threshold(share)


def bucket_sql(key: Any, customer_id: Any, bind: Engine | Connection) -> ColumnElement[int]:
    """The warehouse twin of :func:`hash_bucket`; ``key`` is a text expression or a Python string."""
    prefix = literal(key, String) if isinstance(key, str) else key
    return dialect.hash_bucket(prefix.concat("|").concat(customer_id), bind)


def holdout_bucket_sql(
    scheme: str, as_of: date, segment: Any, customer_id: Any, bind: Engine | Connection
) -> ColumnElement[int]:
    """The campaign split's bucket of each row, ``segment`` and ``customer_id`` being column expressions."""
    prefix = literal(f"{scheme}/{as_of.isoformat()}/", String).concat(segment)
    return bucket_sql(prefix, customer_id, bind)


def global_control_sql(
    customer_id: Any, share: float, bind: Engine | Connection, salt: str = GLOBAL_CONTROL_SALT
) -> ColumnElement[bool]:
    """True for the rows whose customer is in the global control group (the twin of
    :func:`in_global_control`)."""
    if share <= 0:
        return literal(False)
    return bucket_sql(salt, customer_id, bind) < holdout_threshold(share)
