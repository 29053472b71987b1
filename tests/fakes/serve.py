"""Run a fake API server in its own process (benchmarks: client and server must not share a GIL).

    python -m tests.fakes.serve mailchimp --latency 0.05

Prints one JSON line (url, credentials) and serves until killed. ``GET /_fake/stats``,
``POST /_fake/reset`` and ``POST /_fake/faults`` control it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.mailchimp import FakeMailchimp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("api", choices=["mailchimp", "hubspot"])
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    if args.api == "mailchimp":
        server = FakeMailchimp().start()
        info = {"url": server.base_url, "api_key": server.api_key, "list_id": server.list_id}
    else:
        server = FakeHubSpot().start()  # type: ignore[assignment]
        info = {"url": server.url, "token": server.token}  # type: ignore[attr-defined]
    server.faults.latency = args.latency
    print(json.dumps(info), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
