"""Sandboxed rendering: both modes, escaping, and every way an untrusted template can misbehave."""

from __future__ import annotations

import time
import tracemalloc
from datetime import date
from pathlib import Path

import pytest

from activation.settings import Settings
from campaigns.offers import parse_offer
from campaigns.render import (
    MERGE_FIELDS,
    MERGE_TAG_RE,
    SYSTEM_MERGE_TAGS,
    RenderError,
    RenderLimits,
    merge_values,
    render_member,
    render_merge_tags,
    template_hash,
)
from tests.campaign_helpers import private_templates

WINBACK = {
    "campaign_id": "rfm11-2025q4-at-risk-v1",
    "scheme": "rfm11",
    "segment": "At Risk",
    "as_of": date(2025, 12, 31),
    "template": "winback",
    "subject": "We miss you, {{ first_name }}: {{ offer.percent }}% off",
    "offer": '{"type": "winback_coupon", "percent": 20, "expiry_days": 30}',
}
MEMBER = {
    "customer_id": "c1",
    "email": "ann@example.com",
    "first_name": "Ann",
    "coupon_code": "WB-ABCDE-FGHJK",
}
FAST = RenderLimits(max_seconds=0.5)


@pytest.fixture
def tsettings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    s = Settings(data_dir=tmp_path / "data", coupon_secret="k")
    return private_templates(s, tmp_path, monkeypatch)


def _write(settings: Settings, name: str, html: str, text: str | None = None) -> dict:
    root = Path(settings.templates_dir)
    (root / f"{name}.html").write_text(html)
    (root / f"{name}.txt").write_text(text if text is not None else "{% extends '_base.txt' %}")
    return {**WINBACK, "template": name}


def test_merge_tag_mode_renders_one_email_for_the_segment(tsettings):
    email = render_merge_tags(tsettings, WINBACK)
    assert email.subject == "We miss you, *|FNAME|*: 20% off"
    for tag in ("*|FNAME|*", "*|COUPON|*", "*|EXPIRES|*", "*|UNSUB|*"):
        assert tag in email.html and tag in email.text
    assert tsettings.brand.postal_address in email.html and tsettings.brand.postal_address in email.text
    used = set(MERGE_TAG_RE.findall(email.html + email.text + email.subject))
    assert used <= set(MERGE_FIELDS) | SYSTEM_MERGE_TAGS
    assert "max-width:600px" in email.html and "<script" not in email.html and "<link" not in email.html


def test_merge_tag_render_refuses_a_garbled_tag(tsettings):
    camp = _write(
        tsettings,
        "shout",
        "{% extends '_base.html' %}{% block body %}Hi {{ first_name|lower }}{% endblock %}",
    )
    with pytest.raises(RenderError, match=r"shout.html.*\*\|fname\|\*, which no destination fills") as err:
        render_merge_tags(tsettings, camp)
    assert "first_name" in (err.value.fix or "")
    assert "hi alex" in render_member(tsettings, camp, {**MEMBER, "first_name": "Alex"}).html.lower()
    with pytest.raises(RenderError, match=r"subject.*\*\|[Ff]name\|\*"):
        render_merge_tags(tsettings, {**WINBACK, "subject": "Hey {{ first_name|title }}"})


def test_member_mode_fills_values_and_escapes_html(tsettings):
    member = {**MEMBER, "first_name": '<b>Ann</b> & "co"'}
    email = render_member(tsettings, WINBACK, member)
    assert "WB-ABCDE-FGHJK" in email.html and "WB-ABCDE-FGHJK" in email.text
    assert "&lt;b&gt;Ann&lt;/b&gt; &amp;" in email.html and "<b>Ann</b>" not in email.html
    assert "<b>Ann</b>" in email.text  # the text part is not HTML
    assert "2026-01-30" in email.text  # expires 30 days after as_of
    assert tsettings.brand.unsubscribe_url in email.html
    assert "*|" not in email.html + email.text + email.subject


def test_member_without_name_gets_the_documented_default(tsettings):
    email = render_member(tsettings, WINBACK, {**MEMBER, "first_name": None})
    assert email.subject.startswith("We miss you, there:")


def test_merge_values_match_the_published_fields(tsettings):
    values = merge_values(WINBACK, MEMBER)
    assert set(values) == set(MERGE_FIELDS)
    assert values["COUPON"] == "WB-ABCDE-FGHJK" and values["OFFER"] == "20% off, valid 30 days"
    assert values["EXPIRES"] == "2026-01-30" and values["SEGMENT"] == "At Risk"


def test_offer_cost_model():
    assert parse_offer({"type": "winback_coupon", "percent": 20}).discount_for(50.0) == pytest.approx(10.0)
    capped = parse_offer({"type": "second_purchase_discount", "percent": 50, "max_discount": 15})
    assert capped.discount_for(100.0) == 15.0 and capped.coupon_prefix == "SP"
    assert parse_offer({"type": "vip_early_access"}).discount_for(100.0) == 0.0
    assert parse_offer({"type": "none"}).discount_for(100.0) == 0.0


ESCAPES = {
    "class mro": "{{ ''.__class__.__mro__ }}",
    "class": "{{ first_name.__class__ }}",
    "globals": "{{ brand.__init__.__globals__ }}",
    "attr filter": "{{ first_name|attr('__class__') }}",
    "format method": "{{ '{0.__class__.__mro__}'.format(first_name) }}",
    "attr format trick": "{{ ('{0.__class__}'|attr('format'))(first_name) }}",
    "format_map": "{{ '{x.__class__}'.format_map({'x': first_name}) }}",
    "cycler globals": "{{ cycler.__init__.__globals__ }}",
    "self context": "{{ self._TemplateReference__context }}",
    "namespace": "{{ namespace.__init__.__globals__ }}",
    "getitem dunder": "{{ first_name['__class__'] }}",
    "percent format": "{{ '%s'|format(first_name.__class__) }}",
    "lipsum removed": "{{ lipsum.__globals__ }}",
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_sandbox_escapes_fail_clearly_and_render_nothing(tsettings, case):
    campaign = _write(
        tsettings, "evil", "{% extends '_base.html' %}{% block body %}" + ESCAPES[case] + "{% endblock %}"
    )
    with pytest.raises(RenderError) as err:
        render_member(tsettings, campaign, MEMBER)
    assert err.value.reason in {"sandbox", "undefined"}, str(err.value)
    assert "evil.html:1" in str(err.value)


def test_safe_filter_and_autoescape_off_are_rejected(tsettings):
    c = _write(
        tsettings, "evil", "{% extends '_base.html' %}{% block body %}{{ first_name|safe }}{% endblock %}"
    )
    with pytest.raises(RenderError, match=r"\|safe filter is not allowed"):
        render_member(tsettings, c, MEMBER)
    c = _write(
        tsettings,
        "evil2",
        "{% extends '_base.html' %}{% block body %}{% autoescape false %}"
        "{{ first_name }}{% endautoescape %}{% endblock %}",
    )
    with pytest.raises(RenderError, match="autoescape"):
        render_member(tsettings, c, MEMBER)


ENDLESS = {
    "nested ranges": "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}"
    "{% endfor %}{% endfor %}{% endfor %}",
    "recursive loop": "{% for x in [1, 2] recursive %}{{ loop([1, 2]) }}{% endfor %}",
    "macro doubling": "{% macro d(n) %}{% if n %}{{ d(n - 1) }}{{ d(n - 1) }}{% endif %}{% endmacro %}{{ d(60) }}",
    "list repeat loop": "{% for i in [0] * 99999 %}{% for j in [0] * 99999 %}{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("case", sorted(ENDLESS))
def test_endless_loops_are_stopped(tsettings, case):
    c = _write(
        tsettings, "slow", "{% extends '_base.html' %}{% block body %}" + ENDLESS[case] + "{% endblock %}"
    )
    started = time.monotonic()
    with pytest.raises(RenderError) as err:
        render_member(tsettings, c, MEMBER, limits=FAST)
    assert time.monotonic() - started < 5
    assert err.value.reason in {"timeout", "recursion", "output"}, str(err.value)


HUGE = {
    "many lines": "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
    "string repeat": "{{ 'x' * 10**9 }}",
    "power": "{{ 2 ** 99999999 }}",
    "center": "{{ first_name|center(1000000000) }}",
    "str method": "{{ first_name.ljust(1000000000) }}",
    "format width": "{{ '%0999999999d'|format(1) }}",
    "str format width": "{{ '{:>999999999}'.format(1) }}",
    "doubling concat": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "doubling plus": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "block set": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set b %}{{ ns.s }}{{ ns.s }}"
    "{% endset %}{% set ns.s = b %}{% endfor %}",
    "replace": "{{ ('x' * 1000)|replace('x', 'y' * 100000) }}",
    "join": "{{ range(10000)|join('x' * 100000) }}",
    "batch fill": "{{ [1]|batch(1000000000, 'x')|list|length }}",
    # one big string shared by many list items, then joined or printed
    "shared items joined": "{{ (['x' * 999999] * 1000)|join }}",
    "shared items tuple": "{{ (('x' * 999999,) * 1000)|join }}",
    "map default duplicates": "{{ range(10000)|map(attribute='a', default='x' * 999999)|join }}",
    "map of a wide filter": "{{ range(10000)|map('center', 999999)|join }}",
    "batch fill shared": "{{ ['x']|batch(1000, 'x' * 999999)|first|join }}",
    "sum of lists": "{{ ([['x' * 999999]] * 1000)|sum(start=[])|join }}",
    "nested literal doubling": "{% set ns = namespace(l=['x']) %}{% for i in range(40) %}"
    "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
    "dict literal doubling": "{% set ns = namespace(d={}) %}{% for i in range(40) %}"
    "{% set ns.d = {'a': ns.d, 'b': ns.d} %}{% endfor %}{{ ns.d }}",
    # format strings that repeat a big argument or take their width from one
    "format fields": "{{ ('{0}' * 1000).format('x' * 999999) }}",
    "percent fields": "{{ ('%(a)s' * 1000) % {'a': 'x' * 999999} }}",
    "format filter fields": "{{ ('%(a)s' * 1000)|format(a='x' * 999999) }}",
    "format width argument": "{{ '{:>{}}'.format('x', 999999999) }}",
    "percent star width": "{{ '%*d' % (999999999, 1) }}",
    # string arguments repeated per line, per character or per byte
    "indent per line": "{{ ('a\\n' * 499999)|indent(' ' * 999, true) }}",
    "wordwrap string": "{{ ('x' * 999999)|wordwrap(1, true, 'y' * 9999) }}",
    "translate": "{{ ('x' * 999).translate({120: 'y' * 999999}) }}",
    "bytes repeat": "{{ ('x'.encode() * 999999999)|length }}",
    "bytes width": "{{ 'x'.encode().ljust(999999999)|length }}",
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_huge_outputs_are_refused_before_allocating(tsettings, case):
    c = _write(tsettings, "big", "{% extends '_base.html' %}{% block body %}" + HUGE[case] + "{% endblock %}")
    started = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(RenderError) as err:
            render_member(tsettings, c, MEMBER, limits=FAST)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB allocated before the template was stopped"
    assert err.value.reason in {"size", "output", "timeout"}, str(err.value)
    # the line is named when one expression is to blame; the output cap is about the whole file
    assert ("big.html:1:" if err.value.reason == "size" else "big.html") in str(err.value)


def test_undefined_variable_names_the_line(tsettings):
    c = _write(
        tsettings, "typo", "{% extends '_base.html' %}\n{% block body %}\n\n{{ frist_name }}{% endblock %}"
    )
    with pytest.raises(RenderError) as err:
        render_member(tsettings, c, MEMBER)
    assert err.value.reason == "undefined" and "typo.html:4" in str(err.value)


def test_a_changed_template_is_refused_for_a_planned_campaign(tsettings):
    planned = {**WINBACK, "template_hash": template_hash(tsettings, "winback")}
    render_merge_tags(tsettings, planned)
    (Path(tsettings.templates_dir) / "_base.html").write_text(
        (Path(tsettings.templates_dir) / "_base.html").read_text().replace("Unsubscribe", "Opt out")
    )
    with pytest.raises(RenderError, match="changed since campaign"):
        render_merge_tags(tsettings, planned)


def test_ordinary_templates_render_well_inside_the_limits(tsettings):
    c = _write(
        tsettings,
        "ok",
        "{% extends '_base.html' %}{% block body %}{% for i in range(200) %}"
        "<p>{{ loop.index }} {{ first_name|upper }} {{ '%05.1f'|format(3.14159) }}</p>"
        "{% endfor %}{% endblock %}",
    )
    email = render_member(tsettings, c, MEMBER)
    assert "200 ANN 003.1" in email.html
