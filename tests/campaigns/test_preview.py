"""``activation templates preview``: one self-contained HTML per segment plus an index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from campaigns.preview import write_previews
from tests.campaign_helpers import RFM11, insert_customers, insert_snapshot, private_templates
from tests.cli_helpers import run_cli

SEED5 = ("Champions", "Loyal", "At Risk", "New", "Others")


def _self_contained(html: str) -> None:
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""src\s*=\s*["']?(https?:)?//""", html), "external resource"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html), "external CSS resource"


def test_preview_without_snapshot_uses_a_made_up_customer(duck_settings, duck_engine, tmp_path, monkeypatch):
    s = private_templates(duck_settings, tmp_path, monkeypatch)
    out = tmp_path / "preview"
    items = write_previews(s, out, engine=duck_engine, scheme="rfm11")
    assert [i.segment for i in items] == list(RFM11)
    index = (out / "index.html").read_text()
    _self_contained(index)
    for it in items:
        if it.segment == "Lost":
            assert it.file is None and "suppressed" in it.offer
            continue
        assert it.error is None, it.error
        html = (out / it.file).read_text()
        _self_contained(html)
        assert "Alex" in html and it.subject
        assert f'href="{it.file}"' in index and it.subject.replace("'", "&#39;") in index
        assert s.brand.postal_address in html
    at_risk = next(i for i in items if i.segment == "At Risk")
    assert re.search(r"WB-[2-9A-HJ-NP-Z]{5}-[2-9A-HJ-NP-Z]{5}", (out / at_risk.file).read_text())


def test_preview_uses_a_sample_customer_from_the_latest_snapshot(settings, engine, tmp_path, monkeypatch):
    private_templates(settings, tmp_path, monkeypatch)
    insert_snapshot(engine, 50, scheme="seed5", segments=SEED5)
    insert_customers(engine, 50)
    out = tmp_path / "p"
    res = run_cli("templates", "preview", "--scheme", "seed5", "--out", str(out))
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.glob("*.html"))
    assert files == sorted(
        ["index.html", *(f"seed5-{n}.html" for n in ("champions", "loyal", "at-risk", "new", "others"))]
    )
    champions = (out / "seed5-champions.html").read_text()
    assert "Name0" in champions  # c000000 is the first Champion and has a first name
    assert "customer c000000" in (out / "index.html").read_text()


def test_preview_one_segment_and_unknown_segment(duck_settings, duck_engine, tmp_path, monkeypatch):
    private_templates(duck_settings, tmp_path, monkeypatch)
    out = tmp_path / "one"
    res = run_cli("templates", "preview", "--segment", "At Risk", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "rfm11-at-risk.html", "rfm11-at-risk.txt"]
    res = run_cli("templates", "preview", "--segment", "Nope", "--out", str(out))
    assert res.exit_code == 2 and "has no segment 'Nope'" in res.output


def test_a_broken_template_fails_alone_in_the_preview(duck_settings, duck_engine, tmp_path, monkeypatch):
    s = private_templates(duck_settings, tmp_path, monkeypatch)
    (Path(s.templates_dir) / "winback.html").write_text(
        "{% extends '_base.html' %}{% block body %}{{ ''.__class__ }}{% endblock %}"
    )
    out = tmp_path / "p"
    res = run_cli("templates", "preview", "--out", str(out))
    assert res.exit_code == 1
    assert "sandbox violation" in res.output
    assert (out / "rfm11-champions.html").exists() and not (out / "rfm11-at-risk.html").exists()
    assert "failed: " in (out / "index.html").read_text()


@pytest.mark.parametrize("scheme", ["rfm11", "seed5", "vip_fm", "value_tier"])
def test_every_segment_of_the_shipped_schemes_renders(
    duck_settings, duck_engine, tmp_path, monkeypatch, scheme
):
    s = private_templates(duck_settings, tmp_path, monkeypatch)
    items = write_previews(s, tmp_path / scheme, engine=duck_engine, scheme=scheme)
    assert items and all(i.error is None for i in items)
