"""scripts/cluster-bench.sh's helpers: `cluster-report` (its runs, 3 nodes behind nginx over a Redis Cluster,
one Redis or independent shards, set beside the model's prediction for the same load, as Markdown) and
`cluster-inputs` (the Redis figures those runs give, written into the inputs file).

Apart because it is the model's check rather than the model: it reads a different results format and only
calls into the plan.
"""

import json
import os
import statistics

from . import curve
from .inputs import ASSUMED, CLUSTER_WRITER, load_inputs, read_rows
from .model import plan
from .options import plan_parser


def cluster_nodes_per_group(r):
    """Nodes holding a member of a group, from each node's wsgate_groups at the end of the window (groups with a
    local member; the sockets' own user.<id> group, one user in these runs, taken off)."""
    return sum(max(n.get("groups") or 0, 1) - 1 for n in r["nodes"]) / r["params"]["groups"]


def cluster_redis_figures(r):
    """Redis traffic and CPU of one run: every publish goes in once and out once to every node holding a member."""
    pubs = sum(v["publishes"] for v in r["redis"].values())
    cpu = r["aux"]["cpu_s"]
    npg = cluster_nodes_per_group(r)
    msgs = pubs * (1 + npg)
    wall = r["machine"]["wall_s"]
    # Net of what the servers use with nothing sent (a Redis Cluster's cron and
    # bus, the nodes' heartbeats), measured just before the run.
    idle = sum(r.get("idle", {}).get("redis_cores_each", []))
    net = max(cpu - idle * wall, 0.0)
    per = lambda c, n: c * 1e6 / n if n else None
    return {"publishes": pubs, "publishes_per_s": pubs / wall, "cpu_s": cpu, "cores": cpu / wall,
            "servers": max(len(r["redis"]), 1),
            "idle_cores": idle, "net_cpu_s": net, "net_cores": net / wall,
            "nodes_per_group": npg, "messages": msgs, "msgs_per_s": msgs / wall,
            "us_per_publish": per(cpu, pubs), "us_per_message": per(cpu, msgs),
            "net_us_per_publish": per(net, pubs), "net_us_per_message": per(net, msgs)}


def cluster_plan(r, inp, pods=3, delivery_us=None):
    """The model's plan for a run's load on `pods` pods with the inputs' figures `inp` (load_inputs' values),
    and the command line that gives it."""
    p = r["params"]
    args = ["--sockets", str(r["sockets"]["ok"]), "--groups", str(p["groups"]), "--groups-per-socket",
            str(p["per_socket"]), "--publish-rate", str(r["published"]["rate_msgs_s"]), "--pods", str(pods)]
    if p.get("batch", 1) > 1:
        args.append("--batched")
    if delivery_us is not None:
        args += ["--delivery-us", "%.3f" % delivery_us]
    w = vars(plan_parser().parse_args(args))
    return plan(w, inp), "scripts/capacity " + " ".join(args)


def cluster_commands(r, top=6):
    """The busiest Redis commands of a run, summed over the servers."""
    tot = {}
    for v in r["redis"].values():
        for c, (calls, usec) in v.get("commands", {}).items():
            t = tot.setdefault(c, [0, 0])
            t[0] += calls
            t[1] += usec
    busiest = sorted(tot.items(), key=lambda kv: -kv[1][1])[:top]
    return "; ".join("%s %s calls, %.3f s" % (c, "{:,}".format(n), us / 1e6) for c, (n, us) in busiest) or "none"


def _pct(measured, predicted):
    return (measured - predicted) / predicted * 100.0 if predicted else float("nan")


def cluster_model_check(r, inp, calib=None):
    """Measured against predicted for one model run: the plan, its command line, the calibrated plan's (or None)
    and a list of (what, measured, predicted, predicted with the calibrated delivery cost or None, unit).
    `calib` is the one-node run with one node's share of the load: its CPU per delivery replaces the inputs
    file's (measured at saturation) for the second prediction."""
    p, cmd = cluster_plan(r, inp)
    pc, cmdc = (None, None)
    if calib is not None:
        pc, cmdc = cluster_plan(r, inp, delivery_us=calib["nodes"][0]["cpu_us_per_delivery"])
    pick = lambda q, path: None if q is None else q[path[0]][path[1]]
    pred, predc = pick(p, ("pods", "cpu_us_per_delivery_all_in")), pick(pc, ("pods", "cpu_us_per_delivery_all_in"))
    lines = []
    for n in r["nodes"]:
        port = n["metrics_url"].split(":")[2].split("/")[0]
        lines.append(("node :%s CPU per delivery (its CPU / its deliveries; %d sockets, %s deliveries)"
                      % (port, n["connections_authenticated"] or 0, "{:,.0f}".format(n["delivered"])),
                      n["cpu_us_per_delivery"], pred, predc, "us"))
    cpu = sum(n["cpu_s"] for n in r["nodes"])
    delivered = sum(n["delivered"] for n in r["nodes"])
    wall = r["machine"]["wall_s"]
    lines.append(("**3 nodes: CPU per delivery**", cpu * 1e6 / delivered, pred, predc, "us"))
    lines.append(("3 nodes: CPU, cores", cpu / wall, p["pods"]["cpu_cores_needed"],
                  pick(pc, ("pods", "cpu_cores_needed")), "cores"))
    rf = cluster_redis_figures(r)
    lines.append(("Redis: nodes a publish reaches", rf["nodes_per_group"], p["redis"]["nodes_per_group"], None, ""))
    lines.append(("Redis: messages/s (in + out)", rf["msgs_per_s"], p["redis"]["pubsub_msgs_per_s"], None, "msgs/s"))
    lines.append(("Redis: CPU per publish (redis-servers' CPU / publishes)", rf["us_per_publish"],
                  p["redis"]["cpu_us_per_publish"], None, "us"))
    lines.append(("Redis: the same, net of their CPU with nothing sent (%.3f cores)" % rf["idle_cores"],
                  rf["net_us_per_publish"], p["redis"]["cpu_us_per_publish"], None, "us"))
    return p, cmd, cmdc, lines



def cluster_report(rows, a):
    cores = a.machine.split(" (")[0]
    o = []
    w = o.append
    w("# Cluster bench (scripts/cluster-bench.sh)\n\n")
    w("Written by `scripts/cluster-bench.sh` (%s run); rerun it rather than editing this file.\n\n" % a.mode)
    w("- date: %s (UTC); commit %s; machine: %s\n" % (a.date, a.commit, a.machine))
    w("- load average at start and end: %s\n- binaries: %s\n" % (a.load, a.binaries))
    w("- inputs of the model: %s\n" % os.path.relpath(a.inputs))
    w("\n**Everything shares the %s here**: the 3 wsgate nodes, the Redis servers, nginx, PostgreSQL and the\n"
      "load generator, over loopback. These runs check costs per operation and correctness (every message\n"
      "delivered once, in order), **not throughput growth** with nodes.\n\n" % cores)
    w(curve.report(rows))
    model = [r for r in rows if r["label"].startswith("model-")]
    if model:
        w("## The model against 3 nodes over a 3-master Redis Cluster\n\n")
    calibs = {r["label"].split("-", 1)[1]: r for r in rows if r["label"].startswith("calib-")}
    inp, _ = load_inputs(a.inputs)
    fresh = curve.entry(rows, {"date": a.date}, "this run")
    if fresh is not None:
        # The model uses the curve measured in this run (--inputs-out writes it into the inputs file).
        inp["delivery_us_by_rate"] = curve.parse(fresh, "(this run)")
    if model:
        c = inp.get("delivery_us_by_rate")
        w("The model's CPU per delivery comes from %s (see the `model` lines below for the point used).\n\n" % (
            "the inputs file's CPU per delivery (no curve)" if c is None else
            "the curve of CPU per delivery by load measured in this run, above" if fresh is not None else
            "the inputs file's curve of CPU per delivery by load (measured %s)" % c.get("date")))
    for r in model:
        calib = calibs.get(r["label"].split("-", 1)[1])
        p, cmd, cmdc, lines = cluster_model_check(r, inp, calib)
        d = r["deliveries"]
        w("### %s\n\n" % r["label"])
        w("Load: %d sockets through nginx, %d groups, %d a socket, %.0f publishes/s for %.0f s through the API\n"
          "(nginx); %s deliveries/s; %d of %d expected deliveries arrived, missing %d, duplicates %d, reordered %d;\n"
          "latency p50 %s ms, p99 %s ms. Machine busy %.2f of %d cores, other processes %.2f.\n\n"
          % (r["sockets"]["ok"], r["params"]["groups"], r["params"]["per_socket"], r["published"]["rate_msgs_s"],
             r["published"]["elapsed_s"], "{:,.0f}".format(d["per_s"]), d["unique"], d["expected"], d["missing"],
             d["duplicates"], d["reordered"], r["latency_ms"].get("p50"), r["latency_ms"].get("p99"),
             r["machine"]["busy_cores"], r["machine"]["ncpu"], r["machine"]["other_cores"]))
        w("Model: `%s`%s: %.2f us per delivery, %s.\n\n" % (
            cmd, " (with this run's curve in the inputs file)" if fresh is not None else "",
            p["pods"]["cpu_us_per_delivery"], p["pods"]["cpu_us_per_delivery_source"]["text"]))
        if calib is not None:
            c = calib["nodes"][0]
            w("Calibrated model: `%s`, the CPU per delivery of run %s: one embedded node with one node's share "
              "(%d sockets, the same %d groups and %.0f publishes/s: %s deliveries/s) measured %.2f us per delivery "
              "(%.3f cores), against the inputs file's %.2f (measured with the node saturated).\n\n"
              % (cmdc, calib["label"], calib["sockets"]["ok"], calib["params"]["groups"],
                 calib["published"]["rate_msgs_s"], "{:,.0f}".format(calib["deliveries"]["per_s"]),
                 c["cpu_us_per_delivery"], c["cpu_s"] / calib["machine"]["wall_s"], inp["delivery_us_non_coalescing"]))
        w("| | measured | model%s | difference | calibrated model | difference |\n|---|---|---|---|---|---|\n"
          % (" (load-aware)" if inp.get("delivery_us_by_rate") else ""))
        for what, m, pr, prc, unit in lines:
            bold = what.startswith("**")
            b = (lambda t: "**%s**" % t) if bold else (lambda t: t)
            cell = lambda v: "-" if v is None else b(
                ("{:,.0f}".format(v) if abs(v) >= 100 else "%.2f" % v) + (" " + unit if unit else ""))
            diff = lambda v: "-" if v is None or m is None else b("%+.0f %%" % _pct(m, v))
            w("| %s | %s | %s | %s | %s | %s |\n" % (what, cell(m), cell(pr), diff(pr), cell(prc), diff(prc)))
        w("\nThe model's CPU per delivery is all of its CPU (deliveries at %.2f us each, the publish API, the\n"
          "Redis receive side) over the deliveries; its Redis CPU is (1 + nodes a publish reaches) x 1 s /\n"
          "redis_msgs_per_shard (%s). Redis CPU by server: %s s.\n\n"
          % (p["pods"]["cpu_us_per_delivery"], "{:,.0f}".format(p["redis"]["per_shard_capacity_msgs_per_s"]),
             ", ".join("%.2f" % c for c in r["aux"]["cpu_s_each"])))
        w("Redis commands over the whole bench run (sockets set up, the window, closes; calls, and CPU inside "
          "the commands): %s.\n\n" % cluster_commands(r))
    back = [r for r in rows if r["label"].startswith("backends-")]
    if back:
        w("## Redis back ends side by side\n\n")
        r0 = back[0]
        w("Same load on each: %d sockets through nginx, %d groups, %d a socket, %.0f publishes/s for %.0f s; 3 nodes.\n"
          "Messages through Redis = publishes x (1 + nodes holding a member of the group, from each node's\n"
          "wsgate_groups); Redis CPU = utime + stime of the redis-server processes over the window; idle = their\n"
          "CPU over a few seconds just before, with nothing sent (a Redis Cluster's cron and bus gossip), taken\n"
          "off for the net figures. The last column is 1 s / (net CPU per message): what one fully busy Redis\n"
          "core would carry at this cost, an extrapolation from a %s loopback run at a fraction of a core, not\n"
          "a measured maximum.\n\n"
          % (r0["sockets"]["ok"], r0["params"]["groups"], r0["params"]["per_socket"], r0["published"]["rate_msgs_s"],
             r0["published"]["elapsed_s"], cores))
        w("| run | back end | publishes/s | nodes a publish reaches | messages/s through Redis | Redis CPU, cores "
          "(by server) | idle, cores | Redis CPU per message (net of idle) | per publish (net) | "
          "missing / duplicates | msgs/s per Redis core, from the net cost (extrapolated) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in back:
            rf = cluster_redis_figures(r)
            wall = r["machine"]["wall_s"]
            w("| %s | %s | %s | %.2f | %s | %.3f (%s) | %.3f | %.2f us (%.2f) | %.2f us (%.2f) | %d / %d | %s |\n"
              % (r["label"], r["backend"], "{:,.0f}".format(rf["publishes_per_s"]), rf["nodes_per_group"],
                 "{:,.0f}".format(rf["msgs_per_s"]), rf["cores"],
                 ", ".join("%.3f" % (c / wall) for c in r["aux"]["cpu_s_each"]), rf["idle_cores"],
                 rf["us_per_message"], rf["net_us_per_message"], rf["us_per_publish"], rf["net_us_per_publish"],
                 r["deliveries"]["missing"], r["deliveries"]["duplicates"],
                 "{:,.0f}".format(1e6 / rf["net_us_per_message"]) if rf["net_us_per_message"] else "-"))
        w("\nRedis commands over each bench run (calls, CPU inside the commands):\n\n")
        for r in back:
            w("- %s: %s\n" % (r["label"], cluster_commands(r)))
    w("\n## Raw results\n\nOne JSON object per run (wsgate-bench's line, plus `backend` and the Redis "
      "counters):\n\n```json\n")
    for r in rows:
        w(json.dumps(r) + "\n")
    w("```\n")
    return "".join(o)


# name -> (unit, what); figures cluster-bench.sh measures besides the REQUIRED ones.
CLUSTER_EXTRA = {
    "redis_us_per_message_single": ("us", "Redis CPU per pub/sub message (in or out), one Redis, 3 nodes"),
    "redis_us_per_message_shards": ("us", "Redis CPU per pub/sub message, 3 independent shards (redis.shards), 3 nodes"),
    "redis_us_per_message_cluster": ("us", "Redis CPU per pub/sub message, 3-master Redis Cluster (sharded pub/sub), 3 nodes"),
    "redis_msgs_per_core_floor": ("msgs/s", "pub/sub messages/s one Redis core carries at the net CPU per message "
                                  "measured at low load (a floor)"),
    "cluster_cpu_us_per_delivery": ("us", "node CPU per delivery, all costs in, 3 nodes over a Redis Cluster (the model's check)"),
}


def derive_cluster_inputs(rows, meta):
    """Inputs entries from cluster-bench.sh results: Redis CPU per message by back end, redis_msgs_per_shard from
    the dearest of them, the model check's CPU per delivery, and the curve of CPU per delivery by load."""
    ref = "%s run of %s, commit %s, %s; the nodes, Redis, nginx, PostgreSQL and the load generator on the same " \
          "cores, over loopback" % (meta.get("mode", "?"), meta.get("date", "?"), meta.get("commit", "?"),
                                    meta.get("machine", "?"))
    out = {}

    def put(name, value, unit, what, how):
        out[name] = {"value": value, "unit": unit, "what": what, "measured": True, "writer": CLUSTER_WRITER,
                     "source": "%s (%s): %s" % (CLUSTER_WRITER, ref, how)}

    per_backend = {}
    for r in rows:
        if r["label"].startswith("backends-"):
            per_backend.setdefault(r["backend"], []).append((r["label"], cluster_redis_figures(r)))
    for backend, runs in sorted(per_backend.items()):
        name = "redis_us_per_message_" + backend
        unit, what = CLUSTER_EXTRA[name]
        us = statistics.mean(f["net_us_per_message"] for _, f in runs)
        put(name, round(us, 3), unit, what, "rows %s: redis-server CPU net of its idle CPU (measured just before) / "
            "(publishes x (1 + nodes holding a member)), %s publishes/s, %s messages/s through Redis; mean of the "
            "runs (%s us; gross %s us)"
            % (", ".join(l for l, _ in runs), "{:,.0f}".format(statistics.mean(f["publishes_per_s"] for _, f in runs)),
               "{:,.0f}".format(statistics.mean(f["msgs_per_s"] for _, f in runs)),
               ", ".join("%.3f" % f["net_us_per_message"] for _, f in runs),
               ", ".join("%.3f" % f["us_per_message"] for _, f in runs)))
    if per_backend:
        dearest = max(per_backend, key=lambda b: out["redis_us_per_message_" + b]["value"])
        us = out["redis_us_per_message_" + dearest]["value"]
        busy = max(f["net_cores"] / f["servers"] for _, f in per_backend[dearest])
        unit, what = CLUSTER_EXTRA["redis_msgs_per_core_floor"]
        put("redis_msgs_per_core_floor", float(round(1e6 / us, -3)), unit, what,
            "1 s / the highest net Redis CPU per message of the back ends (%s, %.3f us), measured with each "
            "redis-server at %.1f %% of a core or less on a 2-core loopback machine: at that load every message pays "
            "for its own wake-up, so a busy core carries more; a floor, not a measured maximum. The plan keeps "
            "redis_msgs_per_shard (Centrifugo's ~650k, assumed) and reports the shards this floor would need "
            "beside it" % (dearest, us, busy * 100))
    model = [r for r in rows if r["label"].startswith("model-")]
    if model:
        vals = [sum(n["cpu_s"] for n in r["nodes"]) * 1e6 / sum(n["delivered"] for n in r["nodes"]) for r in model]
        unit, what = CLUSTER_EXTRA["cluster_cpu_us_per_delivery"]
        put("cluster_cpu_us_per_delivery", round(statistics.mean(vals), 3), unit, what,
            "rows %s: the 3 nodes' CPU / their deliveries (wsgate_messages_delivered_total), %d sockets in %d groups, "
            "%d a socket; mean of the runs (%s us). Not used by the plan: it checks it"
            % (", ".join(r["label"] for r in model), model[0]["sockets"]["ok"], model[0]["params"]["groups"],
               model[0]["params"]["per_socket"], ", ".join("%.3f" % v for v in vals)))
    c = curve.entry(rows, meta, ref)
    if c is not None:
        out[curve.NAME] = c
    return out


def cluster_inputs(results, into, meta):
    """The entries cluster-bench.sh's results give (derive_cluster_inputs) and the document of the inputs file
    `into` they go in, checked to be a usable inputs file."""
    new = derive_cluster_inputs(read_rows(results), meta)
    with open(into) as f:
        doc = json.load(f)
    load_inputs(into)
    return new, doc


def merge_cluster_inputs(doc, new):
    """Put the entries `new` into the inputs document `doc`; an assumed redis_msgs_per_shard gets the current
    wording of its source (which points at the cluster-bench figures)."""
    doc["inputs"].update(new)
    shard = doc["inputs"].get("redis_msgs_per_shard")
    if isinstance(shard, dict) and not shard.get("measured"):
        shard["source"] = ASSUMED["redis_msgs_per_shard"]["source"]
