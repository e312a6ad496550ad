"""What the phases measure, as methods of the run (Run inherits them): loss
and recovery per group and node from the publish and receive records, raw
dumps, the presence and node-registry watch, /readyz history, PIDs, Redis's
shard subscriptions, auth and PostgreSQL counters, and the `since` recovery
of history subscriptions."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import TYPE_CHECKING

import httpx

from .cluster import cluster_nodes, key_slot, redis_cli, slot_owner
from .common import NOW
from .http import RawHttp
from .procs import proc_alive, proc_start

from .state import State

if TYPE_CHECKING:
    from .clients import Client


class Checks(State):
    """The run's measurements (Run, in run.py, adds the set-up)."""

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
