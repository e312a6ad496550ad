"""The run: its state (state.py) and measurements (analysis.py), plus the
set-up that picks the groups (spread so that every Redis master owns plain
and history groups) and connects and subscribes the clients."""

from __future__ import annotations

import asyncio

from .analysis import Checks
from .clients import Client
from .cluster import cluster_nodes, key_slot, slot_owner
from .common import log


class Run(Checks):
    def pick_groups(self) -> None:
        """Group names spread so that every master owns plain and history
        groups."""
        nodes = cluster_nodes(self.redis_ports[0])
        masters = sorted(n.port for n in nodes if n.master and not n.failed)
        want = {p: [self.args.plain_per_master, self.args.history_per_master] for p in masters}
        i = 0
        while any(a or b for a, b in want.values()):
            for kind, k in (("p", 0), ("h", 1)):
                g = f"fo.{kind}.{i}"
                owner = slot_owner(nodes, key_slot(self.channel(g)))
                if owner in want and want[owner][k] > 0:
                    want[owner][k] -= 1
                    self.groups.append(g)
                    self.group_master[g] = owner
            i += 1
        self.groups.sort(key=lambda g: (g[3], int(g.split(".")[2])))
        for g in self.groups:
            self.pub[g] = []

    async def connect_clients(self) -> None:
        n = min(self.args.sockets, len(self.tokens))
        per_node: dict[str, int] = {}
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                c = Client(self, i, self.tokens[i])
                for attempt in range(5):
                    try:
                        await c.open()
                        break
                    except Exception as e:
                        if attempt == 4:
                            raise RuntimeError(f"client {i}: could not connect: {e!r}")
                        await asyncio.sleep(0.5)
                self.clients.append(c)

        await asyncio.gather(*(one(i) for i in range(n)))
        self.clients.sort(key=lambda c: c.idx)
        # Groups per socket, round robin per node, so each group has members
        # on every node.
        k = self.args.groups_per_socket
        for c in self.clients:
            j = per_node.get(c.node, 0)
            per_node[c.node] = j + 1
            c.want = [self.groups[(j * k + x) % len(self.groups)] for x in range(k)]

        async def subs(c: Client) -> None:
            async with sem:
                for g in c.want:
                    await c.subscribe(g)

        await asyncio.gather(*(subs(c) for c in self.clients))
        log(f"{len(self.clients)} clients subscribed; per node {per_node}")
        self.per_node = per_node
