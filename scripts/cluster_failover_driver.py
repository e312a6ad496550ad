#!/usr/bin/env python3
"""Load and measurements of scripts/cluster-failover.sh (see its header).

Run by that script, which starts the Redis Cluster, PostgreSQL database,
wsgate nodes and nginx and cleans them up; this program only opens
WebSockets through nginx, publishes through nginx's API port, kills and
restarts processes whose PIDs the script wrote under RUN_DIR, and prints a
Markdown report. Exit status: 0 when every correctness check held, 1 when
one failed, 2 on a usage or set-up error.

Needs the repository's virtualenv (scripts/install-python-tools.sh):
websockets and httpx. Tokens and the API key are read from files and never
printed.

This file parses the command line and runs the phases in order; the rest is
the package scripts/failover/ beside it (see its __init__.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

# The package lives beside this file (symlinks resolved), wherever it is run from.
_HERE = os.path.dirname(os.path.realpath(__file__))
if sys.path[:1] != [_HERE]:
    sys.path.insert(0, _HERE)

from failover import report  # noqa: E402
from failover.clients import Client  # noqa: E402
from failover.common import NOW, log  # noqa: E402
from failover.http import RawHttp  # noqa: E402
from failover.phases import PHASES  # noqa: E402
from failover.publisher import lag_monitor, publisher, ready_poller  # noqa: E402
from failover.run import Run  # noqa: E402


def victim_free(c: Client, run: Run) -> bool:
    """A client that was not on a node killed by the node-loss phase."""
    return not (c.nodes_seen and c.nodes_seen[0] in run.dead_nodes)


async def orchestrate(run: Run) -> int:
    """Set-up, background load and probes, the phases in --phases order,
    shut-down, the report. Exit status: 0 when every check held, else 1."""
    run.pick_groups()
    log(f"groups: {len(run.groups)} ({sum(map(run.is_history, run.groups))} history) "
        f"over masters {sorted(set(run.group_master.values()))}")
    run.api = RawHttp(run.args.lb_api, run.api_key, run.args.connections,
                      run.args.publish_timeout)
    run.pg_start = run.pg_stat()
    t_setup = NOW()
    await run.connect_clients()
    run.t_connected = NOW()
    t_conn = NOW() - t_setup
    tasks = [asyncio.create_task(publisher(run)), asyncio.create_task(ready_poller(run)),
             asyncio.create_task(lag_monitor(run))]
    await asyncio.sleep(run.args.warmup)
    report.intro(run, t_conn)
    phases = run.args.phases.split(",")
    try:
        for p in phases:
            t = NOW()
            phase = PHASES.get(p)
            if phase is None:
                raise SystemExit(f"unknown phase {p}")
            await phase(run)
            log(f"phase {p} took {NOW() - t:.1f} s")
            run.phase = ""
            await asyncio.sleep(2.0)
    finally:
        run.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in run.clients:
            if c.ws is not None:
                try:
                    await asyncio.wait_for(c.ws.close(), 1)
                except Exception:
                    pass
    unexpected = sum(c.disconnects for c in run.clients if victim_free(c, run))
    if unexpected:
        run.fail(f"{unexpected} client disconnects outside the node-loss phase")
    report.finish(run, unexpected)
    return 1 if run.failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lb-ws", type=int, required=True)
    ap.add_argument("--lb-api", type=int, required=True)
    ap.add_argument("--api-key-file", required=True)
    ap.add_argument("--tokens-file", required=True)
    ap.add_argument("--nodes", required=True, help="name:metrics_port,... (PIDs in RUN_DIR/name.pid)")
    ap.add_argument("--redis-ports", required=True)
    ap.add_argument("--redis-dir", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--pg-db", required=True)
    ap.add_argument("--node-timeout-ms", type=int, default=1500)
    ap.add_argument("--phases", default="master-loss,node-loss,reshard")
    ap.add_argument("--sockets", type=int, default=240)
    ap.add_argument("--groups-per-socket", type=int, default=2)
    ap.add_argument("--plain-per-master", type=int, default=8)
    ap.add_argument("--history-per-master", type=int, default=2)
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--connections", type=int, default=96, help="keep-alive connections to nginx's API port")
    ap.add_argument("--max-inflight", type=int, default=200, help="publishes waiting for a connection before one is skipped")
    ap.add_argument("--publish-timeout", type=float, default=5.0)
    ap.add_argument("--reshard-slots", type=int, default=1500)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--bound", type=float, default=30.0, help="longest wait for any recovery (s)")
    ap.add_argument("--report")
    ap.add_argument("--dump", action="store_true", help="raw figures of each phase as JSON in the logs dir")
    args = ap.parse_args()
    run = Run(args)
    return asyncio.run(orchestrate(run))


if __name__ == "__main__":
    sys.exit(main())
