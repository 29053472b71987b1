"""``activation demo`` wall time, split into Prefect start-up and the cycle's own work, next to a trivial
two-task flow measured in the same run (both in fresh processes on a temporary local Prefect API).

    python bench/bench_demo.py [--customers N] [--orders M]

The default is the demo as it ships: 20,000 customers, 160,000 orders, the planted effect (At Risk +10 pp,
Hibernating +8 pp, Champions +0 pp, coupons redeemed), two quarters segmented around the as_of and one after;
``--customers 5000 --orders 40000`` gives the earlier, smaller demo for a side-by-side.

Prints: the trivial flow's wall time; the demo's wall time with its phases (Prefect start-up, demo data,
planting and the extra snapshots, cycle under Prefect, preview); the cycle's own work (the same plain functions called without Prefect on a
copy of the demo warehouse); and the ratios the issue aims at (own work <= 3 s, demo <= 1.5x trivial).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRIVIAL = """
from prefect import flow, task
@task
def one(x): return x + 1
@task
def two(x): return x * 2
@flow
def trivial(): return two(one(1))
trivial()
"""

OWN_WORK = """
import time
from datetime import date
from pathlib import Path
from sqlalchemy import text
from activation.settings import get_settings
from activation.warehouse import get_engine
from outcomes.ledger import collect_outcomes
from campaigns.plan import plan_campaigns
from outcomes.report import write_roi_report
from connectors.outbox import OutboxDestination
from connectors.sync import SyncOptions, sync_audience
from segments.snapshots import compute_snapshot
as_of = date.fromisoformat("{as_of}")
s = get_settings(); e = get_engine(s)
with e.begin() as c:
    for t in ("sync_state", "sync_log", "sync_runs", "destination_campaigns", "campaign_outcomes"):
        c.execute(text(f"delete from {{t}}"))
steps = {{}}
t = time.perf_counter(); compute_snapshot(e, s, as_of, "rfm11"); steps["snapshot"] = time.perf_counter() - t
t = time.perf_counter(); plan_campaigns(e, s, as_of, "rfm11"); steps["plan"] = time.perf_counter() - t
t = time.perf_counter()
sync_audience(e, s, OutboxDestination(s), SyncOptions.publish(as_of, "rfm11", force=True))
steps["sync_outbox"] = time.perf_counter() - t
t = time.perf_counter(); collect_outcomes(e, s, as_of, "rfm11"); steps["outcomes"] = time.perf_counter() - t
t = time.perf_counter(); write_roi_report(e, s, as_of, "rfm11", Path("data/bench-report.html"))
steps["report"] = time.perf_counter() - t
print("OWN", " ".join(f"{{k}}={{v:.2f}}" for k, v in steps.items()))
"""


def run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int)
    parser.add_argument("--orders", type=int)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ACTIVATION_"))}
    env.update(
        {
            "PREFECT_HOME": str(work / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "200",
        }
    )
    try:
        run([sys.executable, "-c", TRIVIAL], work, env)  # creates Prefect's database once, for both
        trivial, _ = run([sys.executable, "-c", TRIVIAL], work, env)
        demo_args = (
            ["demo"]
            + (["--customers", str(opts.customers)] if opts.customers else [])
            + (["--orders", str(opts.orders)] if opts.orders else [])
        )
        demo_dir = work / "demo"
        demo_dir.mkdir()
        demo, out = run(
            [sys.executable, "-c", "from activation.cli import main; main()", *demo_args], demo_dir, env
        )
        phases = dict(re.findall(r"(\w+) ([\d.]+) s", out.split("timings", 1)[1]))
        as_of = re.search(r"backtest as of (\d{4}-\d\d-\d\d)", out).group(1)  # type: ignore[union-attr]
        copy = work / "own"
        shutil.copytree(demo_dir / "data", copy / "data")
        _, own_out = run([sys.executable, "-c", OWN_WORK.format(as_of=as_of)], copy, env)
        own = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", own_out.split("OWN", 1)[1])}
        own_total = sum(own.values())
        print(f"trivial two-task flow (fresh process)   {trivial:7.1f} s")
        print(
            f"activation demo (fresh process)         {demo:7.1f} s   = {demo / trivial:.2f}x trivial (aim <= 1.5x)"
        )
        for k, v in phases.items():
            print(f"  {k:<36}  {float(v):7.1f} s")
        print(f"cycle's own work, no Prefect            {own_total:7.1f} s   (aim <= 3 s)")
        for k, v in own.items():
            print(f"  {k:<36}  {v:7.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
