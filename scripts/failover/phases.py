"""The failure phases, each a function of the run: do the damage under load
(SIGKILL of a Redis master, a resharding, SIGKILL of a wsgate node), wait
for recovery within --bound, check what must hold (run.fail) and hand the
measurements to report.py. PHASES maps the names --phases accepts."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from . import report
from .cluster import cluster_nodes, cluster_ok, key_slot, redis_cli, slot_owner, start_redis
from .common import NOW, log
from .procs import kill_owned

if TYPE_CHECKING:
    from .run import Run


async def recover_history(run: Run, res: dict, t0: float, t_from: float, t_to: float):
    """Resubscribes every history subscription with `since`, then adds to
    `res` what history still lost; returns (subscriptions, replayed)."""
    n_hist, replayed = await run.recover_history()
    again = run.analyse(t0, t_from, t_to, set(), run.phase)
    res["lost_history"], res["history_conflicts"] = again["lost_history"], again["history_conflicts"]
    return n_hist, replayed


def check_pids(run: Run, what: str, during: str) -> list:
    """Fails the run for every node whose process restarted or died."""
    bad_pids = run.node_of_pid_ok()
    for n in bad_pids:
        run.fail(f"{n}: {what} restarted or died during {during}")
    return bad_pids


def check_history(run: Run, res: dict, after: str) -> None:
    """Fails the run if a history group lost or doubled a message."""
    if res["lost_history"] or res["history_conflicts"] or run.not_recovered:
        run.fail(f"history: {res['lost_history']} lost, {res['history_conflicts']} conflicts, "
                 f"{len(run.not_recovered)} not recovered after {after}")


async def master_loss(run: Run) -> None:
    run.phase = "master-loss"
    run.not_recovered.clear()
    seed = run.redis_ports[0]
    nodes = cluster_nodes(seed)
    masters = sorted(n.port for n in nodes if n.master and not n.failed)
    victim = next((p for p in masters if p != seed), masters[0])
    vid = next(n.id for n in nodes if n.port == victim)
    replica = next((n.port for n in nodes if n.master_id == vid), None)
    affected = {g for g, m in run.group_master.items() if m == victim}
    alive_port = next(p for p in masters if p != victim)
    log(f"master-loss: SIGKILL redis {victim} (replica {replica}); groups on it: {len(affected)}")
    skipped0 = run.pub_skipped
    t_from = NOW() - 2.0
    t0 = NOW()
    kill_owned(run.args.run_dir, f"redis-{victim}", f":{victim}")
    watch = run.start_watch(t0)
    # Redis's side: the replica takes over.
    t_failover = None
    deadline = t0 + run.args.bound
    while NOW() < deadline:
        ns = cluster_nodes(alive_port)
        if replica and any(n.port == replica and n.master for n in ns) and cluster_ok(alive_port):
            t_failover = NOW() - t0
            break
        await asyncio.sleep(0.1)
    if t_failover is None:
        run.fail(f"Redis did not fail over in {run.args.bound:.0f} s")
    else:
        log(f"master-loss: replica {replica} promoted after {t_failover:.2f} s")
    for g in affected:
        run.group_master[g] = replica or 0
    await run.wait_delivering(t0, t_from, affected, 5.0)
    await asyncio.sleep(3.0)
    t_to = NOW() - 2.0
    ready = await run.wait_ready(max(1.0, t0 + run.args.bound - NOW()))
    for n in ready:
        run.fail(f"{n}: /readyz not 200 {run.args.bound:.0f} s after the master loss")
    w = await run.finish_watch(watch, t0, run.args.bound)
    res = run.analyse(t0, t_from, t_to, affected, run.phase)
    if run.args.dump:
        run.dump(run.phase, t0, t_from, t_to)
    n_hist, replayed = await recover_history(run, res, t0, t_from, t_to)
    bad_pids = check_pids(run, "wsgate process", "the master loss")
    for node, g in res["never"]:
        run.fail(f"{g} never delivered again on {node} after the master loss")
    report.master_loss(
        run, t0=t0, victim=victim, replica=replica, affected=affected, n_hist=n_hist,
        replayed=replayed, t_failover=t_failover, t_to=t_to, t_from=t_from, res=res,
        skipped0=skipped0, w=w, bad_pids=bad_pids)
    check_history(run, res, "the master loss")
    run.results["master-loss"] = res
    # Bring the old master back: it rejoins as a replica.
    pid = start_redis(run.args, victim)
    deadline = NOW() + 30
    while NOW() < deadline:
        ns = cluster_nodes(alive_port)
        me = next((n for n in ns if n.port == victim), None)
        if (me and not me.master and not me.failed and cluster_ok(victim)
                and "master_link_status:up" in redis_cli(victim, "info", "replication")):
            break
        await asyncio.sleep(0.2)
    else:
        run.fail(f"restarted redis {victim} (pid {pid}) did not rejoin as a replica in 30 s")
    log(f"master-loss: redis {victim} back as a replica")


async def reshard(run: Run) -> None:
    run.phase = "reshard"
    run.not_recovered.clear()
    seed = run.redis_ports[0]
    nodes = cluster_nodes(seed)
    masters = sorted((n for n in nodes if n.master and not n.failed), key=lambda n: n.port)
    src, dst = masters[0], masters[1]
    log(f"reshard: {run.args.reshard_slots} slots :{src.port} -> :{dst.port}")
    before = run.shard_subscribers({g for g, m in run.group_master.items() if m == src.port})
    for c in run.clients:
        for s in c.subs.values():
            s.max_gap.pop("reshard", None)
    skipped0 = run.pub_skipped
    t_from = NOW()
    await asyncio.sleep(1.0)
    t0 = NOW()
    watch = run.start_watch(t0)
    proc = await asyncio.create_subprocess_exec(
        "timeout", "60", "redis-cli", "--cluster", "reshard",
        f"127.0.0.1:{seed}", "--cluster-from", src.id, "--cluster-to", dst.id,
        "--cluster-slots", str(run.args.reshard_slots), "--cluster-yes",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    with open(os.path.join(run.args.log_dir, "reshard.log"), "wb") as f:
        f.write(out)
    t_move = NOW() - t0
    if proc.returncode != 0:
        run.fail(f"redis-cli --cluster reshard exited {proc.returncode} (see reshard.log)")
    log(f"reshard: redis-cli done in {t_move:.2f} s (exit {proc.returncode})")
    after = cluster_nodes(seed)
    moved = {g for g in run.groups
             if run.group_master.get(g) == src.port
             and slot_owner(after, key_slot(run.channel(g))) == dst.port}
    for g in moved:
        run.group_master[g] = dst.port
    shard_subs = run.shard_subscribers(moved)
    shard_old = run.shard_subscribers(moved, src.port)
    log(f"reshard: moved groups {sorted(moved)}; PUBSUB SHARDNUMSUB before the move {before}, "
        f"after it on the new owner {shard_subs}, on the old one {shard_old}")
    await run.wait_delivering(t0, t_from, set(run.groups), t_move + 4.0)
    t_to = NOW() - 2.0
    res = run.analyse(t0, t_from, t_to, set(run.groups), run.phase)
    shard_subs_end = run.shard_subscribers(moved)
    if run.args.dump:
        run.dump(run.phase, t0, t_from, t_to)
    ready = await run.wait_ready(max(1.0, t0 + run.args.bound - NOW()))
    for n in ready:
        run.fail(f"{n}: /readyz not 200 after the resharding")
    w = await run.finish_watch(watch, t0, run.args.bound)
    n_hist, replayed = await recover_history(run, res, t0, t_from, t_to)
    bad_pids = check_pids(run, "wsgate process", "the resharding")
    for node, g in res["never"]:
        run.fail(f"{g} did not deliver again on {node} within {run.args.bound:.0f} s of the "
                 f"resharding")
    report.reshard(
        run, res=res, moved=moved, t_move=t_move, n_hist=n_hist, replayed=replayed, src=src,
        dst=dst, t_to=t_to, t_from=t_from, skipped0=skipped0, w=w, bad_pids=bad_pids,
        before=before, shard_old=shard_old, shard_subs=shard_subs,
        shard_subs_end=shard_subs_end)
    check_history(run, res, "the resharding")
    run.results["reshard"] = res


async def node_loss(run: Run) -> None:
    run.phase = "node-loss"
    run.not_recovered.clear()
    victim = sorted(run.nodes)[1]
    survivors = [n for n in sorted(run.nodes) if n != victim and n not in run.dead_nodes]
    mine = [c for c in run.clients if c.node == victim]
    # pg_stat_database lags up to 10 s behind idle backends: let the
    # first connections' lookups land before the baseline.
    await asyncio.sleep(max(1.0, 11.5 - (NOW() - run.t_connected)))
    log(f"node-loss: SIGKILL {victim} ({len(mine)} clients on it)")
    x0, r0, f0 = run.pg_stat()
    a0 = await run.auth_counts(survivors)
    aall = await run.auth_counts([n for n in sorted(run.nodes) if n not in run.dead_nodes])
    skipped0 = run.pub_skipped
    t_from = NOW() - 2.0
    t0 = NOW()
    kill_owned(run.args.run_dir, victim, "wsgate")
    run.dead_nodes.add(victim)
    watch = run.start_watch(t0)
    deadline = t0 + run.args.bound
    while NOW() < deadline and not all(c.back_at for c in mine):
        await asyncio.sleep(0.1)
    back = [c.back_at - t0 for c in mine if c.back_at]
    if len(back) < len(mine):
        run.fail(f"{len(mine) - len(back)} of {len(mine)} clients not back in {run.args.bound:.0f} s")
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
                      if start and run.pub[g][seq].t_send > start]
                if ts:
                    recv_after.append(min(ts) - t0)
                else:
                    missing += 1
        if not missing or NOW() > deadline2:
            break
        await asyncio.sleep(0.5)
    if missing:
        run.fail(f"{missing} reconnected subscriptions received nothing within 10 s")
    await asyncio.sleep(3.0)
    t_to = NOW() - 2.0
    w = await run.finish_watch(watch, t0, run.args.bound)
    res = run.analyse(t0, t_from, t_to, set(), run.phase)
    if run.args.dump:
        run.dump(run.phase, t0, t_from, t_to)
    n_hist, replayed = await recover_history(run, res, t0, t_from, t_to)
    a1 = await run.auth_counts(survivors)
    da = {k: a1.get(k, 0.0) - a0.get(k, 0.0) for k in sorted(set(a0) | set(a1))}
    # pg_stat_database is flushed by backends at most once a second and
    # up to 10 s late when idle: wait that out before reading it.
    wait = 11.5 - (NOW() - max([c.back_at for c in mine if c.back_at] or [t0]))
    if wait > 0:
        await asyncio.sleep(wait)
    x1, r1, f1 = run.pg_stat()
    bad_pids = check_pids(run, "surviving wsgate process", "the node loss")
    survivors_lost = 0
    for c in run.clients:
        if c in mine:
            continue
        for g, s in c.subs.items():
            if s.history:
                continue
            for seq, r in enumerate(run.pub[g]):
                if (t_from <= r.t_send <= t_to and r.status == 200
                        and s.active_at(r.t_send, r.t_done) and seq not in s.recv):
                    survivors_lost += 1
    if survivors_lost:
        run.fail(f"{survivors_lost} deliveries lost on the surviving nodes during the node loss")
    report.node_loss(
        run, mine=mine, da=da, victim=victim, survivors_lost=survivors_lost, n_hist=n_hist,
        replayed=replayed, t0=t0, x1=x1, x0=x0, r1=r1, r0=r0, f1=f1, f0=f0, res=res, t_to=t_to,
        t_from=t_from, skipped0=skipped0, w=w, back=back, recv_after=recv_after, aall=aall)
    check_history(run, res, "the node loss")
    run.results["node-loss"] = res


PHASES = {"master-loss": master_loss, "reshard": reshard, "node-loss": node_loss}
