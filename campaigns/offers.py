"""Offers as typed policies: what a segment is offered, the variables its template may use, and what it costs.

Offer types (the ``type`` key in ``templates/policy.yaml``):

* ``vip_early_access`` — no discount; members shop a launch ``early_access_days`` before everyone else.
* ``winback_coupon`` — ``percent`` off one order with a personal coupon, valid ``expiry_days`` after the send.
* ``second_purchase_discount`` — ``percent`` off the second order with a personal coupon, valid ``expiry_days``.
* ``none`` — no offer (a newsletter or a thank-you).

Cost model (used by ROI): ``offer.discount_for(order_amount)`` is the discount actually given on one redeemed
order — ``percent / 100 × order_amount`` for coupon offers (capped at ``max_discount`` when set), ``0`` for
``vip_early_access`` and ``none``. Only orders that redeem the member's coupon inside the attribution window
count, so the offer cost of a segment is the sum of ``discount_for`` over its redeemed orders.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

OFFER_TYPES = ("vip_early_access", "winback_coupon", "second_purchase_discount", "none")


class _Offer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str

    @property
    def has_coupon(self) -> bool:
        """True when each treated member gets a personal coupon code."""
        return False

    @property
    def coupon_prefix(self) -> str | None:
        return None

    def discount_for(self, order_amount: float) -> float:
        """The discount given on one redeemed order of ``order_amount`` (0 for offers without a discount)."""
        return 0.0

    def describe(self) -> str:
        """One line for marketers and the ``*|OFFER|*`` merge field."""
        return "no offer"

    def variables(self, as_of: date) -> dict[str, Any]:
        """The ``offer`` object templates see (per-member values such as the coupon are separate)."""
        return {
            "type": self.type,
            "description": self.describe(),
            "percent": None,
            "expiry_days": None,
            "expires_on": "",
            "early_access_days": None,
            "early_access_until": "",
        }


class VipEarlyAccess(_Offer):
    """Early access to a launch or sale; no discount."""

    type: Literal["vip_early_access"]
    early_access_days: int = Field(default=2, ge=1, le=60)

    def describe(self) -> str:
        return f"early access, {self.early_access_days} days before everyone else"

    def variables(self, as_of: date) -> dict[str, Any]:
        v = super().variables(as_of)
        v.update(
            early_access_days=self.early_access_days,
            early_access_until=_fmt(as_of + timedelta(days=self.early_access_days)),
        )
        return v


class _CouponOffer(_Offer):
    percent: float = Field(gt=0, le=100)
    expiry_days: int = Field(default=30, ge=1, le=365)
    max_discount: float | None = Field(default=None, gt=0)
    prefix: str = Field(default="CP", pattern=r"^[A-Z]{1,4}$")

    @property
    def has_coupon(self) -> bool:
        return True

    @property
    def coupon_prefix(self) -> str | None:
        return self.prefix

    def discount_for(self, order_amount: float) -> float:
        discount = max(order_amount, 0.0) * self.percent / 100.0
        if self.max_discount is not None:
            discount = min(discount, self.max_discount)
        return discount

    def describe(self) -> str:
        return f"{_pct(self.percent)}% off, valid {self.expiry_days} days"

    def expires_on(self, as_of: date) -> date:
        return as_of + timedelta(days=self.expiry_days)

    def variables(self, as_of: date) -> dict[str, Any]:
        v = super().variables(as_of)
        v.update(
            percent=_pct(self.percent), expiry_days=self.expiry_days, expires_on=_fmt(self.expires_on(as_of))
        )
        return v


class WinbackCoupon(_CouponOffer):
    """Percent off one order for customers who drifted away."""

    type: Literal["winback_coupon"]
    prefix: str = Field(default="WB", pattern=r"^[A-Z]{1,4}$")


class SecondPurchaseDiscount(_CouponOffer):
    """Percent off the second order for first-time buyers."""

    type: Literal["second_purchase_discount"]
    prefix: str = Field(default="SP", pattern=r"^[A-Z]{1,4}$")

    def describe(self) -> str:
        return f"{_pct(self.percent)}% off your next order, valid {self.expiry_days} days"


class NoOffer(_Offer):
    """No offer: the template carries the message alone."""

    type: Literal["none"]


Offer = Annotated[
    VipEarlyAccess | WinbackCoupon | SecondPurchaseDiscount | NoOffer, Field(discriminator="type")
]


def _pct(p: float) -> int | float:
    return int(p) if float(p).is_integer() else p


def _fmt(d: date) -> str:
    return d.isoformat()


#: Keys stored next to the offer in ``campaigns.offer`` for readers that do not parse it (destinations use
#: them as the OFFER / EXPIRES merge values); ignored when the offer is parsed.
ANNOTATIONS = ("label", "expires_on")


def parse_offer(
    data: dict[str, Any] | str,
) -> VipEarlyAccess | WinbackCoupon | SecondPurchaseDiscount | NoOffer:
    """An offer from its policy mapping or the JSON stored in ``campaigns.offer``."""
    raw = json.loads(data) if isinstance(data, str) else data
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k not in ANNOTATIONS}
    return _ADAPTER.validate_python(raw)


def offer_record(offer: Any, as_of: date) -> str:
    """The JSON stored in ``campaigns.offer``: the offer's parameters plus ``label`` (its description) and,
    for coupon offers, ``expires_on`` (``YYYY-MM-DD``)."""
    record = offer.model_dump(mode="json")
    record["label"] = offer.describe()
    if offer.has_coupon:
        record["expires_on"] = offer.variables(as_of)["expires_on"]
    return json.dumps(record, sort_keys=True)


_ADAPTER: TypeAdapter[VipEarlyAccess | WinbackCoupon | SecondPurchaseDiscount | NoOffer] = TypeAdapter(Offer)
