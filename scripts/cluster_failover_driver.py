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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

NOW = time.monotonic
# Tasks started without awaiting them: the loop keeps only weak references.
TASKS: set[asyncio.Task] = set()


def spawn(coro) -> asyncio.Task:
    t = asyncio.create_task(coro)
    TASKS.add(t)
    t.add_done_callback(TASKS.discard)
    return t


def log(*a: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] driver:", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Redis Cluster helpers


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def key_slot(key: str) -> int:
    k = key.encode()
    s = k.find(b"{")
    if s != -1:
        e = k.find(b"}", s + 1)
        if e > s + 1:
            k = k[s + 1 : e]
    return crc16(k) % 16384


def redis_cli(port: int, *args: str, timeout: float = 5) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.stdout


@dataclass
class RNode:
    id: str
    port: int
    master: bool
    failed: bool
    master_id: str
    slots: list[tuple[int, int]]


def cluster_nodes(port: int) -> list[RNode]:
    nodes = []
    for line in redis_cli(port, "cluster", "nodes").splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        addr = f[1].split("@")[0]
        p = int(addr.rsplit(":", 1)[1]) if ":" in addr and addr.rsplit(":", 1)[1] else 0
        flags = f[2].split(",")
        slots = []
        for s in f[8:]:
            if s.startswith("["):
                continue
            a, _, b = s.partition("-")
            slots.append((int(a), int(b or a)))
        nodes.append(
            RNode(f[0], p, "master" in flags, "fail" in flags or "fail?" in flags, f[3], slots)
        )
    return nodes


def slot_owner(nodes: list[RNode], slot: int) -> int:
    for n in nodes:
        if n.master and not n.failed:
            for a, b in n.slots:
                if a <= slot <= b:
                    return n.port
    return 0


def cluster_ok(port: int) -> bool:
    try:
        return "cluster_state:ok" in redis_cli(port, "cluster", "info", timeout=2)
    except Exception:
        return False


# --------------------------------------------------------------------------
# Processes (only those the script started: PIDs from RUN_DIR)


def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def proc_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(run: str, name: str) -> int:
    with open(os.path.join(run, f"{name}.pid")) as f:
        return int(f.read().strip())


# --------------------------------------------------------------------------
# HTTP: a minimal keep-alive HTTP/1.1 client (httpx costs too much CPU per
# request for a few hundred requests a second on a busy 2-core machine).


class RawHttp:
    def __init__(self, port: int, key: str | None, size: int, timeout: float) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.timeout = timeout
        self.pool: asyncio.LifoQueue = asyncio.LifoQueue()
        for _ in range(size):
            self.pool.put_nowait(None)
        self.waiting = 0

    @staticmethod
    async def _read(r: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        line = await r.readline()
        if not line:
            raise ConnectionError("closed")
        status = int(line.split()[1])
        length, close = 0, False
        while True:
            h = await r.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and v.strip().lower() == "close":
                close = True
        return status, (await r.readexactly(length)) if length else b"", close

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """(status, body); status 0 when there was no answer in time."""
        self.waiting += 1
        try:
            conn = await self.pool.get()
        finally:
            self.waiting -= 1
        try:
            if conn is None:
                conn = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), self.timeout)
            r, w = conn
            w.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.auth}"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status, data, close = await asyncio.wait_for(self._read(r), self.timeout)
            if close:
                w.close()
                conn = None
            return status, data
        except Exception:
            if conn is not None:
                conn[1].close()
            conn = None
            return 0, b""
        finally:
            self.pool.put_nowait(conn)

    async def get_json(self, path: str):
        st, data = await self.request("GET", path)
        return st, (json.loads(data) if st == 200 and data else None)


# --------------------------------------------------------------------------
# Load


@dataclass
class PubRec:
    t_send: float
    t_done: float = 0.0
    status: int = 0  # HTTP status, 0 = no answer (timeout, connection error)
    offset: int | None = None


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


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ws_url = f"ws://127.0.0.1:{args.lb_ws}/ws"
        self.api_url = f"http://127.0.0.1:{args.lb_api}"
        with open(args.api_key_file) as f:
            self.api_key = f.read().strip()
        with open(args.tokens_file) as f:
            self.tokens = [line.strip() for line in f if line.strip()]
        self.nodes: dict[str, dict] = {}  # node id -> {pid, metrics, start}
        for spec in args.nodes.split(","):
            name, metrics = spec.split(":")
            pid = read_pid(args.run_dir, name)
            self.nodes[name] = {"pid": pid, "metrics": int(metrics), "start": proc_start(pid)}
        self.redis_ports = [int(p) for p in args.redis_ports.split(",")]
        self.prefix = args.prefix
        self.groups: list[str] = []
        self.group_master: dict[str, int] = {}
        self.clients: list[Client] = []
        self.pub: dict[str, list[PubRec]] = {}
        self.pub_inflight = 0
        self.pub_skipped = 0
        self.stopping = False
        self.phase = ""
        self.not_recovered: list = []
        self.failures: list[str] = []
        self.report: list[str] = []
        self.ready_log: dict[str, list[tuple[float, int]]] = {n: [] for n in self.nodes}
        self.dead_nodes: set[str] = set()
        self.t_start = NOW()

    def is_history(self, g: str) -> bool:
        return g.startswith("fo.h.")

    def channel(self, g: str) -> str:
        return f"{self.prefix}group:{g}"

    def fail(self, msg: str) -> None:
        log("CHECK FAILED: " + msg)
        self.failures.append(msg)

    def out(self, line: str = "") -> None:
        self.report.append(line)

    # ---------------------------------------------------------------- setup

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

    # ------------------------------------------------------------ background

    async def publisher(self) -> None:
        http = self.api
        interval = 1.0 / self.args.rate
        seqs = {g: 0 for g in self.groups}
        i = 0
        nxt = NOW()

        async def send(g: str, rec: PubRec, body: bytes) -> None:
            try:
                st, data = await http.request("POST", "/api/v1/publish", body)
                rec.status = st
                if st == 200 and self.is_history(g):
                    offs = json.loads(data).get("offsets") or [None]
                    rec.offset = offs[0]
            except Exception:
                rec.status = 0
            finally:
                rec.t_done = NOW()

        while not self.stopping:
            nxt += interval
            delay = nxt - NOW()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                nxt = NOW()  # the loop was starved: do not burst to catch up
            g = self.groups[i % len(self.groups)]
            i += 1
            if http.waiting >= self.args.max_inflight:
                self.pub_skipped += 1
                continue
            seq = seqs[g]
            seqs[g] += 1
            rec = PubRec(NOW())
            self.pub[g].append(rec)
            body = json.dumps({"group": g, "data": {"g": g, "s": seq}}).encode()
            spawn(send(g, rec, body))

    async def lag_monitor(self) -> None:
        """How late the event loop wakes up: receive and answer times are
        only as good as this."""
        while not self.stopping:
            t = NOW()
            await asyncio.sleep(0.05)
            lag = NOW() - t - 0.05
            if self.phase and lag > self.lag.get(self.phase, 0.0):
                self.lag[self.phase] = lag

    async def ready_poller(self) -> None:
        clients = {name: RawHttp(n["metrics"], None, 1, 1.0) for name, n in self.nodes.items()}
        while not self.stopping:
            for name in self.nodes:
                if name in self.dead_nodes:
                    continue
                st, _ = await clients[name].request("GET", "/readyz")
                lg = self.ready_log[name]
                if not lg or lg[-1][1] != st:
                    lg.append((NOW(), st))
            await asyncio.sleep(0.1)

    # --------------------------------------------------------------- checks

    def node_of_pid_ok(self) -> list[str]:
        bad = []
        for name, n in self.nodes.items():
            if name in self.dead_nodes:
                continue
            if not proc_alive(n["pid"]) or proc_start(n["pid"]) != n["start"]:
                bad.append(name)
        return bad

    def unready_since(self, name: str, t0: float) -> tuple[float, float | None]:
        """(seconds not 200 after t0, time back to 200 after the last not-200,
        None if it is not 200 now)."""
        lg = self.ready_log[name]
        down = 0.0
        last_bad_end = None
        state = 200
        t_prev = t0
        for t, st in lg:
            if t <= t0:
                state = st
                continue
            if state != 200:
                down += t - t_prev
                if st == 200:
                    last_bad_end = t
            t_prev = t
            state = st
        if state != 200:
            down += NOW() - t_prev
            return down, None
        return down, (last_bad_end - t0) if last_bad_end else 0.0

    def pg_stat(self) -> tuple[int, int, int]:
        """xact_commit, tup_returned, tup_fetched of the run's database
        (read from the postgres database, so this session is not counted)."""
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-XtAc",
             "SELECT xact_commit, tup_returned, tup_fetched FROM pg_stat_database "
             f"WHERE datname = '{self.args.pg_db}'"],
            capture_output=True, text=True, timeout=10)
        a, b, c = out.stdout.strip().split("|")
        return int(a), int(b), int(c)

    async def wait_ready(self, bound: float) -> list[str]:
        deadline = NOW() + bound
        while True:
            bad = [n for n in self.nodes if n not in self.dead_nodes
                   and (not self.ready_log[n] or self.ready_log[n][-1][1] != 200)]
            if not bad or NOW() > deadline:
                return bad
            await asyncio.sleep(0.2)

    async def recover_history(self) -> tuple[int, int]:
        """Every history subscription resubscribes with `since` (its last
        contiguous offset and epoch), as a client that saw a gap does:
        unsubscribe, then subscribe with since. Returns (subscriptions,
        messages replayed)."""
        before = sum(s.replayed for c in self.clients for s in c.subs.values() if s.history)
        sem = asyncio.Semaphore(16)
        n = 0

        async def one(c: Client, g: str) -> None:
            nonlocal n
            async with sem:
                try:
                    await c.unsubscribe(g)
                    await c.subscribe(g, since=True)
                    n += 1
                except Exception as e:
                    self.fail(f"history resubscribe of client {c.idx} to {g} failed: {e!r}")

        await asyncio.gather(*(one(c, g) for c in self.clients if c.ws is not None
                               for g, s in c.subs.items() if s.history))
        after = sum(s.replayed for c in self.clients for s in c.subs.values() if s.history)
        return n, after - before

    def analyse(self, t0: float, t_from: float, t_to: float, groups_of_interest: set[str],
                phase: str) -> dict:
        """Loss and recovery over publishes sent in [t_from, t_to]."""
        res: dict = {"lost_plain": 0, "lost_plain_deliveries": 0, "lost_history": 0,
                     "history_conflicts": 0, "refused": 0, "acked": 0,
                     "recovery": {}, "never": [], "lost_by_group": {}, "gap_by_group": {},
                     "refused_by_group": {}}
        for g in self.groups:
            recs = [(s, r) for s, r in enumerate(self.pub[g]) if t_from <= r.t_send <= t_to]
            res["refused_by_group"][g] = sum(1 for _, r in recs if r.status != 200)
            res["refused"] += res["refused_by_group"][g]
            acked = [(s, r) for s, r in recs if r.status == 200]
            res["acked"] += len(acked)
            subs = [(c, c.subs[g]) for c in self.clients if g in c.subs]
            lost_msgs: set[int] = set()
            lost_deliv = 0
            by_node_last_loss: dict[str, int] = {}
            for c, s in subs:
                for seq, r in acked:
                    # Expected only where the subscription was in place from
                    # the send to the answer.
                    if not s.active_at(r.t_send, r.t_done):
                        continue
                    if seq not in s.recv:
                        # Missed live (history groups: judged on offsets
                        # below, after the recovery with `since`).
                        by_node_last_loss[c.node] = max(by_node_last_loss.get(c.node, -1), seq)
                        if s.history:
                            continue
                        lost_msgs.add(seq)
                        lost_deliv += 1
                if s.history:
                    res["history_conflicts"] += s.conflicts
                    for seq, r in acked:
                        if r.offset is None or s.base is None or r.offset <= s.base:
                            continue
                        if r.t_send < s.intervals[0][0]:
                            continue
                        if s.offs.get(r.offset) != seq:
                            res["lost_history"] += 1
                gap = s.max_gap.get(phase, 0.0)
                if s.active_at(t0, t_to):
                    gap = max(gap, t_to - max(s.last_recv, t0))  # silent until now
                res["gap_by_group"][g] = max(res["gap_by_group"].get(g, 0.0), gap)
            if not self.is_history(g):
                res["lost_plain"] += len(lost_msgs)
                res["lost_plain_deliveries"] += lost_deliv
                res["lost_by_group"][g] = len(lost_msgs)
            if g not in groups_of_interest:
                continue
            # Recovery per node: the first message sent after t0 (and after
            # the node's last lost one), received by all of that node's
            # subscribers that stayed connected.
            nodes = sorted({c.node for c, _ in subs})
            for node in nodes:
                if node in self.dead_nodes:
                    continue
                ns = [s for c, s in subs if c.node == node and s.active_at(t0, t_to)]
                if not ns:
                    continue
                last_loss = by_node_last_loss.get(node, -1)
                t_rec = None
                for seq, r in acked:
                    if r.t_send < t0 or seq <= last_loss:
                        continue
                    times = [s.recv.get(seq) for s in ns]
                    if all(x is not None for x in times):
                        t_rec = max(times) - t0
                        break
                if t_rec is None:
                    res["never"].append((node, g))
                else:
                    res["recovery"].setdefault(node, {})[g] = t_rec
        return res

    def dump(self, phase: str, t0: float, t_from: float, t_to: float) -> None:
        """Raw figures of a phase for a closer look (logs dir): times are
        seconds from t0."""
        data: dict = {"t_from": t_from - t0, "t_to": t_to - t0, "groups": {}}
        for g in self.groups:
            pubs = [[seq, round(r.t_send - t0, 3), round(r.t_done - t0, 3), r.status, r.offset]
                    for seq, r in enumerate(self.pub[g]) if t_from - 5 <= r.t_send <= t_to + 5]
            subs = []
            for c in self.clients:
                s = c.subs.get(g)
                if s is None:
                    continue
                subs.append({"client": c.idx, "node": c.node, "nodes_seen": c.nodes_seen,
                             "intervals": [[round(a - t0, 3), None if b is None else round(b - t0, 3)]
                                           for a, b in s.intervals],
                             "recv": {seq: round(t - t0, 3) for seq, t in s.recv.items()
                                      if t >= t_from - 5},
                             "contig": s.contig, "epoch": s.epoch})
            data["groups"][g] = {"master": self.group_master.get(g), "pub": pubs, "subs": subs}
        with open(os.path.join(self.args.log_dir, f"data-{phase}.json"), "w") as f:
            json.dump(data, f)

    def start_watch(self, t0: float) -> tuple[dict, asyncio.Event, asyncio.Task]:
        """From t0 on: polls presence of every group (against the live
        subscriptions) and the node registry every 0.5 s, recording when each
        was last seen wrong (seconds after t0)."""
        out = {"presence_wrong_last": None, "presence_ok": False, "presence_polls": 0,
               "registry_wrong_last": None, "registry_ok": False, "wrong_example": ""}
        stop = asyncio.Event()

        async def run() -> None:
            h = RawHttp(self.args.lb_api, self.api_key, 4, 2.0)
            if True:
                while not stop.is_set():
                    t = NOW() - t0
                    expect = {g: 0 for g in self.groups}
                    for c in self.clients:
                        for g, s in c.subs.items():
                            if s.intervals and s.intervals[-1][1] is None:
                                expect[g] += 1
                    ok = True
                    answers = await asyncio.gather(
                        *(h.get_json(f"/api/v1/groups/{g}/presence") for g in self.groups))
                    for g, (st, v) in zip(self.groups, answers):
                        got = v.get("count") if v else None
                        if got != expect[g]:
                            ok = False
                            out["wrong_example"] = f"{g}: {got} != {expect[g]}"
                            break
                    out["presence_polls"] += 1
                    if not ok:
                        out["presence_wrong_last"] = t
                    out["presence_ok"] = ok
                    want = set(self.nodes) - self.dead_nodes
                    st, v = await h.get_json("/api/v1/cluster")
                    got_nodes = {n["node"] for n in (v or {}).get("nodes", [])}
                    out["registry_ok"] = got_nodes == want
                    if got_nodes != want:
                        out["registry_wrong_last"] = t
                    try:
                        await asyncio.wait_for(stop.wait(), 0.5)
                    except asyncio.TimeoutError:
                        pass

        return out, stop, asyncio.create_task(run())

    async def finish_watch(self, w: tuple, t0: float, bound: float) -> dict:
        """Waits (at most until t0 + bound) for presence and registry to be
        right, then stops the watcher."""
        out, stop, task = w
        deadline = t0 + bound
        while NOW() < deadline and not (out["presence_ok"] and out["registry_ok"]):
            await asyncio.sleep(0.25)
        stop.set()
        await task
        if not out["presence_ok"]:
            self.fail(f"presence still wrong {bound:.0f} s after the {self.phase} ({out['wrong_example']})")
        if not out["registry_ok"]:
            self.fail(f"node registry still wrong {bound:.0f} s after the {self.phase}")
        return out

    def watch_text(self, w: dict) -> str:
        p = ("never wrong" if w["presence_wrong_last"] is None
             else f"last wrong {w['presence_wrong_last']:.2f} s after")
        r = ("never wrong" if w["registry_wrong_last"] is None
             else f"last wrong {w['registry_wrong_last']:.2f} s after")
        return (f"presence of every group (polled every 0.5 s, {w['presence_polls']} polls): {p}, "
                f"right at the end: {'yes' if w['presence_ok'] else 'NO (' + w['wrong_example'] + ')'}; "
                f"node registry: {r}, right at the end: {'yes' if w['registry_ok'] else 'NO'}")

    # ---------------------------------------------------------------- phases

    async def settle(self, secs: float) -> None:
        await asyncio.sleep(secs)

    def write_pid(self, name: str, pid: int) -> None:
        with open(os.path.join(self.args.run_dir, f"{name}.pid"), "w") as f:
            f.write(str(pid))

    def start_redis(self, port: int) -> int:
        d = os.path.join(self.args.redis_dir, str(port))
        logf = open(os.path.join(self.args.log_dir, f"redis-{port}.log"), "a")
        p = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", d, "--cluster-enabled", "yes",
             "--cluster-config-file", os.path.join(d, "nodes.conf"),
             "--cluster-node-timeout", str(self.args.node_timeout_ms)],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        self.write_pid(f"redis-{port}", p.pid)
        return p.pid

    def kill_owned(self, name: str, must_contain: str) -> int:
        pid = read_pid(self.args.run_dir, name)
        cmd = proc_cmdline(pid)
        if must_contain not in cmd:
            raise RuntimeError(f"pid {pid} of {name} is not ours ({cmd[:60]!r})")
        os.kill(pid, signal.SIGKILL)
        return pid

    async def wait_delivering(self, t0: float, t_from: float, groups: set[str],
                              min_secs: float) -> None:
        """Waits (at most until t0 + bound) until every group of `groups`
        delivers again on every node, and at least min_secs after t0."""
        deadline = t0 + self.args.bound
        live = [n for n in self.nodes if n not in self.dead_nodes]
        while NOW() < deadline:
            await asyncio.sleep(1.0)
            r = self.analyse(t0, t_from, NOW() - 1.5, groups, self.phase)
            done = sum(len(v) for v in r["recovery"].values())
            if done >= len(groups) * len(live) and NOW() - t0 > min_secs:
                return

    def shard_subscribers(self, groups: set[str], port: int | None = None) -> dict[str, int]:
        """PUBSUB SHARDNUMSUB of each group's channel on `port`, or else on
        the master that owns its slot now: how many nodes' subscriptions
        Redis holds there."""
        nodes = cluster_nodes(self.redis_ports[0])
        out = {}
        for g in sorted(groups):
            ch = self.channel(g)
            lines = redis_cli(port or slot_owner(nodes, key_slot(ch)), "pubsub", "shardnumsub", ch).split()
            out[g] = int(lines[1]) if len(lines) == 2 else -1
        return out

    async def phase_master_loss(self) -> None:
        self.phase = "master-loss"
        self.not_recovered.clear()
        seed = self.redis_ports[0]
        nodes = cluster_nodes(seed)
        masters = sorted(n.port for n in nodes if n.master and not n.failed)
        victim = next((p for p in masters if p != seed), masters[0])
        vid = next(n.id for n in nodes if n.port == victim)
        replica = next((n.port for n in nodes if n.master_id == vid), None)
        affected = {g for g, m in self.group_master.items() if m == victim}
        alive_port = next(p for p in masters if p != victim)
        log(f"master-loss: SIGKILL redis {victim} (replica {replica}); groups on it: {len(affected)}")
        skipped0 = self.pub_skipped
        t_from = NOW() - 2.0
        t0 = NOW()
        self.kill_owned(f"redis-{victim}", f":{victim}")
        watch = self.start_watch(t0)
        # Redis's side: the replica takes over.
        t_failover = None
        deadline = t0 + self.args.bound
        while NOW() < deadline:
            ns = cluster_nodes(alive_port)
            if replica and any(n.port == replica and n.master for n in ns) and cluster_ok(alive_port):
                t_failover = NOW() - t0
                break
            await asyncio.sleep(0.1)
        if t_failover is None:
            self.fail(f"Redis did not fail over in {self.args.bound:.0f} s")
        else:
            log(f"master-loss: replica {replica} promoted after {t_failover:.2f} s")
        for g in affected:
            self.group_master[g] = replica or 0
        await self.wait_delivering(t0, t_from, affected, 5.0)
        await self.settle(3.0)
        t_to = NOW() - 2.0
        ready = await self.wait_ready(max(1.0, t0 + self.args.bound - NOW()))
        for n in ready:
            self.fail(f"{n}: /readyz not 200 {self.args.bound:.0f} s after the master loss")
        w = await self.finish_watch(watch, t0, self.args.bound)
        res = self.analyse(t0, t_from, t_to, affected, self.phase)
        if self.args.dump:
            self.dump(self.phase, t0, t_from, t_to)
        n_hist, replayed = await self.recover_history()
        res2 = self.analyse(t0, t_from, t_to, set(), self.phase)
        res["lost_history"], res["history_conflicts"] = res2["lost_history"], res2["history_conflicts"]
        bad_pids = self.node_of_pid_ok()
        for n in bad_pids:
            self.fail(f"{n}: wsgate process restarted or died during the master loss")
        for node, g in res["never"]:
            self.fail(f"{g} never delivered again on {node} after the master loss")
        o = self.out
        o("### Redis master loss")
        o()
        o(f"SIGKILL of the master on :{victim} under publish load; its replica :{replica} "
          f"took over after **{fmt(t_failover)}** (Redis's view: promoted and `cluster_state:ok`, "
          f"cluster-node-timeout {self.args.node_timeout_ms} ms). "
          f"Groups on its slots: {len(affected)} of {len(self.groups)} "
          f"({sum(1 for g in affected if self.is_history(g))} with history).")
        o()
        o("| node | affected groups delivering again after the kill (max / median) | "
          "`/readyz` not 200 for | `/readyz` 200 again after | same PID |")
        o("|---|---|---|---|---|")
        for node in sorted(self.nodes):
            vals = list(res["recovery"].get(node, {}).values())
            down, back = self.unready_since(node, t0)
            o(f"| {node} | {fmt(max(vals) if vals else None)} / "
              f"{fmt(statistics.median(vals) if vals else None)} ({len(vals)} of {len(affected)} groups) | "
              f"{down:.2f} s | {fmt(back)} | {'yes' if node not in bad_pids else '**no**'} |")
        o()
        ref_aff = sum(v for g, v in res["refused_by_group"].items() if g in affected)
        gap_other = [v for g, v in res["gap_by_group"].items() if g not in affected]
        gap_aff = [v for g, v in res["gap_by_group"].items() if g in affected]
        o(f"- Publishes in the window ({t_to - t_from:.0f} s): {res['acked']} answered 200, "
          f"{res['refused']} refused (503 or no answer: the publisher knows they were not "
          f"delivered): {ref_aff} to the {len(affected)} groups on the lost master, "
          f"**{res['refused'] - ref_aff} to the {len(self.groups) - len(affected)} groups on the "
          f"healthy masters**; {self.pub_skipped - skipped0} not sent (too many in flight).")
        o(f"- Longest gap between two messages on one subscription: "
          f"{fmt(max(gap_aff) if gap_aff else None)} for the groups on the lost master, "
          f"{fmt(max(gap_other) if gap_other else None)} for the others.")
        o(f"- Plain groups (at most once): **{res['lost_plain']}** acknowledged messages missed by "
          f"at least one subscriber ({res['lost_plain_deliveries']} deliveries).")
        o(f"- History groups, after every history subscription resubscribed with `since` "
          f"({n_hist} subscriptions, {replayed} messages replayed that had not arrived live): "
          f"**{res['lost_history']}** acknowledged messages missing, "
          f"{res['history_conflicts']} offset conflicts, {len(self.not_recovered)} `recovered: false`.")
        o(f"- From the kill: {self.watch_text(w)}.")
        o()
        if res["lost_history"] or res["history_conflicts"] or self.not_recovered:
            self.fail(f"history: {res['lost_history']} lost, {res['history_conflicts']} conflicts, "
                      f"{len(self.not_recovered)} not recovered after the master loss")
        self.results["master-loss"] = res
        # Bring the old master back: it rejoins as a replica.
        pid = self.start_redis(victim)
        deadline = NOW() + 30
        while NOW() < deadline:
            ns = cluster_nodes(alive_port)
            me = next((n for n in ns if n.port == victim), None)
            if (me and not me.master and not me.failed and cluster_ok(victim)
                    and "master_link_status:up" in redis_cli(victim, "info", "replication")):
                break
            await asyncio.sleep(0.2)
        else:
            self.fail(f"restarted redis {victim} (pid {pid}) did not rejoin as a replica in 30 s")
        log(f"master-loss: redis {victim} back as a replica")

    async def phase_reshard(self) -> None:
        self.phase = "reshard"
        self.not_recovered.clear()
        seed = self.redis_ports[0]
        nodes = cluster_nodes(seed)
        masters = sorted((n for n in nodes if n.master and not n.failed), key=lambda n: n.port)
        src, dst = masters[0], masters[1]
        log(f"reshard: {self.args.reshard_slots} slots :{src.port} -> :{dst.port}")
        before = self.shard_subscribers({g for g, m in self.group_master.items() if m == src.port})
        for c in self.clients:
            for s in c.subs.values():
                s.max_gap.pop("reshard", None)
        skipped0 = self.pub_skipped
        t_from = NOW()
        await asyncio.sleep(1.0)
        t0 = NOW()
        watch = self.start_watch(t0)
        proc = await asyncio.create_subprocess_exec(
            "timeout", "60", "redis-cli", "--cluster", "reshard",
            f"127.0.0.1:{seed}", "--cluster-from", src.id, "--cluster-to", dst.id,
            "--cluster-slots", str(self.args.reshard_slots), "--cluster-yes",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        with open(os.path.join(self.args.log_dir, "reshard.log"), "wb") as f:
            f.write(out)
        t_move = NOW() - t0
        if proc.returncode != 0:
            self.fail(f"redis-cli --cluster reshard exited {proc.returncode} (see reshard.log)")
        log(f"reshard: redis-cli done in {t_move:.2f} s (exit {proc.returncode})")
        after = cluster_nodes(seed)
        moved = {g for g in self.groups
                 if self.group_master.get(g) == src.port
                 and slot_owner(after, key_slot(self.channel(g))) == dst.port}
        for g in moved:
            self.group_master[g] = dst.port
        shard_subs = self.shard_subscribers(moved)
        shard_old = self.shard_subscribers(moved, src.port)
        log(f"reshard: moved groups {sorted(moved)}; PUBSUB SHARDNUMSUB before the move {before}, "
            f"after it on the new owner {shard_subs}, on the old one {shard_old}")
        await self.wait_delivering(t0, t_from, set(self.groups), t_move + 4.0)
        t_to = NOW() - 2.0
        res = self.analyse(t0, t_from, t_to, set(self.groups), self.phase)
        shard_subs_end = self.shard_subscribers(moved)
        if self.args.dump:
            self.dump(self.phase, t0, t_from, t_to)
        ready = await self.wait_ready(max(1.0, t0 + self.args.bound - NOW()))
        for n in ready:
            self.fail(f"{n}: /readyz not 200 after the resharding")
        w = await self.finish_watch(watch, t0, self.args.bound)
        n_hist, replayed = await self.recover_history()
        res2 = self.analyse(t0, t_from, t_to, set(), self.phase)
        res["lost_history"], res["history_conflicts"] = res2["lost_history"], res2["history_conflicts"]
        bad_pids = self.node_of_pid_ok()
        for n in bad_pids:
            self.fail(f"{n}: wsgate process restarted or died during the resharding")
        for node, g in res["never"]:
            self.fail(f"{g} did not deliver again on {node} within {self.args.bound:.0f} s of the "
                      f"resharding")
        live = len(self.nodes) - len(self.dead_nodes)
        o = self.out
        o("### Resharding under load")
        o()
        o(f"`redis-cli --cluster reshard` of {self.args.reshard_slots} slots from :{src.port} to "
          f":{dst.port} while publishing ({live} wsgate nodes): the move took **{t_move:.2f} s**; "
          f"{len(moved)} groups changed master ({', '.join(sorted(moved)) or 'none'}).")
        o()
        o("| group | longest gap on a subscription | plain messages lost | nodes delivering at the end | "
          "`PUBSUB SHARDNUMSUB`: old owner before / old owner after / new owner after / new owner at the end |")
        o("|---|---|---|---|---|")
        never_by_g: dict[str, int] = {}
        for node, g in res["never"]:
            never_by_g[g] = never_by_g.get(g, 0) + 1
        for g in sorted(moved):
            o(f"| {g} (moved) | {fmt(res['gap_by_group'].get(g))} | "
              f"{res['lost_by_group'].get(g, '(history)') } | {live - never_by_g.get(g, 0)} of {live} | "
              f"{before.get(g)} / {shard_old.get(g)} / {shard_subs.get(g)} / {shard_subs_end.get(g)} |")
        others = [g for g in self.groups if g not in moved]
        og = [res["gap_by_group"].get(g, 0.0) for g in others]
        ol = sum(res["lost_by_group"].get(g, 0) for g in others)
        on = sum(never_by_g.get(g, 0) for g in others)
        o(f"| the {len(others)} other groups | max {fmt(max(og) if og else None)} | {ol} | "
          f"{'all' if not on else str(on) + ' (group, node) pairs silent'} | - |")
        o()
        o(f"- Window {t_to - t_from:.0f} s: {res['acked']} publishes answered 200, {res['refused']} "
          f"refused, {self.pub_skipped - skipped0} not sent (too many in flight).")
        o(f"- History groups after resubscribing with `since` ({n_hist} subscriptions, "
          f"{replayed} replayed that had not arrived live): **{res['lost_history']}** missing, "
          f"{res['history_conflicts']} conflicts, {len(self.not_recovered)} `recovered: false`.")
        o(f"- From the start of the move: {self.watch_text(w)}; same PIDs: "
          f"{'yes' if not bad_pids else 'NO ' + str(bad_pids)}.")
        o()
        if res["lost_history"] or res["history_conflicts"] or self.not_recovered:
            self.fail(f"history: {res['lost_history']} lost, {res['history_conflicts']} conflicts, "
                      f"{len(self.not_recovered)} not recovered after the resharding")
        self.results["reshard"] = res

    async def auth_counts(self, nodes: list[str]) -> dict[str, float]:
        """wsgate_auth_cache_requests_total by result, and
        wsgate_auth_duration_seconds_count by source, summed over nodes."""
        out: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=2.0) as h:
            for node in nodes:
                r = await h.get(f"http://127.0.0.1:{self.nodes[node]['metrics']}/metrics")
                for line in r.text.splitlines():
                    for metric, label in (("wsgate_auth_cache_requests_total{", "result"),
                                          ("wsgate_auth_duration_seconds_count{", "source")):
                        if line.startswith(metric) and f'{label}="' in line:
                            v = line.split(f'{label}="', 1)[1].split('"', 1)[0]
                            k = f"{label}={v}"
                            out[k] = out.get(k, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    async def phase_node_loss(self) -> None:
        self.phase = "node-loss"
        self.not_recovered.clear()
        victim = sorted(self.nodes)[1]
        survivors = [n for n in sorted(self.nodes) if n != victim and n not in self.dead_nodes]
        mine = [c for c in self.clients if c.node == victim]
        # pg_stat_database lags up to 10 s behind idle backends: let the
        # first connections' lookups land before the baseline.
        await asyncio.sleep(max(1.0, 11.5 - (NOW() - self.t_connected)))
        log(f"node-loss: SIGKILL {victim} ({len(mine)} clients on it)")
        x0, r0, f0 = self.pg_stat()
        a0 = await self.auth_counts(survivors)
        aall = await self.auth_counts([n for n in sorted(self.nodes) if n not in self.dead_nodes])
        skipped0 = self.pub_skipped
        t_from = NOW() - 2.0
        t0 = NOW()
        self.kill_owned(victim, "wsgate")
        self.dead_nodes.add(victim)
        watch = self.start_watch(t0)
        deadline = t0 + self.args.bound
        while NOW() < deadline and not all(c.back_at for c in mine):
            await asyncio.sleep(0.1)
        back = [c.back_at - t0 for c in mine if c.back_at]
        if len(back) < len(mine):
            self.fail(f"{len(mine) - len(back)} of {len(mine)} clients not back in {self.args.bound:.0f} s")
        # Receiving: a message sent after each resubscribe, on every group.
        recv_after: list[float] = []
        missing = 0
        deadline2 = NOW() + 10
        while True:
            recv_after, missing = [], 0
            for c in mine:
                for g, s in c.subs.items():
                    start = s.intervals[-1][0] if s.intervals else None
                    ts = [t for seq, t in s.recv.items()
                          if start and self.pub[g][seq].t_send > start]
                    if ts:
                        recv_after.append(min(ts) - t0)
                    else:
                        missing += 1
            if not missing or NOW() > deadline2:
                break
            await asyncio.sleep(0.5)
        if missing:
            self.fail(f"{missing} reconnected subscriptions received nothing within 10 s")
        await self.settle(3.0)
        t_to = NOW() - 2.0
        w = await self.finish_watch(watch, t0, self.args.bound)
        res = self.analyse(t0, t_from, t_to, set(), self.phase)
        if self.args.dump:
            self.dump(self.phase, t0, t_from, t_to)
        n_hist, replayed = await self.recover_history()
        res2 = self.analyse(t0, t_from, t_to, set(), self.phase)
        res["lost_history"], res["history_conflicts"] = res2["lost_history"], res2["history_conflicts"]
        a1 = await self.auth_counts(survivors)
        da = {k: a1.get(k, 0.0) - a0.get(k, 0.0) for k in sorted(set(a0) | set(a1))}
        # pg_stat_database is flushed by backends at most once a second and
        # up to 10 s late when idle: wait that out before reading it.
        wait = 11.5 - (NOW() - max([c.back_at for c in mine if c.back_at] or [t0]))
        if wait > 0:
            await asyncio.sleep(wait)
        x1, r1, f1 = self.pg_stat()
        bad_pids = self.node_of_pid_ok()
        for n in bad_pids:
            self.fail(f"{n}: surviving wsgate process restarted or died during the node loss")
        survivors_lost = 0
        for c in self.clients:
            if c in mine:
                continue
            for g, s in c.subs.items():
                if s.history:
                    continue
                for seq, r in enumerate(self.pub[g]):
                    if (t_from <= r.t_send <= t_to and r.status == 200
                            and s.active_at(r.t_send, r.t_done) and seq not in s.recv):
                        survivors_lost += 1
        if survivors_lost:
            self.fail(f"{survivors_lost} deliveries lost on the surviving nodes during the node loss")
        codes: dict = {}
        for c in mine:
            for code in c.close_codes[-1:]:
                codes[code] = codes.get(code, 0) + 1
        dist: dict[str, int] = {}
        for c in mine:
            dist[c.node] = dist.get(c.node, 0) + 1
        misses = da.get("result=miss", 0.0)
        total = sum(v for k, v in da.items() if k.startswith("result="))
        o = self.out
        o("### wsgate node loss")
        o()
        o(f"SIGKILL of {victim} with {len(mine)} of {len(self.clients)} clients on it; they reconnect "
          f"through nginx (first retry after 50-150 ms, doubling, capped at 2 s), send the token as "
          f"first frame and resubscribe (history groups with `since`). Close codes seen: "
          f"{', '.join(f'{k if k is not None else NO_CODE}: {v}' for k, v in codes.items())}. "
          f"They landed on {', '.join(f'{k}: {v}' for k, v in sorted(dist.items()))}.")
        o()
        o("| | value |")
        o("|---|---|")
        o(f"| clients back (welcome + every group subscribed), after the kill: max / median | "
          f"{fmt(max(back) if back else None)} / {fmt(statistics.median(back) if back else None)} |")
        o(f"| receiving again (first message sent after the resubscribe, per subscription): max / median | "
          f"{fmt(max(recv_after) if recv_after else None)} / "
          f"{fmt(statistics.median(recv_after) if recv_after else None)} |")
        o(f"| authentications on the surviving nodes (`wsgate_auth_cache_requests_total` deltas) | "
          f"{total:.0f}: " + ", ".join(f"{k} {v:.0f}" for k, v in da.items() if v) +
          f"; **{misses:.0f} token-store (PostgreSQL) lookups** |")
        o(f"| PostgreSQL `pg_stat_database` deltas of the run's database (kill to +{NOW() - t0:.0f} s) | "
          f"xact_commit {x1 - x0}, tup_returned {r1 - r0}, tup_fetched {f1 - f0} |")
        xs, rs, fs = self.pg_start
        o(f"| for comparison, from before the first connection of the {len(self.clients)} clients "
          f"(cold cache) to the kill | {aall.get('result=miss', 0):.0f} store lookups; xact_commit "
          f"{x0 - xs}, tup_returned {r0 - rs}, tup_fetched {f0 - fs} |")
        o(f"| plain-group messages missed by the reconnecting clients (at most once) | "
          f"{res['lost_plain']} messages, {res['lost_plain_deliveries']} deliveries |")
        o(f"| deliveries lost on the surviving nodes | {survivors_lost} |")
        o(f"| history groups after `since` ({n_hist} subscriptions, {replayed} replayed that had "
          f"not arrived live) | {res['lost_history']} missing, {res['history_conflicts']} conflicts, "
          f"{len(self.not_recovered)} `recovered: false` |")
        o(f"| publishes in the window ({t_to - t_from:.0f} s) | {res['acked']} answered 200, "
          f"{res['refused']} refused, {self.pub_skipped - skipped0} not sent |")
        o()
        o(f"- From the kill: {self.watch_text(w)} (the dead node's entry and presence expire "
          f"after `redis.node_ttl`, 4 s here).")
        o()
        if res["lost_history"] or res["history_conflicts"] or self.not_recovered:
            self.fail(f"history: {res['lost_history']} lost, {res['history_conflicts']} conflicts, "
                      f"{len(self.not_recovered)} not recovered after the node loss")
        self.results["node-loss"] = res

    async def main(self) -> int:
        self.results: dict = {}
        self.lag: dict[str, float] = {}
        self.pick_groups()
        log(f"groups: {len(self.groups)} ({sum(map(self.is_history, self.groups))} history) "
            f"over masters {sorted(set(self.group_master.values()))}")
        self.api = RawHttp(self.args.lb_api, self.api_key, self.args.connections,
                           self.args.publish_timeout)
        self.pg_start = self.pg_stat()
        t_setup = NOW()
        await self.connect_clients()
        self.t_connected = NOW()
        t_conn = NOW() - t_setup
        tasks = [asyncio.create_task(self.publisher()), asyncio.create_task(self.ready_poller()),
                 asyncio.create_task(self.lag_monitor())]
        await asyncio.sleep(self.args.warmup)
        self.out(f"{len(self.clients)} WebSockets through nginx ({', '.join(f'{k}: {v}' for k, v in sorted(self.per_node.items()))}), "
                 f"{len(self.groups)} groups ({sum(map(self.is_history, self.groups))} with history) "
                 f"spread over the masters, {self.args.groups_per_socket} groups a socket, "
                 f"{self.args.rate:.0f} publishes/s through the API (one message a request, "
                 f"round robin over the groups); set-up of the clients took {t_conn:.1f} s.")
        self.out()
        phases = self.args.phases.split(",")
        try:
            for p in phases:
                t = NOW()
                if p == "master-loss":
                    await self.phase_master_loss()
                elif p == "reshard":
                    await self.phase_reshard()
                elif p == "node-loss":
                    await self.phase_node_loss()
                else:
                    raise SystemExit(f"unknown phase {p}")
                log(f"phase {p} took {NOW() - t:.1f} s")
                self.phase = ""
                await asyncio.sleep(2.0)
        finally:
            self.stopping = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in self.clients:
                if c.ws is not None:
                    try:
                        await asyncio.wait_for(c.ws.close(), 1)
                    except Exception:
                        pass
        unexpected = sum(c.disconnects for c in self.clients if victim_free(c, self))
        self.out(f"Publisher: {self.pub_skipped} publishes not sent in all because "
                 f"{self.args.max_inflight} were in flight. Unexpected client disconnects "
                 f"(outside the node loss): {unexpected}.")
        if unexpected:
            self.fail(f"{unexpected} client disconnects outside the node-loss phase")
        self.out()
        self.out("Driver's event loop, longest wake-up delay per phase (times above are only as "
                 "precise as this): " + ", ".join(f"{k} {v:.2f} s" for k, v in self.lag.items()) + ".")
        self.out()
        if self.failures:
            self.out("**Checks failed:**")
            self.out()
            for f in self.failures:
                self.out(f"- {f}")
        else:
            self.out("**All checks passed.**")
        print("\n".join(self.report))
        if self.args.report:
            with open(self.args.report, "w") as f:
                f.write("\n".join(self.report) + "\n")
        return 1 if self.failures else 0


def victim_free(c: Client, run: Run) -> bool:
    """A client that was not on a node killed by the node-loss phase."""
    return not (c.nodes_seen and c.nodes_seen[0] in run.dead_nodes)


NO_CODE = "none (connection dropped, 1006)"


def fmt(v: float | None) -> str:
    if v is None:
        return "**never**"
    return f"{v:.2f} s"


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
    return asyncio.run(run.main())


if __name__ == "__main__":
    sys.exit(main())
