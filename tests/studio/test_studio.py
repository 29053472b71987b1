"""``activation studio``: the page driven in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, through Selenium with the driver's path given, so Selenium Manager fetches nothing),
on a demo warehouse: pick a segment, edit a template file on disk and see the page change, break it and see
the ``templates check`` error with ``file:line``, fix it, send a test into the outbox. Plus the guards
(read-only warehouse, token, host names, CSP) without a browser.

``STUDIO_SCREENSHOTS=docs`` saves the page at 1280 and 375 px wide into that folder.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, text

from activation.settings import REPO_ROOT, Settings
from activation.tables import rfm_snapshots
from activation.warehouse import dispose_engines, get_engine
from campaigns.policy import parse_policy
from segments.demo_data import generate
from segments.ingest import ingest_file
from segments.snapshots import compute_snapshot
from studio.app import TOKEN_HEADER, create_app
from studio.catalog import read_only_engine
from studio.cli import access
from studio.serve import StudioServer
from studio.state import TEST_FOLDER, Studio, holdout_label
from tests.cli_helpers import run_cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
AS_OF = date(2025, 12, 31)
WAIT_S = 15


# ---------------------------------------------------------------------------------------------- fixtures


def _demo_settings(root: Path) -> Settings:
    """A demo warehouse (1,000 customers, an rfm11 snapshot) and a private copy of the templates."""
    shutil.copytree(REPO_ROOT / "templates", root / "templates")
    settings = Settings(
        data_dir=root / "data",
        warehouse_url=f"duckdb:///{root / 'data' / 'warehouse.duckdb'}",
        templates_dir=root / "templates",
        coupon_secret="studio-test-secret",  # type: ignore[arg-type]
    )
    files = generate(root / "demo", customers=1000, orders=8000)
    engine = get_engine(settings)
    ingest_file(engine, settings, files.orders, "parquet", files.mapping)
    compute_snapshot(engine, settings, AS_OF, "rfm11")
    dispose_engines()  # the studio opens the warehouse read-only, on its own
    return settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """The studio served by uvicorn in a thread, on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.studio = Studio(settings, read_only_engine(settings))
        self.port = _free_port()
        self.server = StudioServer(self.studio, "127.0.0.1", self.port, hosts={"127.0.0.1", "localhost"})
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the studio did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(_demo_settings(tmp_path_factory.mktemp("studio")))
    served.start()
    yield served
    served.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole run."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = f"no {' and no '.join(missing)}: apt-get install -y chromium chromium-driver"
        if IN_CI:
            pytest.fail(f"the browser tests must run in CI: {reason}")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    os.environ["SE_AVOID_STATS"] = (
        "true"  # Selenium Manager reports nothing and, with both paths, fetches nothing
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------------------------- helpers


def _wait(driver: Any, what: str, check: Callable[[], Any]) -> Any:
    """Wait until ``check()`` is truthy (WAIT_S at most); fail naming ``what`` and the page's state."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # an element replaced while reading it: look again
            value = None
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}; page text:\n{driver.find_element('tag name', 'body').text}")


def _text(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def _open_segment(driver: Any, served: Served, segment: str) -> None:
    driver.get(served.url)
    button = f'nav button[data-scheme="rfm11"][data-segment="{segment}"]'
    # the list is redrawn on every change event: find and click again if it was replaced in between
    _wait(driver, "the segment list", lambda: driver.find_element("css selector", button).click() or True)
    _wait(driver, f"{segment} selected", lambda: _text(driver, "fact-segment") == segment)


def _edit(path: Path, old: str, new: str) -> None:
    source = path.read_text(encoding="utf-8")
    assert old in source, f"{old!r} not in {path}"
    path.write_text(source.replace(old, new, 1), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- in a browser


def test_every_segment_with_its_size_and_an_email_for_a_real_member(browser: Any, served: Served) -> None:
    _open_segment(browser, served, "At Risk")
    catalog = served.studio.catalog()
    rfm11 = next(s for s in catalog["schemes"] if s["name"] == "rfm11")
    listed = _wait(  # (segment, text) of each button, read again if the list is redrawn meanwhile
        browser,
        "the rfm11 segments",
        lambda: [
            (b.get_attribute("data-segment"), b.text)
            for b in browser.find_elements("css selector", 'nav button[data-scheme="rfm11"]')
        ],
    )
    assert [name for name, _ in listed] == [s["name"] for s in rfm11["segments"]]
    at_risk = next(s for s in rfm11["segments"] if s["name"] == "At Risk")
    assert at_risk["size"] > 0 and f"{at_risk['size']:,} customers" in dict(listed)["At Risk"]
    first = served.studio.members("rfm11", "At Risk")[0]
    assert first.first_name
    subject = _wait(browser, "the subject", lambda: _text(browser, "fact-subject"))
    assert subject == f"We miss you, {first.first_name}: 20% off inside"
    assert _text(browser, "fact-preheader") == "20% off to welcome you back."
    coupon = _text(browser, "fact-coupon")
    assert coupon.startswith("WB-") and _text(browser, "fact-expires") == "2026-01-30"
    assert _text(browser, "fact-holdout") == "10 %" and "outbox" in _text(browser, "fact-destinations")
    desktop, mobile = (browser.find_element("id", i) for i in ("desktop", "mobile"))
    assert desktop.size["width"] == 1280 and mobile.size["width"] == 375
    assert desktop.get_attribute("sandbox") == "" and mobile.get_attribute("sandbox") == ""
    browser.switch_to.frame(mobile)
    try:
        body = browser.find_element("tag name", "body").text
    finally:
        browser.switch_to.default_content()
    assert f"We miss you, {first.first_name}" in body and coupon in body
    assert coupon in _text(browser, "text") and served.settings.brand.postal_address in _text(browser, "text")
    if os.environ.get("STUDIO_SCREENSHOTS"):
        _screenshots(browser, Path(os.environ["STUDIO_SCREENSHOTS"]))


def _screenshots(driver: Any, folder: Path) -> None:
    for width, height in ((1280, 1000), (375, 812)):
        driver.set_window_size(width, height)
        if width < 700:  # the phone layout: the list above, then the email
            driver.execute_script("document.querySelector('.bar').scrollIntoView()")
        time.sleep(0.5)
        driver.save_screenshot(str(folder / f"studio-{width}.png"))
    driver.set_window_size(1280, 900)


def test_switching_to_a_member_without_a_first_name(browser: Any, served: Served) -> None:
    _open_segment(browser, served, "Champions")
    options = browser.find_elements("css selector", "#member option")
    nameless = [o for o in options if "no first name" in o.text]
    assert len(options) >= 2 and nameless
    nameless[0].click()
    _wait(browser, "the nameless subject", lambda: _text(browser, "fact-subject") == "there, you shop first")


def test_a_saved_template_shows_then_an_error_with_its_line_then_the_fix(
    browser: Any, served: Served
) -> None:
    html = served.settings.templates_dir / "winback.html"
    txt = served.settings.templates_dir / "winback.txt"
    good_html = html.read_text(encoding="utf-8")
    _open_segment(browser, served, "At Risk")
    try:
        _edit(txt, "{% block body %}", "{% block body %}\nOnly this week: free returns.")
        _wait(
            browser, "the edited text part", lambda: "Only this week: free returns." in _text(browser, "text")
        )

        broken = good_html.replace("{% block body %}", "{% block body %}\n{% if %}", 1)
        html.write_text(broken, encoding="utf-8")
        line = broken.splitlines().index("{% if %}") + 1
        problems = _wait(
            browser,
            "the error",
            lambda: browser.find_element("id", "problems").is_displayed() and _text(browser, "problems"),
        )
        assert f"winback.html:{line}" in problems and "syntax error" in problems and "fix:" in problems
        assert browser.find_element("id", "stale").is_displayed()
        assert "free returns" in _text(browser, "text")  # the last good render stays next to the error

        html.write_text(good_html.replace("We miss you", "We saved you a seat"), encoding="utf-8")
        _wait(browser, "the recovery", lambda: not browser.find_element("id", "problems").is_displayed())
        srcdoc = _wait(
            browser,
            "the new HTML",
            lambda: (
                "We saved you a seat" in (browser.find_element("id", "desktop").get_attribute("srcdoc") or "")
            ),
        )
        assert srcdoc
    finally:
        html.write_text(good_html, encoding="utf-8")
        _edit(txt, "\nOnly this week: free returns.", "")


def test_send_a_test_writes_the_members_email_into_the_outbox(browser: Any, served: Served) -> None:
    _open_segment(browser, served, "At Risk")
    subject = _wait(browser, "the subject", lambda: _text(browser, "fact-subject"))
    coupon = _text(browser, "fact-coupon")
    browser.find_element("id", "send").click()
    sent = _wait(
        browser,
        "the outbox path",
        lambda: "Written to the outbox" in _text(browser, "sent") and _text(browser, "sent"),
    )
    path = Path(sent.split(": ", 1)[1])
    assert path.is_relative_to(served.settings.resolved_outbox_dir / TEST_FOLDER) and path.is_file()
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == subject
    parts = {p.get_content_type(): _payload(p) for p in message.walk() if not p.is_multipart()}
    assert coupon in parts["text/plain"] and coupon in parts["text/html"]


def _payload(part: Message) -> str:
    raw = part.get_payload(decode=True)
    assert isinstance(raw, bytes)
    return raw.decode("utf-8")


# ---------------------------------------------------------------------------------------------- guards


class Client:
    """Requests straight into an ASGI app (no server, no lifespan: the app is built with ``watch=False``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def test_a_holdout_sized_by_power_is_shown_as_the_target(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nschemes:\n  rfm11:\n    Champions:\n      holdout: {mde: 0.02, power: 0.8}\n",
        encoding="utf-8",
    )
    parsed, issues = parse_policy(policy)
    assert parsed is not None and not issues
    assert holdout_label(parsed.for_segment("rfm11", "Champions")) == (
        "sized by plan to detect a 2-point conversion lift at 80 % power (at most 30 %)"
    )
    assert holdout_label(parsed.for_segment("rfm11", "Lost")) == "10 %"


def test_the_page_allows_only_its_own_script_and_loads_nothing_from_elsewhere(served: Served) -> None:
    client = Client(create_app(served.studio, hosts={"testserver"}, watch=False))
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page.text and page.text.count("<script") == 1
    assert "default-src 'none'" in csp and "img-src data:" in csp and "connect-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text
    assert client.get("/").headers["content-security-policy"] != csp  # a new nonce per page


def test_a_host_name_other_than_loopback_is_refused(served: Served) -> None:
    client = Client(create_app(served.studio, hosts={"127.0.0.1"}, watch=False))
    assert client.get("/api/catalog", headers={"host": "attacker.example"}).status_code == 403
    assert client.get("/api/catalog", headers={"host": "127.0.0.1:8765"}).status_code == 200


def test_beyond_loopback_a_token_is_required() -> None:
    token, hosts = access("0.0.0.0", allow_remote=True)
    assert token and hosts is None
    assert access("127.0.0.1", allow_remote=False)[0] is None


def test_the_token_is_checked(served: Served) -> None:
    client = Client(create_app(served.studio, token="s3cret", watch=False))
    assert client.get("/api/catalog").status_code == 401
    assert client.get("/api/catalog", headers={TOKEN_HEADER: "wrong"}).status_code == 401
    assert client.get("/api/catalog", headers={TOKEN_HEADER: "s3cret"}).status_code == 200
    assert client.get("/api/catalog?token=s3cret").status_code == 200


def test_binding_beyond_loopback_without_the_flag_is_refused(duck_settings: Settings) -> None:
    result = run_cli("studio", "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert "--host 0.0.0.0" in result.stderr and "--allow-remote" in result.stderr


def test_a_port_in_use_is_named_before_anything_starts(duck_settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("studio", "--port", str(port))
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and f"--port {port + 1}" in result.stderr


def test_a_send_is_refused_without_json_and_for_a_failing_template(served: Served) -> None:
    client = Client(create_app(served.studio, hosts={"testserver"}, watch=False))
    form = client.post("/api/send-test", data={"scheme": "rfm11", "segment": "At Risk"})
    assert form.status_code == 415
    html = served.settings.templates_dir / "nurture.html"
    good = html.read_text(encoding="utf-8")
    before = sorted((served.settings.resolved_outbox_dir / TEST_FOLDER).rglob("*nurture*"))
    try:
        html.write_text(good.replace("{% block body %}", "{% block body %}{{ no_such_thing }}", 1), "utf-8")
        body = {"scheme": "rfm11", "segment": "Potential Loyalists", "member": 0}
        refused = client.post("/api/send-test", json=body)
    finally:
        html.write_text(good, encoding="utf-8")
    assert refused.status_code == 422 and "nurture.html:" in refused.json()["problem"]["where"]
    assert sorted((served.settings.resolved_outbox_dir / TEST_FOLDER).rglob("*nurture*")) == before


def test_the_warehouse_is_opened_read_only(settings: Settings) -> None:
    engine = get_engine(settings)
    with engine.begin() as conn:
        conn.execute(text("select 1"))
    dispose_engines()
    reader = read_only_engine(settings)
    assert reader is not None
    row = {
        "as_of": AS_OF,
        "scheme": "rfm11",
        "customer_id": "c1",
        "recency_days": 1,
        "frequency": 1,
        "monetary": 1.0,
        "r_score": 1,
        "f_score": 1,
        "m_score": 1,
        "segment": "Champions",
    }
    with pytest.raises(Exception, match="(?i)read.only"):
        with reader.begin() as conn:
            conn.execute(insert(rfm_snapshots), [row])
    reader.dispose()
