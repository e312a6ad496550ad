"""The WebSocket subscribers: one Client per socket through nginx, one Sub
per (client, group) with what it received and when it was subscribed, and
the reconnect logic (the token as first frame, every group again, history
groups with `since`) that the node-loss phase measures."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .common import NOW, log, spawn

if TYPE_CHECKING:
    from .run import Run

@dataclass
class Sub:
    """One (client, group) subscription; intervals when it was in place."""

    group: str
    history: bool
    intervals: list[list[float]] = field(default_factory=list)  # [start, end]
    recv: dict[int, float] = field(default_factory=dict)  # seq -> first receipt
    offs: dict[int, int] = field(default_factory=dict)  # offset -> seq (history)
    conflicts: int = 0
    base: int | None = None  # offset at the first subscribe
    contig: int = 0  # highest offset with all offsets base+1..contig received
    epoch: str | None = None
    last_recv: float = 0.0
    max_gap: dict[str, float] = field(default_factory=dict)  # phase -> longest gap
    replaying: bool = False  # a subscribe with `since` is waiting for its reply
    replayed: int = 0  # offsets first received as a replay

    def active_at(self, t0: float, t1: float) -> bool:
        return any(a <= t0 and (b is None or t1 <= b) for a, b in self.intervals)


class Client:
    def __init__(self, run: "Run", idx: int, token: str) -> None:
        self.run = run
        self.idx = idx
        self.token = token
        self.node = ""
        self.nodes_seen: list[str] = []
        self.subs: dict[str, Sub] = {}
        self.ws = None
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 1
        self.closed_at: float | None = None
        self.back_at: float | None = None  # all groups subscribed after a reconnect
        self.disconnects = 0
        self.close_codes: list[int | None] = []
        self.task: asyncio.Task | None = None
        self.want: list[str] = []  # groups to subscribe to at the start

    async def request(self, frame: dict, timeout: float = 5.0) -> dict:
        rid = self.next_id
        self.next_id += 1
        frame["id"] = rid
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            await self.ws.send(json.dumps(frame))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(rid, None)

    async def open(self) -> None:
        """Connects through nginx, authenticates, starts the reader."""
        ws = await asyncio.wait_for(
            connect(self.run.ws_url, compression=None, ping_interval=None, open_timeout=5,
                    max_queue=None), 6)
        await ws.send(json.dumps({"type": "auth", "token": self.token}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 6))
        if welcome.get("type") != "welcome":
            await ws.close()
            raise RuntimeError(f"no welcome: {welcome.get('type')}")
        self.ws = ws
        self.node = welcome["node"]
        self.nodes_seen.append(self.node)
        self.task = asyncio.create_task(self.reader(ws))

    async def subscribe(self, group: str, since: bool = False) -> dict:
        sub = self.subs.get(group)
        if sub is None:
            sub = self.subs[group] = Sub(group, self.run.is_history(group))
        frame: dict = {"type": "subscribe", "group": group}
        if since and sub.history and sub.epoch is not None:
            frame["since"] = {"offset": sub.contig, "epoch": sub.epoch}
        sub.replaying = "since" in frame
        try:
            reply = await self.request(frame)
        finally:
            sub.replaying = False
        if reply.get("type") != "subscribed":
            raise RuntimeError(f"subscribe {group}: {reply}")
        if sub.history:
            if sub.base is None:
                sub.base = sub.contig = int(reply.get("offset", 0))
            if since and frame.get("since") and not reply.get("recovered"):
                self.run.not_recovered.append((self.idx, group, reply.get("epoch"), sub.epoch))
            sub.epoch = reply.get("epoch", sub.epoch)
            self.advance(sub)
        if not sub.intervals or sub.intervals[-1][1] is not None:
            sub.intervals.append([NOW(), None])
        sub.last_recv = max(sub.last_recv, NOW())
        return reply

    async def unsubscribe(self, group: str) -> None:
        reply = await self.request({"type": "unsubscribe", "group": group})
        if reply.get("type") != "unsubscribed":
            raise RuntimeError(f"unsubscribe {group}: {reply}")
        sub = self.subs[group]
        if sub.intervals and sub.intervals[-1][1] is None:
            sub.intervals[-1][1] = NOW()

    @staticmethod
    def advance(sub: Sub) -> None:
        while sub.contig + 1 in sub.offs:
            sub.contig += 1

    def on_message(self, m: dict, t: float) -> None:
        sub = self.subs.get(m.get("group"))
        data = m.get("data")
        if sub is None or not isinstance(data, dict):
            return
        seq = data.get("s")
        if seq is None:
            return
        if seq not in sub.recv:
            sub.recv[seq] = t
        phase = self.run.phase
        if phase:
            gap = t - sub.last_recv
            if gap > sub.max_gap.get(phase, 0.0):
                sub.max_gap[phase] = gap
        sub.last_recv = t
        off = m.get("offset")
        if sub.history and off is not None:
            prev = sub.offs.get(off)
            if prev is not None and prev != seq:
                sub.conflicts += 1
            else:
                if sub.replaying and prev is None:
                    sub.replayed += 1
                sub.offs[off] = seq
            if m.get("epoch") is not None:
                sub.epoch = m["epoch"]
            self.advance(sub)

    async def reader(self, ws) -> None:
        code = None
        try:
            async for raw in ws:
                t = NOW()
                m = json.loads(raw)
                if m.get("type") == "message":
                    self.on_message(m, t)
                    continue
                fut = self.pending.get(m.get("id"))
                if fut is not None and not fut.done():
                    fut.set_result(m)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
        except Exception as e:  # a bug in here must not go unnoticed
            log(f"client {self.idx}: reader error {e!r}")
        if self.run.stopping:
            return
        # The connection is gone: at-most-once until back.
        t = NOW()
        self.closed_at = t
        self.back_at = None
        self.disconnects += 1
        self.close_codes.append(code)
        for sub in self.subs.values():
            if sub.intervals and sub.intervals[-1][1] is None:
                sub.intervals[-1][1] = t
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))
        spawn(self.reconnect())

    async def reconnect(self) -> None:
        """Back through nginx: the token as first frame, then every group
        again (history groups with `since`)."""
        attempt = 0
        while not self.run.stopping:
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
            attempt += 1
            try:
                await self.open()
                for g in list(self.subs):
                    await self.subscribe(g, since=True)
                self.back_at = NOW()
                return
            except Exception as e:
                if self.ws is not None:
                    try:
                        await self.ws.close()
                    except Exception:
                        pass
                if attempt in (5, 10, 20):
                    log(f"client {self.idx}: reconnect attempt {attempt} failed: {e!r}")
