"""The offer policy: ``templates/policy.yaml`` read, validated and resolved per scheme and segment.

Format (see ``docs/templates.md``)::

    version: 1
    default:                      # used for every field a segment leaves out, and for unlisted segments
      template: newsletter
      subject: "News from {{ brand.name }}"
      offer: {type: none}
      holdout_share: 0.1          # or a power target: holdout: {mde: 0.02, power: 0.8}
      destinations: [outbox, mailchimp, hubspot]
    schemes:
      rfm11:
        Champions:
          template: vip_early_access
          subject: "{{ first_name }}, you shop first"
          offer: {type: vip_early_access, early_access_days: 3}
        Lost:
          suppress: true
        At Risk:
          template: winback
          offer: {type: winback_coupon, percent: 20, expiry_days: 30}
          targeting: {entered_since_previous: true}

Every error names the file, the line and the fix. Segment names are checked against the scheme definition
(``segments.schemes.load_scheme``) by :func:`check_segments`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from activation.errors import ConfigError
from activation.settings import Settings
from activation.yamlfile import (
    YamlIssue,
    YamlSyntaxError,
    error_message,
    error_path,
    read_yaml,
    validation_issues,
)
from campaigns.offers import OFFER_TYPES, NoOffer, Offer
from segments.schemes import list_schemes, load_scheme

DESTINATIONS = ("outbox", "mailchimp", "hubspot")
DEFAULT_HOLDOUT_SHARE = 0.1
DEFAULT_TEMPLATE = "newsletter"
DEFAULT_SUBJECT = "News from {{ brand.name }}"


class Targeting(BaseModel):
    """Migration targeting against the previous snapshot of the same scheme.

    ``entered_from``: only members whose previous segment is one of these. ``left``: the same filter read from
    the other side ("left Champions" for the At Risk entry = was Champions, is now At Risk).
    ``entered_since_previous``: only members who were not in this segment in the previous snapshot (new
    customers included). With no previous snapshot, every member counts as having entered, and
    ``entered_from`` / ``left`` match nobody.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    entered_from: list[str] | None = None
    left: list[str] | None = None
    entered_since_previous: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> Targeting:
        if not (self.entered_from or self.left or self.entered_since_previous):
            raise ValueError("targeting needs entered_from, left or entered_since_previous: true")
        return self

    @property
    def from_segments(self) -> list[str] | None:
        if self.entered_from is None and self.left is None:
            return None
        return sorted(set(self.entered_from or []) | set(self.left or []))


#: the largest holdout share a power target may ask for: at 0.5 the difference of two means has its smallest
#: variance for a given segment, so a larger holdout costs reach and buys no power
MAX_TARGET_SHARE = 0.5


class HoldoutTarget(BaseModel):
    """A holdout sized by power: the smallest lift the segment's holdout must detect (``docs/roi.md``).

    ``mde`` is an absolute conversion lift (0.02 = 2 percentage points); ``revenue_mde`` a lift of
    revenue per member in the orders' currency. ``base_rate`` is the conversion rate assumed when no
    earlier outcome of the segment is recorded; ``revenue_sd`` the standard deviation of revenue per
    member assumed then (without it, a revenue target falls back to the default share until outcomes
    exist). ``max_share`` caps the share (at most :data:`MAX_TARGET_SHARE`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mde: float | None = Field(default=None, gt=0, lt=1)
    revenue_mde: float | None = Field(default=None, gt=0)
    power: float = Field(default=0.8, gt=0.5, lt=1)
    base_rate: float = Field(default=0.05, gt=0, lt=1)
    revenue_sd: float | None = Field(default=None, gt=0)
    max_share: float = Field(default=0.3, gt=0, le=MAX_TARGET_SHARE)

    @model_validator(mode="after")
    def _one_target(self) -> HoldoutTarget:
        if (self.mde is None) == (self.revenue_mde is None):
            raise ValueError("holdout needs exactly one of mde (conversion, absolute) or revenue_mde")
        return self


class SegmentPolicy(BaseModel):
    """One segment's entry; every field left out comes from ``default``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_\-/]*$")
    subject: str | None = Field(default=None, min_length=1, max_length=300)
    offer: Offer | None = None
    holdout_share: float | None = Field(default=None, ge=0, lt=1)  # 1 would treat nobody
    holdout: HoldoutTarget | None = None  # a share sized by power instead of a fixed one
    suppress: bool | None = None
    destinations: list[Literal["outbox", "mailchimp", "hubspot"]] | None = None
    targeting: Targeting | None = None

    @model_validator(mode="after")
    def _one_holdout(self) -> SegmentPolicy:
        if self.holdout_share is not None and self.holdout is not None:
            raise ValueError(
                "give either holdout_share (a fixed share) or holdout (a power target), not both"
            )
        return self


class GlobalControl(BaseModel):
    """A stable share of all customers that no campaign treats (``activation.split``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(ge=0, le=0.5)


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    global_control: GlobalControl | None = None
    default: SegmentPolicy = SegmentPolicy()
    schemes: dict[str, dict[str, SegmentPolicy]] = Field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedPolicy:
    """The complete policy of one segment of one scheme (defaults applied)."""

    scheme: str
    segment: str
    template: str
    subject: str
    offer: Any  # one of campaigns.offers
    holdout_share: float
    suppress: bool
    destinations: tuple[str, ...]
    targeting: Targeting | None
    listed: bool  # False: the segment fell back to ``default``
    line: int | None = None
    holdout_target: HoldoutTarget | None = None  # when set, plan sizes the share and holdout_share is unused
    global_control_share: float = 0.0  # the policy's global control group, excluded from every audience

    def as_dict(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "subject": self.subject,
            "offer": self.offer.model_dump(mode="json"),
            "holdout_share": self.holdout_share,
            **({"holdout": self.holdout_target.model_dump(mode="json")} if self.holdout_target else {}),
            "suppress": self.suppress,
            "destinations": list(self.destinations),
            "targeting": self.targeting.model_dump(mode="json") if self.targeting else None,
            # only when on: a policy without a global control keeps the hashes it had
            **({"global_control_share": self.global_control_share} if self.global_control_share else {}),
        }

    @property
    def policy_hash(self) -> str:
        """Hash of everything in the policy that shapes this segment's campaign."""
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


PolicyIssue = YamlIssue  # one problem of the policy file, ``file:line: message (fix: ...)``


@dataclass
class Policy:
    """A validated policy file with the line of every key, for messages."""

    path: Path
    model: PolicyFile
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def schemes(self) -> list[str]:
        return list(self.model.schemes)

    def listed_segments(self, scheme: str) -> list[str]:
        return list(self.model.schemes.get(scheme, {}))

    def line_of(self, *path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def for_segment(self, scheme: str, segment: str) -> ResolvedPolicy:
        """The segment's entry with defaults applied; an unlisted segment gets ``default`` as it is."""
        d = self.model.default
        entry = self.model.schemes.get(scheme, {}).get(segment)
        listed = entry is not None
        e = entry or SegmentPolicy()

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(e, name)
            if value is None:
                value = getattr(d, name)
            return fallback if value is None else value

        # a segment's own holdout (fixed or target) replaces the default's, whichever kind that is
        holdout_from = e if (e.holdout_share is not None or e.holdout is not None) else d
        return ResolvedPolicy(
            scheme=scheme,
            segment=segment,
            template=pick("template", DEFAULT_TEMPLATE),
            subject=pick("subject", DEFAULT_SUBJECT),
            offer=pick("offer", NoOffer(type="none")),
            holdout_share=float(
                DEFAULT_HOLDOUT_SHARE if holdout_from.holdout_share is None else holdout_from.holdout_share
            ),
            holdout_target=holdout_from.holdout,
            suppress=bool(pick("suppress", False)),
            destinations=tuple(pick("destinations", list(DESTINATIONS))),
            targeting=e.targeting,  # never inherited: targeting is about one segment
            listed=listed,
            line=self.line_of("schemes", scheme, segment) if listed else self.line_of("default"),
            global_control_share=self.model.global_control.share if self.model.global_control else 0.0,
        )

    def templates_used(self) -> dict[str, list[tuple[str, ...]]]:
        """Template name -> the policy key paths that use it (default included)."""
        used: dict[str, list[tuple[str, ...]]] = {}
        used.setdefault(self.model.default.template or DEFAULT_TEMPLATE, []).append(("default", "template"))
        for scheme, segs in self.model.schemes.items():
            for seg, entry in segs.items():
                if entry.template:
                    used.setdefault(entry.template, []).append(("schemes", scheme, seg, "template"))
        return used


# --------------------------------------------------------------------------------------------- loading

_FIXES = {
    "union_tag_invalid": f"use one of the offer types: {', '.join(OFFER_TYPES)}",
    "union_tag_not_found": f"add `type:` to the offer, one of: {', '.join(OFFER_TYPES)}",
    "extra_forbidden": "remove the key or correct its spelling (see docs/templates.md for the allowed keys)",
    "missing": "add the key",
    "literal_error": "use one of the listed values",
    "string_pattern_mismatch": "template names use letters, digits, _ - and /; coupon prefixes 1-4 capital letters",
}


def _fix_for(err: ErrorDetails) -> str | None:
    loc = [str(p) for p in err.get("loc", ())]
    last = loc[-1] if loc else ""
    if last == "percent":
        return "use a percent between 0 and 100 (exclusive of 0), e.g. percent: 20"
    if "holdout" in loc:
        return (
            "use holdout: {mde: 0.02, power: 0.8} (conversion lift, absolute) or {revenue_mde: 5, power: 0.8}; "
            "power between 0.5 and 1, max_share at most 0.5 (docs/roi.md)"
        )
    if last == "holdout_share":
        return (
            "use a share from 0 up to (not including) 1, e.g. holdout_share: 0.1 for 10 %; a share of 1 "
            "holds every member out and treats nobody (to send nothing, use suppress: true)"
        )
    if last == "destinations" or (len(loc) > 1 and loc[-2] == "destinations"):
        return f"destinations are any of: {', '.join(DESTINATIONS)}"
    if "targeting" in loc:
        return (
            "use entered_since_previous: true, entered_from: [segments] or left: [segments] "
            "(see docs/templates.md), or remove targeting"
        )
    return _FIXES.get(err.get("type", ""))


def _message(err: ErrorDetails) -> str:
    """``key.path: problem`` (offer types left out of the path; an unknown offer type said so)."""
    if err["type"] == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        return f"{error_path(err, skip=_offer_tag)}: unknown offer type {tag!r}"
    return error_message(err, skip=_offer_tag)


def _offer_tag(part: str) -> bool:
    return part in OFFER_TYPES


def parse_policy(path: Path) -> tuple[Policy | None, list[PolicyIssue]]:
    """Read and validate a policy file; returns the policy (None when invalid) and every issue found."""
    file = str(path)
    if not path.exists():
        return None, [
            PolicyIssue(
                file,
                None,
                "policy file not found",
                "create templates/policy.yaml (see docs/templates.md) or set ACTIVATION_TEMPLATES_DIR",
            )
        ]
    try:
        doc = read_yaml(path, what="offer policy")
    except YamlSyntaxError as exc:
        return None, [exc.issue]
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        return None, [
            PolicyIssue(
                file,
                1,
                "the policy must be a mapping with `default:` and `schemes:`",
                "see docs/templates.md for the format",
            )
        ]
    issues = list(doc.duplicates)
    lines = doc.lines
    try:
        model = PolicyFile.model_validate(data)
    except ValidationError as exc:
        return None, issues + validation_issues(doc, exc, fix_for=_fix_for, message=_message)
    policy = Policy(path=path, model=model, lines=lines)
    return (None if issues else policy), issues


def load_policy(settings: Settings) -> Policy:
    """The validated policy of ``settings.policy_file``.

    Raises:
        ConfigError: the file is missing, malformed or invalid; the message lists every ``file:line: problem``.
    """
    policy, issues = parse_policy(settings.policy_file)
    if issues or policy is None:
        raise ConfigError(
            "invalid offer policy:\n" + "\n".join(f"  {i}" for i in issues),
            fix=issues[0].fix
            if issues and issues[0].fix
            else "correct the policy file (see docs/templates.md)",
        )
    return policy


# --------------------------------------------------------------------------------------------- segments


def scheme_segments(scheme: str, settings: Settings) -> list[str] | None:
    """The scheme's segment names, from its definition (``segments/schemes/*.yaml`` or the user's
    ``schemes_dir``); None when there is no such scheme.

    Raises:
        ConfigError: the scheme's file is invalid (``file:line`` and the fix).
    """
    if scheme not in list_schemes(settings):
        return None
    return list(load_scheme(scheme, settings).segment_names)


def segment_order(settings: Settings, scheme: str, present: Iterable[str]) -> list[str]:
    """``present`` segments in the scheme's order (unknown ones last, alphabetically; all of them
    alphabetically when the scheme is no longer defined or its file is invalid)."""
    present = list(present)
    try:
        names = scheme_segments(scheme, settings) or []
    except ConfigError:
        names = []
    known = [s for s in names if s in present]
    return known + sorted({s for s in present if s not in names})


def check_segments(
    policy: Policy, settings: Settings, schemes: Iterable[str] | None = None
) -> list[PolicyIssue]:
    """Segment names in the policy (entries and targeting) that the scheme does not define."""
    issues: list[PolicyIssue] = []
    file = str(policy.path)
    for scheme in schemes if schemes is not None else policy.schemes():
        entries = policy.model.schemes.get(scheme, {})
        if not entries:
            continue
        known = scheme_segments(scheme, settings)
        if known is None:
            issues.append(
                PolicyIssue(
                    file,
                    policy.line_of("schemes", scheme),
                    f"unknown scheme {scheme!r}",
                    "use a scheme defined under segments/schemes or ACTIVATION_SCHEMES_DIR",
                )
            )
            continue
        for seg, entry in entries.items():
            if seg not in known:
                issues.append(
                    PolicyIssue(
                        file,
                        policy.line_of("schemes", scheme, seg),
                        f"scheme {scheme!r} has no segment {seg!r}",
                        f"use one of: {', '.join(known)}",
                    )
                )
            if entry.targeting:
                for key in ("entered_from", "left"):
                    for other in getattr(entry.targeting, key) or []:
                        if other not in known:
                            issues.append(
                                PolicyIssue(
                                    file,
                                    policy.line_of("schemes", scheme, seg, "targeting", key),
                                    f"{key}: scheme {scheme!r} has no segment {other!r}",
                                    f"use one of: {', '.join(known)}",
                                )
                            )
    return issues
