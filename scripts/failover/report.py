"""The Markdown report the driver prints (and writes to --report): the
set-up paragraph, one section per phase from its measurements, and the
closing summary with the list of failed checks. Only formatting here: the
checks themselves are made (run.fail) where the figures are measured."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from .common import NOW

if TYPE_CHECKING:
    from .run import Run

NO_CODE = "none (connection dropped, 1006)"


def fmt(v: float | None) -> str:
    if v is None:
        return "**never**"
    return f"{v:.2f} s"


def watch_text(w: dict) -> str:
    p = ("never wrong" if w["presence_wrong_last"] is None
         else f"last wrong {w['presence_wrong_last']:.2f} s after")
    r = ("never wrong" if w["registry_wrong_last"] is None
         else f"last wrong {w['registry_wrong_last']:.2f} s after")
    return (f"presence of every group (polled every 0.5 s, {w['presence_polls']} polls): {p}, "
            f"right at the end: {'yes' if w['presence_ok'] else 'NO (' + w['wrong_example'] + ')'}; "
            f"node registry: {r}, right at the end: {'yes' if w['registry_ok'] else 'NO'}")


def intro(run: Run, t_conn: float) -> None:
    """What ran: sockets, groups and load."""
    run.out(f"{len(run.clients)} WebSockets through nginx ({', '.join(f'{k}: {v}' for k, v in sorted(run.per_node.items()))}), "
            f"{len(run.groups)} groups ({sum(map(run.is_history, run.groups))} with history) "
            f"spread over the masters, {run.args.groups_per_socket} groups a socket, "
            f"{run.args.rate:.0f} publishes/s through the API (one message a request, "
            f"round robin over the groups); set-up of the clients took {t_conn:.1f} s.")
    run.out()


def master_loss(run: Run, *, t0, victim, replica, affected, n_hist, replayed, t_failover, t_to,
                t_from, res, skipped0, w, bad_pids) -> None:
    o = run.out
    o("### Redis master loss")
    o()
    o(f"SIGKILL of the master on :{victim} under publish load; its replica :{replica} "
      f"took over after **{fmt(t_failover)}** (Redis's view: promoted and `cluster_state:ok`, "
      f"cluster-node-timeout {run.args.node_timeout_ms} ms). "
      f"Groups on its slots: {len(affected)} of {len(run.groups)} "
      f"({sum(1 for g in affected if run.is_history(g))} with history).")
    o()
    o("| node | affected groups delivering again after the kill (max / median) | "
      "`/readyz` not 200 for | `/readyz` 200 again after | same PID |")
    o("|---|---|---|---|---|")
    for node in sorted(run.nodes):
        vals = list(res["recovery"].get(node, {}).values())
        down, back = run.unready_since(node, t0)
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
      f"**{res['refused'] - ref_aff} to the {len(run.groups) - len(affected)} groups on the "
      f"healthy masters**; {run.pub_skipped - skipped0} not sent (too many in flight).")
    o(f"- Longest gap between two messages on one subscription: "
      f"{fmt(max(gap_aff) if gap_aff else None)} for the groups on the lost master, "
      f"{fmt(max(gap_other) if gap_other else None)} for the others.")
    o(f"- Plain groups (at most once): **{res['lost_plain']}** acknowledged messages missed by "
      f"at least one subscriber ({res['lost_plain_deliveries']} deliveries).")
    o(f"- History groups, after every history subscription resubscribed with `since` "
      f"({n_hist} subscriptions, {replayed} messages replayed that had not arrived live): "
      f"**{res['lost_history']}** acknowledged messages missing, "
      f"{res['history_conflicts']} offset conflicts, {len(run.not_recovered)} `recovered: false`.")
    o(f"- From the kill: {watch_text(w)}.")
    o()


def reshard(run: Run, *, res, moved, t_move, n_hist, replayed, src, dst, t_to, t_from, skipped0, w,
            bad_pids, before, shard_old, shard_subs, shard_subs_end) -> None:
    live = len(run.nodes) - len(run.dead_nodes)
    o = run.out
    o("### Resharding under load")
    o()
    o(f"`redis-cli --cluster reshard` of {run.args.reshard_slots} slots from :{src.port} to "
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
    others = [g for g in run.groups if g not in moved]
    og = [res["gap_by_group"].get(g, 0.0) for g in others]
    ol = sum(res["lost_by_group"].get(g, 0) for g in others)
    on = sum(never_by_g.get(g, 0) for g in others)
    o(f"| the {len(others)} other groups | max {fmt(max(og) if og else None)} | {ol} | "
      f"{'all' if not on else str(on) + ' (group, node) pairs silent'} | - |")
    o()
    o(f"- Window {t_to - t_from:.0f} s: {res['acked']} publishes answered 200, {res['refused']} "
      f"refused, {run.pub_skipped - skipped0} not sent (too many in flight).")
    o(f"- History groups after resubscribing with `since` ({n_hist} subscriptions, "
      f"{replayed} replayed that had not arrived live): **{res['lost_history']}** missing, "
      f"{res['history_conflicts']} conflicts, {len(run.not_recovered)} `recovered: false`.")
    o(f"- From the start of the move: {watch_text(w)}; same PIDs: "
      f"{'yes' if not bad_pids else 'NO ' + str(bad_pids)}.")
    o()


def node_loss(run: Run, *, mine, da, victim, survivors_lost, n_hist, replayed, t0, x1, x0, r1, r0,
              f1, f0, res, t_to, t_from, skipped0, w, back, recv_after, aall) -> None:
    codes: dict = {}
    for c in mine:
        for code in c.close_codes[-1:]:
            codes[code] = codes.get(code, 0) + 1
    dist: dict[str, int] = {}
    for c in mine:
        dist[c.node] = dist.get(c.node, 0) + 1
    misses = da.get("result=miss", 0.0)
    total = sum(v for k, v in da.items() if k.startswith("result="))
    o = run.out
    o("### wsgate node loss")
    o()
    o(f"SIGKILL of {victim} with {len(mine)} of {len(run.clients)} clients on it; they reconnect "
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
    xs, rs, fs = run.pg_start
    o(f"| for comparison, from before the first connection of the {len(run.clients)} clients "
      f"(cold cache) to the kill | {aall.get('result=miss', 0):.0f} store lookups; xact_commit "
      f"{x0 - xs}, tup_returned {r0 - rs}, tup_fetched {f0 - fs} |")
    o(f"| plain-group messages missed by the reconnecting clients (at most once) | "
      f"{res['lost_plain']} messages, {res['lost_plain_deliveries']} deliveries |")
    o(f"| deliveries lost on the surviving nodes | {survivors_lost} |")
    o(f"| history groups after `since` ({n_hist} subscriptions, {replayed} replayed that had "
      f"not arrived live) | {res['lost_history']} missing, {res['history_conflicts']} conflicts, "
      f"{len(run.not_recovered)} `recovered: false` |")
    o(f"| publishes in the window ({t_to - t_from:.0f} s) | {res['acked']} answered 200, "
      f"{res['refused']} refused, {run.pub_skipped - skipped0} not sent |")
    o()
    o(f"- From the kill: {watch_text(w)} (the dead node's entry and presence expire "
      f"after `redis.node_ttl`, 4 s here).")
    o()


def finish(run: Run, unexpected: int) -> None:
    """The closing lines; prints the report and writes it to --report."""
    run.out(f"Publisher: {run.pub_skipped} publishes not sent in all because "
            f"{run.args.max_inflight} were in flight. Unexpected client disconnects "
            f"(outside the node loss): {unexpected}.")
    run.out()
    run.out("Driver's event loop, longest wake-up delay per phase (times above are only as "
            "precise as this): " + ", ".join(f"{k} {v:.2f} s" for k, v in run.lag.items()) + ".")
    run.out()
    if run.failures:
        run.out("**Checks failed:**")
        run.out()
        for f in run.failures:
            run.out(f"- {f}")
    else:
        run.out("**All checks passed.**")
    print("\n".join(run.report))
    if run.args.report:
        with open(run.args.report, "w") as f:
            f.write("\n".join(run.report) + "\n")
