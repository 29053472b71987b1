"""Audience sync against the local Mailchimp-compatible server with injected latency.

Three runs on one warehouse: the initial sync of N members, a corrected plan where a share of the members
moved segment, and a rerun with nothing changed. For each: calls made (writes), wall time (split into the
work before the first call -- reading the plan, diffing against ``sync_state`` -- and the API phase), the
connection-limited lower bound ⌈calls / connections⌉ × latency and the ratios, and the CPU time of the
client and of the fake server (both share the machine).

    python bench/bench_sync.py --members 100000 --latency 0.05

``--batch-calls N`` also measures the client's CPU per 500-member batch upsert: N calls one after the
other through the connector's SDK adapter (request building, sending, reading and parsing the answer),
process CPU time divided by N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr

from activation.settings import MailchimpSettings, Settings
from activation.warehouse import get_engine
from connectors.http import RetryPolicy
from connectors.mailchimp import MailchimpApi, MailchimpDestination
from connectors.sync import SyncOptions, sync_audience
from tests.fakes.plan_data import AS_OF, SCHEME, SimpleContent

SEGMENTS = (
    "Champions",
    "Loyal Customers",
    "Potential Loyalist",
    "New Customers",
    "Promising",
    "Need Attention",
    "About To Sleep",
    "At Risk",
    "Can't Lose Them",
    "Hibernating",
    "Lost",
)


def load_plan(
    engine, assignment: dict[str, str], version: int, holdout_every: int = 10, customers: bool = True
) -> None:
    """Bulk-load customers, one campaign per segment and its members (DuckDB native path)."""
    now = datetime(2024, 4, 1)
    raw = engine.raw_connection()
    try:
        con = raw.driver_connection
        if customers:
            ids = list(assignment)
            con.register(
                "c",
                pa.table(
                    {
                        "customer_id": ids,
                        "email": [f"{i}@example.com" for i in ids],
                        "first_name": [f"N{i}" for i in ids],
                    }
                ),
            )
            con.execute(
                "INSERT INTO customers (customer_id, email, first_name, unsubscribed) SELECT customer_id, email, first_name, false FROM c"
            )
            con.unregister("c")
        con.execute("DELETE FROM campaign_members")
        con.execute("DELETE FROM campaigns")
        cids = {s: f"{SCHEME}-{AS_OF}-{i}-v{version}" for i, s in enumerate(SEGMENTS)}
        for s, cid in cids.items():
            con.execute(
                "INSERT INTO campaigns (campaign_id, campaign_key, version, as_of, scheme, segment, template, subject, offer_type, offer, holdout_share, template_hash, policy_hash, destinations, treated, holdout, excluded, created_at) VALUES (?, ?, ?, ?, ?, ?, 't', ?, 'winback_coupon', ?, 0.1, 't', 'p', '[]', 0, 0, '{}', ?)",
                [
                    cid,
                    f"{SCHEME}/{AS_OF}/{s}",
                    version,
                    AS_OF,
                    SCHEME,
                    s,
                    f"Hello {s}",
                    json.dumps({"type": "winback_coupon", "percent": 15, "expiry_days": 30}),
                    now,
                ],
            )
        rows = list(assignment.items())
        con.register(
            "m",
            pa.table(
                {
                    "campaign_id": [cids[s] for _, s in rows],
                    "customer_id": [c for c, _ in rows],
                    "member_group": [
                        "holdout" if int(c[1:]) % holdout_every == 0 else "treatment" for c, _ in rows
                    ],
                    "coupon_code": [f"C-{c}" for c, _ in rows],
                }
            ),
        )
        con.execute("INSERT INTO campaign_members SELECT * FROM m")
        con.unregister("m")
        raw.commit()
    finally:
        raw.close()


class RemoteFake:
    """The fake Mailchimp server in its own process (client and server must not share a GIL)."""

    def __init__(self, latency: float) -> None:
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.serve", "mailchimp", "--latency", str(latency)],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        self.info = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        self.http = httpx.Client(base_url=self.info["url"].rsplit("/3.0", 1)[0])

    def stats(self) -> dict:
        return self.http.get("/_fake/stats").json()

    def cpu(self) -> float:
        """CPU seconds the server process used so far (it shares the machine with the client)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset(self) -> None:
        self.http.post("/_fake/reset")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def run(engine, settings, fake: RemoteFake, latency: float, conns: int, label: str, changed: int) -> dict:
    dest = MailchimpDestination(settings.mailchimp, settings.brand, retry=RetryPolicy(base_delay=0.05))
    fake.reset()
    cpu0, server0 = os.times(), fake.cpu()
    t0 = time.perf_counter()
    res = sync_audience(
        engine, settings, dest, SyncOptions(AS_OF, SCHEME, force=True, content=SimpleContent())
    )
    wall = time.perf_counter() - t0
    cpu1, server1 = os.times(), fake.cpu()
    dest.close()
    stats = fake.stats()
    calls = stats["calls"]
    return {
        "run": label,
        "changed": changed,
        "written": res.ok,
        "segments": len(res.segments),
        "calls": calls,
        "writes": stats["writes"],
        "wall_s": wall,
        "api_s": res.apply_seconds,
        "bound_s": math.ceil(calls / conns) * latency,
        "peak_in_flight": stats["peak_in_flight"],
        "client_cpu_s": cpu1.user + cpu1.system - cpu0.user - cpu0.system,
        "server_cpu_s": server1 - server0,
        "status": res.status,
    }


def cpu_per_batch(settings, calls: int) -> tuple[float, float]:
    """(client CPU ms, wall ms) per 500-member ``POST /lists/{id}`` through :class:`MailchimpApi`."""
    api = MailchimpApi(settings.mailchimp, retry=RetryPolicy(base_delay=0.05))
    list_id = settings.mailchimp.list_id

    def body(i: int) -> dict:
        return {
            "members": [
                {
                    "email_address": f"b{i}-{j}@example.com",
                    "status_if_new": "subscribed",
                    "merge_fields": {
                        "FNAME": f"N{j}",
                        "SEGMENT": "Champions",
                        "COUPON": f"C-{i}-{j}",
                        "OFFER": "15% off",
                        "EXPIRES": "2024-05-01",
                    },
                }
                for j in range(500)
            ],
            "update_existing": True,
        }

    bodies = [body(i) for i in range(calls + 1)]
    api.call("warm-up", lambda c: c.lists.batch_list_members(list_id, bodies[0]), write=True)
    cpu0, t0 = os.times(), time.perf_counter()
    for b in bodies[1:]:
        api.call("batch upsert", lambda c, b=b: c.lists.batch_list_members(list_id, b), write=True)
    cpu1, t1 = os.times(), time.perf_counter()
    api.close()
    cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    return cpu * 1000 / calls, (t1 - t0) * 1000 / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--change", type=float, default=0.05, help="share of members moving segment in run 2")
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--batch-calls", type=int, default=0, help="measure client CPU per 500-member batch call")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    fake = RemoteFake(args.latency)
    settings = Settings(
        data_dir=tmp,
        warehouse_url=f"duckdb:///{tmp / 'w.duckdb'}",
        guardrail_max_change_share=1.0,
        mailchimp=MailchimpSettings(
            api_key=SecretStr(fake.info["api_key"]),
            list_id=fake.info["list_id"],
            base_url=fake.info["url"],
            max_connections=args.connections,
        ),
    )
    engine = get_engine(settings)
    rng = random.Random(7)
    assignment = {f"c{i:07d}": SEGMENTS[rng.randrange(len(SEGMENTS))] for i in range(args.members)}
    t = time.perf_counter()
    load_plan(engine, assignment, 1)
    print(f"loaded {args.members:,} members in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    rows = [run(engine, settings, fake, args.latency, args.connections, "initial", args.members)]
    movers = rng.sample(sorted(assignment), int(args.members * args.change))
    moved = dict(assignment)
    for c in movers:
        moved[c] = SEGMENTS[(SEGMENTS.index(moved[c]) + 1) % len(SEGMENTS)]
    load_plan(engine, moved, 2, customers=False)
    rows.append(
        run(engine, settings, fake, args.latency, args.connections, f"{args.change:.0%} moved", len(movers))
    )
    rows.append(run(engine, settings, fake, args.latency, args.connections, "no change", 0))
    fake.stop()
    ms = f"{args.latency * 1000:.0f} ms"
    print(
        f"| run | members changed | members written | calls (writes) | ⌈written/500⌉ | wall s | outside the API "
        f"phase s | API phase s | lower bound s ⌈calls/{args.connections}⌉×{ms} | wall / bound | API phase / bound "
        "| peak in flight | CPU s client / fake server |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        bound = r["bound_s"]
        ratio = f"{r['wall_s'] / bound:.2f}" if bound and r["writes"] else "-"
        api_ratio = f"{r['api_s'] / bound:.2f}" if bound and r["writes"] else "-"
        print(
            f"| {r['run']} | {r['changed']:,} | {r['written']:,} | {r['calls']:,} ({r['writes']:,}) | "
            f"{math.ceil(r['written'] / 500):,} | {r['wall_s']:.1f} | {r['wall_s'] - r['api_s']:.1f} | "
            f"{r['api_s']:.1f} | {bound:.2f} | {ratio} | {api_ratio} | {r['peak_in_flight']} | "
            f"{r['client_cpu_s']:.0f} / {r['server_cpu_s']:.0f} |"
        )
    print(f"segments: {rows[0]['segments']}; holdouts: every 10th customer; latency per call: {ms}")
    per_write = [f"{r['client_cpu_s'] * 1000 / r['writes']:.1f}" for r in rows if r["writes"]]
    print(
        f"client CPU per write call over a whole sync (everything the client does, ms): {', '.join(per_write)}"
    )
    if args.batch_calls:
        fake = RemoteFake(args.latency)
        settings.mailchimp = settings.mailchimp.model_copy(
            update={"api_key": SecretStr(fake.info["api_key"]), "base_url": fake.info["url"]}
        )
        cpu_ms, wall_ms = cpu_per_batch(settings, args.batch_calls)
        fake.stop()
        print(
            f"one 500-member batch upsert, {args.batch_calls} calls in a row: client CPU {cpu_ms:.1f} ms per call, "
            f"wall {wall_ms:.1f} ms per call ({ms} injected)"
        )


if __name__ == "__main__":
    main()
