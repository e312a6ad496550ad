"""The load and the probes that run in the background for the whole run:
the publisher (a fixed rate through nginx's API port, round robin over the
groups, one record per publish), the event loop's lag monitor, and the
/readyz poller of every wsgate node."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import NOW, spawn
from .http import RawHttp

if TYPE_CHECKING:
    from .run import Run

@dataclass
class PubRec:
    t_send: float
    t_done: float = 0.0
    status: int = 0  # HTTP status, 0 = no answer (timeout, connection error)
    offset: int | None = None


async def publisher(run: Run) -> None:
    http = run.api
    interval = 1.0 / run.args.rate
    seqs = {g: 0 for g in run.groups}
    i = 0
    nxt = NOW()

    async def send(g: str, rec: PubRec, body: bytes) -> None:
        try:
            st, data = await http.request("POST", "/api/v1/publish", body)
            rec.status = st
            if st == 200 and run.is_history(g):
                offs = json.loads(data).get("offsets") or [None]
                rec.offset = offs[0]
        except Exception:
            rec.status = 0
        finally:
            rec.t_done = NOW()

    while not run.stopping:
        nxt += interval
        delay = nxt - NOW()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            nxt = NOW()  # the loop was starved: do not burst to catch up
        g = run.groups[i % len(run.groups)]
        i += 1
        if http.waiting >= run.args.max_inflight:
            run.pub_skipped += 1
            continue
        seq = seqs[g]
        seqs[g] += 1
        rec = PubRec(NOW())
        run.pub[g].append(rec)
        body = json.dumps({"group": g, "data": {"g": g, "s": seq}}).encode()
        spawn(send(g, rec, body))

async def lag_monitor(run: Run) -> None:
    """How late the event loop wakes up: receive and answer times are
    only as good as this."""
    while not run.stopping:
        t = NOW()
        await asyncio.sleep(0.05)
        lag = NOW() - t - 0.05
        if run.phase and lag > run.lag.get(run.phase, 0.0):
            run.lag[run.phase] = lag

async def ready_poller(run: Run) -> None:
    clients = {name: RawHttp(n["metrics"], None, 1, 1.0) for name, n in run.nodes.items()}
    while not run.stopping:
        for name in run.nodes:
            if name in run.dead_nodes:
                continue
            st, _ = await clients[name].request("GET", "/readyz")
            lg = run.ready_log[name]
            if not lg or lg[-1][1] != st:
                lg.append((NOW(), st))
        await asyncio.sleep(0.1)
