"""``activation templates check``: passes on the shipped templates, fails with file:line on each broken case."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from activation.settings import Settings
from campaigns.lint import check_templates
from tests.campaign_helpers import private_templates
from tests.cli_helpers import run_cli


@pytest.fixture
def tsettings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir=tmp_path / "data", coupon_secret="k")
    return private_templates(s, tmp_path, monkeypatch)


def test_shipped_templates_pass(tsettings):
    assert check_templates(tsettings) == []
    res = run_cli("templates", "check")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("ok:")


def _edit(settings: Settings, name: str, text: str) -> None:
    (Path(settings.templates_dir) / name).write_text(text)


BROKEN = {
    "syntax error": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}\n{% if %}\n{% endblock %}",
        "templates/winback.html:3: syntax error",
    ),
    "unclosed block": (
        "winback.txt",
        "{% extends '_base.txt' %}\n{% block body %}\nhello\n",
        "templates/winback.txt:",
    ),
    "unknown variable": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}\n{{ customer.email }}{% endblock %}",
        "templates/winback.html:3: unknown variable 'customer'",
    ),
    "no unsubscribe": (
        "winback.html",
        "<html><body>{{ first_name }} {{ brand.postal_address }}</body></html>",
        "templates/winback.html:1: no unsubscribe link in the html part",
    ),
    "no address": (
        "winback.txt",
        "Hi {{ first_name }}\nUnsubscribe: {{ unsubscribe_url }}\n",
        "templates/winback.txt:1: no postal address in the txt part",
    ),
    "unknown merge tag": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}\n\n*|LNAME|*{% endblock %}",
        "templates/winback.html:4: merge tag *|LNAME|* is not provided",
    ),
    "sandbox dunder": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}{{ first_name.__class__ }}{% endblock %}",
        "templates/winback.html:2: sandbox violation",
    ),
    "attr filter": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}{{ first_name|attr('upper') }}{% endblock %}",
        "templates/winback.html:2: sandbox violation: the |attr filter",
    ),
    "safe filter": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}\n{{ first_name|safe }}{% endblock %}",
        "templates/winback.html:3: syntax error: the |safe filter is not allowed",
    ),
    "endless loop": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}\n{% for i in range(10000) %}"
        "{% for j in range(10000) %}{% for k in range(10000) %}{% endfor %}{% endfor %}{% endfor %}"
        "{% endblock %}",
        "templates/winback.html:3: render limit exceeded: render took longer",
    ),
    "filter on a merge-tag value": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}\nHi {{ first_name|title }}{% endblock %}",
        "templates/winback.html:3: first_name is used in the |title filter",
    ),
    "comparison with a merge-tag value": (
        "winback.txt",
        "{% extends '_base.txt' %}\n{% block body %}\n\n"
        "{% if coupon_code == 'X' %}x{% endif %}{% endblock %}",
        "templates/winback.txt:4: coupon_code is used in this expression",
    ),
    "runtime error": (
        "winback.html",
        "{% extends '_base.html' %}\n{% block body %}\n\n{{ 1 / 0 }}{% endblock %}",
        "templates/winback.html:4: render failed: ZeroDivisionError",
    ),
    "layout without unsubscribe": (
        "_base.txt",
        "{{ brand.name }}\n{% block body %}{% endblock %}\n{{ brand.postal_address }}\n",
        "no unsubscribe link in the txt part",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_template_fails_with_file_and_line(tsettings, case):
    name, text, expected = BROKEN[case]
    _edit(tsettings, name, text)
    res = run_cli("templates", "check")
    assert res.exit_code == 1, res.output
    assert expected in res.stdout, res.stdout
    for line in res.stdout.splitlines()[:-1]:
        assert re.match(r"^[^:]+(:\d+)?: ", line), line


POLICY_BROKEN = {
    "missing template": (
        "  rfm11:\n    At Risk:\n      template: winback_v2\n",
        "template 'winback_v2' has no .html and no .txt file",
    ),
    "unknown segment": ("  rfm11:\n    At Riskk:\n      template: winback\n", "has no segment 'At Riskk'"),
    "bad subject": (
        '  rfm11:\n    At Risk:\n      template: winback\n      subject: "{{ frist_name }}"\n',
        "subject: undefined variable",
    ),
    "unknown offer": ("  rfm11:\n    At Risk:\n      offer: {type: bogo}\n", "unknown offer type 'bogo'"),
}


@pytest.mark.parametrize("case", sorted(POLICY_BROKEN))
def test_policy_problems_point_at_policy_lines(tsettings, case):
    entry, expected = POLICY_BROKEN[case]
    _edit(tsettings, "policy.yaml", "version: 1\nschemes:\n" + entry)
    res = run_cli("templates", "check")
    assert res.exit_code == 1, res.output
    assert re.search(r"templates/policy\.yaml:\d+: .*" + re.escape(expected), res.stdout), res.stdout
    for line in res.stdout.splitlines()[:-1]:  # every problem names a file that exists
        assert Path(line.split(":", 1)[0]).exists(), line


def test_malformed_policy_yaml(tsettings):
    _edit(tsettings, "policy.yaml", "schemes:\n  rfm11:\n    At Risk: {template: winback\n")
    res = run_cli("templates", "check")
    assert res.exit_code == 1
    assert (
        "templates/policy.yaml:4: not valid YAML" in res.stdout
        or "templates/policy.yaml:3: not valid YAML" in res.stdout
    ), res.stdout


def test_template_missing_its_text_part(tsettings):
    _edit(tsettings, "promo.html", "{% extends '_base.html' %}{% block body %}hi{% endblock %}")
    issues = check_templates(tsettings)
    assert any("template 'promo' has no .txt part" in i.message for i in issues), issues


def test_each_template_is_rendered_with_each_offer_it_is_used_with(tsettings):
    # winback with a vip offer (no percent): arithmetic on offer.percent fails only for that combination
    _edit(
        tsettings,
        "winback.txt",
        "{% extends '_base.txt' %}{% block body %}\n{{ offer.percent * 2 }}{% endblock %}",
    )
    _edit(
        tsettings,
        "policy.yaml",
        "version: 1\nschemes:\n  rfm11:\n    At Risk:\n      template: winback\n"
        "      offer: {type: winback_coupon, percent: 20}\n    Champions:\n"
        "      template: winback\n      offer: {type: vip_early_access}\n",
    )
    issues = check_templates(tsettings)
    assert any(
        i.file.endswith("winback.txt") and i.line == 2 and "render failed: TypeError" in i.message
        for i in issues
    ), issues
