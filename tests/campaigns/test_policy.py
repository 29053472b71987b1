"""The offer policy file: shipped policies, defaults, and errors that name the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from activation.errors import ConfigError
from activation.settings import REPO_ROOT, Settings
from campaigns.offers import NoOffer, SecondPurchaseDiscount, VipEarlyAccess, WinbackCoupon
from campaigns.policy import check_segments, load_policy, parse_policy, scheme_segments


@pytest.fixture
def shipped() -> Settings:
    return Settings(templates_dir=REPO_ROOT / "templates")


def _policy(tmp_path: Path, text: str) -> Settings:
    d = tmp_path / "templates"
    d.mkdir(exist_ok=True)
    (d / "policy.yaml").write_text(text)
    return Settings(templates_dir=d)


@pytest.mark.parametrize("scheme", ["rfm11", "seed5", "vip_fm", "value_tier"])
def test_shipped_policy_covers_every_segment_of_the_main_schemes(shipped, scheme):
    policy = load_policy(shipped)
    assert check_segments(policy, shipped) == []
    segments = scheme_segments(scheme, shipped)
    assert segments and set(policy.listed_segments(scheme)) == set(segments)


def test_shipped_rfm11_offers(shipped):
    policy = load_policy(shipped)
    assert isinstance(policy.for_segment("rfm11", "Champions").offer, VipEarlyAccess)
    for seg in ("At Risk", "Can't Lose Them"):
        r = policy.for_segment("rfm11", seg)
        assert isinstance(r.offer, WinbackCoupon) and r.template == "winback"
    new = policy.for_segment("rfm11", "New Customers")
    assert isinstance(new.offer, SecondPurchaseDiscount) and new.template == "second_purchase"
    assert policy.for_segment("rfm11", "Lost").suppress is True
    assert policy.for_segment("rfm11", "Can't Lose Them").holdout_share == 0.2
    assert policy.for_segment("rfm11", "Champions").holdout_share == 0.1  # from default


def test_unlisted_segments_get_the_default(shipped):
    policy = load_policy(shipped)
    r = policy.for_segment("quartile9", "Anything")
    assert not r.listed and r.template == "newsletter" and isinstance(r.offer, NoOffer)
    assert r.holdout_share == 0.1 and not r.suppress and r.destinations == ("outbox", "mailchimp", "hubspot")


def test_a_minimal_policy_falls_back_to_built_in_defaults(tmp_path):
    s = _policy(tmp_path, "version: 1\n")
    r = load_policy(s).for_segment("rfm11", "Champions")
    assert r.template == "newsletter" and r.holdout_share == 0.1 and r.targeting is None


def test_policy_hash_changes_with_the_policy(tmp_path):
    a = load_policy(
        _policy(tmp_path, "schemes:\n  rfm11:\n    At Risk: {offer: {type: winback_coupon, percent: 20}}\n")
    )
    b = load_policy(
        _policy(tmp_path, "schemes:\n  rfm11:\n    At Risk: {offer: {type: winback_coupon, percent: 25}}\n")
    )
    ha, hb = (p.for_segment("rfm11", "At Risk").policy_hash for p in (a, b))
    assert ha != hb and len(ha) == 64


CASES = {
    "malformed yaml": ("default:\n  template: x\n  subject: [unclosed\n", 4, "not valid YAML"),
    "bad indentation": ("default:\n  template: x\n   subject: y\n", 3, "not valid YAML"),
    "unknown offer type": (
        "schemes:\n  rfm11:\n    Champions:\n      template: x\n      offer:\n        type: free_money\n",
        6,
        "unknown offer type 'free_money'",
    ),
    "missing offer type": ("schemes:\n  rfm11:\n    Champions:\n      offer: {percent: 5}\n", 4, "offer"),
    "percent over 100": (
        "schemes:\n  rfm11:\n    At Risk:\n      offer:\n        type: winback_coupon\n"
        "        percent: 150\n",
        6,
        "percent",
    ),
    "percent zero": (
        "schemes:\n  rfm11:\n    At Risk:\n      offer: {type: winback_coupon, percent: 0}\n",
        4,
        "percent",
    ),
    "holdout over 1": ("default:\n  holdout_share: 1.5\n", 2, "holdout_share"),
    "holdout negative": ("schemes:\n  seed5:\n    New:\n      holdout_share: -0.2\n", 4, "holdout_share"),
    "unknown key": ("schemes:\n  rfm11:\n    Champions:\n      templte: x\n", 4, "templte"),
    "duplicate segment": (
        "schemes:\n  rfm11:\n    Lost: {suppress: true}\n    Lost: {suppress: false}\n",
        4,
        "duplicate key 'Lost'",
    ),
    "unknown destination": ("default:\n  destinations: [outbox, fax]\n", 2, "destinations"),
    "not a mapping": ("- just\n- a list\n", 1, "must be a mapping"),
    "wrong version": ("version: 7\n", 1, "version"),
    "empty targeting": ("schemes:\n  rfm11:\n    At Risk:\n      targeting: {}\n", 4, "targeting"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_policy_error_names_file_line_and_fix(tmp_path, case):
    text, line, needle = CASES[case]
    s = _policy(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_policy(s)
    message = str(err.value)
    assert f"policy.yaml:{line}: " in message, message
    assert needle in message
    assert err.value.fix
    assert "(fix: " in message, f"the line names no fix: {message}"  # templates check prints the line as is


def test_unknown_segments_and_schemes_are_reported_with_lines(tmp_path):
    s = _policy(
        tmp_path,
        "schemes:\n  rfm11:\n    Champion: {template: x}\n    At Risk:\n"
        "      targeting: {entered_from: [Loyal]}\n  nosuch:\n    A: {template: x}\n",
    )
    policy, issues = parse_policy(s.policy_file)
    assert policy is not None and issues == []
    found = {(i.line, i.message) for i in check_segments(policy, s)}
    assert (3, "scheme 'rfm11' has no segment 'Champion'") in found
    assert (5, "entered_from: scheme 'rfm11' has no segment 'Loyal'") in found
    assert (6, "unknown scheme 'nosuch'") in found


def test_missing_policy_file(tmp_path):
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(Settings(templates_dir=tmp_path / "nowhere"))
