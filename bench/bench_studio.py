"""Benchmark: the studio's re-render after a save, and its first page.

On the demo's data (5,000 customers, 40,000 orders, the rfm11 snapshot, its 11 segments) with a private
copy of the templates, the studio is served by uvicorn on loopback and read like the page reads it:

* **save → page updated**: a template file is saved; the clock runs until an event-stream client has seen
  the change and fetched ``/api/catalog`` and the shown segment's ``/api/preview`` with the new text (the
  watcher's look every 0.1 s and the stream's every 0.05 s included). ``--saves`` times, p50/p95/max.
* **re-render of every segment**: what a save costs the server before the page can show it — the policy
  read and a render of each of the 11 segments for its first member (direct calls, no HTTP) — and the
  ``templates check`` that follows it (its problems reach the page when it is done).
* **first page**: starting the studio (schemes, segment sizes, ``templates check``) and then the page's
  first three requests (``/``, ``/api/catalog``, ``/api/preview``), on the demo and on a warehouse of
  ``--large`` customers (a snapshot built directly in the warehouse, as ``bench_plan.py`` does).

    python bench/bench_studio.py [--saves 40] [--large 1000000]
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import socket
import statistics
import tempfile
import threading
import time
from datetime import date, datetime
from pathlib import Path

import httpx
from bench_plan import AS_OF, build  # bench/ is on the path when this script runs
from sqlalchemy import insert

from activation.settings import REPO_ROOT, Settings
from activation.tables import snapshot_runs
from activation.warehouse import dispose_engines, get_engine
from segments.demo_data import generate
from segments.ingest import ingest_file
from segments.snapshots import compute_snapshot
from studio.catalog import read_only_engine
from studio.serve import StudioServer
from studio.state import Studio

SEGMENT = "At Risk"


def _settings(root: Path) -> Settings:
    shutil.copytree(REPO_ROOT / "templates", root / "templates")
    return Settings(
        data_dir=root / "data",
        warehouse_url=f"duckdb:///{root / 'data' / 'warehouse.duckdb'}",
        templates_dir=root / "templates",
        coupon_secret="bench-secret",  # type: ignore[arg-type]
    )


def demo_warehouse(root: Path) -> Settings:
    settings = _settings(root)
    files = generate(root / "demo", customers=5000, orders=40000)
    engine = get_engine(settings)
    ingest_file(engine, settings, files.orders, "parquet", files.mapping)
    compute_snapshot(engine, settings, AS_OF, "rfm11")
    dispose_engines()
    return settings


def large_warehouse(root: Path, n: int) -> Settings:
    settings = _settings(root)
    engine = get_engine(settings)
    build(engine, n)
    with engine.begin() as conn:  # what compute_snapshot records beside the rows
        conn.execute(
            insert(snapshot_runs).values(
                as_of=AS_OF,
                scheme="rfm11",
                scheme_hash="bench",
                lookback_days=730,
                customers=n,
                cutpoints="{}",
                warnings="[]",
                created_at=datetime.now(),
            )
        )
    dispose_engines()
    return settings


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(studio: Studio) -> tuple[StudioServer, threading.Thread, str]:
    port = _port()
    server = StudioServer(studio, "127.0.0.1", port, hosts={"127.0.0.1"})
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def first_page(settings: Settings, label: str) -> None:
    t0 = time.perf_counter()
    studio = Studio(settings, read_only_engine(settings))
    start_s = time.perf_counter() - t0
    server, thread, base = serve(studio)
    with httpx.Client(base_url=base) as client:
        t0 = time.perf_counter()
        client.get("/").raise_for_status()
        client.get("/api/catalog").raise_for_status()
        preview = client.get("/api/preview", params={"scheme": "rfm11", "segment": SEGMENT, "member": 0})
        page_s = time.perf_counter() - t0
    assert preview.json()["email"] is not None
    customers = studio.scheme("rfm11").customers
    print(
        f"{label}: {customers:,} customers; start {start_s * 1000:.0f} ms, first page {page_s * 1000:.0f} ms"
    )
    server.stop()
    thread.join()


def _listen(base: str, events: queue.Queue[tuple[int, float]], stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=None) as client, client.stream("GET", "/api/events") as r:
        for line in r.iter_lines():
            if stop.is_set():
                return
            if line.startswith("data: "):
                events.put((json.loads(line[6:])["version"], time.perf_counter()))


def _pct(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):.0f} ms, p95 {p95:.0f} ms, max {ms[-1]:.0f} ms"


def saves(settings: Settings, n: int) -> None:
    studio = Studio(settings, read_only_engine(settings))
    server, thread, base = serve(studio)
    events: queue.Queue[tuple[int, float]] = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=_listen, args=(base, events, stop), daemon=True).start()
    events.get(timeout=10)  # the stream's first event: the version at connection
    txt = settings.templates_dir / "winback.txt"
    original = txt.read_text(encoding="utf-8")
    took = []
    with httpx.Client(base_url=base) as client:
        for i in range(n):
            marker = f"Bench line {i}."
            txt.write_text(original.replace("{% block body %}", "{% block body %}\n" + marker, 1), "utf-8")
            t0 = time.perf_counter()
            events.get(timeout=10)
            client.get("/api/catalog").raise_for_status()
            body = client.get("/api/preview", params={"scheme": "rfm11", "segment": SEGMENT}).json()
            took.append(time.perf_counter() - t0)
            assert marker in body["email"]["text"], "the page did not get the new text"
            time.sleep(0.15)  # a person saves a few times a minute; let the watcher settle
    txt.write_text(original, encoding="utf-8")
    stop.set()
    print(f"save -> page updated ({n} saves, one segment shown): {_pct(took)}")
    server.stop()
    thread.join()

    segments = studio.scheme("rfm11").segments
    work, checks = [], []
    for i in range(n):
        txt.write_text(original + f"\n{{# {i} #}}\n", "utf-8")
        t0 = time.perf_counter()
        studio.reread_policy()
        for seg in segments:
            studio.preview("rfm11", seg, 0)
        t1 = time.perf_counter()
        studio.recheck()
        work.append(t1 - t0)
        checks.append(time.perf_counter() - t1)
    txt.write_text(original, encoding="utf-8")
    print(f"policy read + render of all {len(segments)} segments after a save ({n} times): {_pct(work)}")
    print(f"templates check after a save ({n} times): {_pct(checks)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--saves", type=int, default=40)
    ap.add_argument("--large", type=int, default=1_000_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    demo = demo_warehouse(tmp / "demo")
    first_page(demo, "demo")
    saves(demo, args.saves)
    if args.large:
        t0 = time.perf_counter()
        large = large_warehouse(tmp / "large", args.large)
        print(f"built a {args.large:,}-customer snapshot in {time.perf_counter() - t0:.1f} s")
        first_page(large, "large")
    print(f"date {date.today()}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
