"""The calculator's inputs file (docs/capacity-inputs.json): what each figure is, where it comes from, how it is
read and checked, and how `capacity inputs` derives it from scripts/bench.sh's runs.

It exists apart from the arithmetic because two writers (scripts/bench.sh and scripts/cluster-bench.sh) and
every reader agree on this file through it: the names, the assumptions with their sources, and which entries
`inputs --carry` keeps.
"""

import json
import math
import os
import re

SCHEMA = 1
# scripts/capacity_model/inputs.py -> the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_INPUTS = os.path.join(ROOT, "docs", "capacity-inputs.json")
# The writer of the entries scripts/cluster-bench.sh measures (`capacity cluster-inputs`); bench.sh's
# `capacity inputs --carry` keeps them.
CLUSTER_WRITER = "scripts/cluster-bench.sh"


class InputsError(Exception):
    """The inputs file is missing, unreadable or lacks a figure."""


# What scripts/bench.sh measured, with where each figure comes from.

# name -> (unit, description). Every one of these must be in the inputs file.
REQUIRED = {
    "delivery_us_coalescing": ("us", "server CPU per delivery when frames coalesce (several per write), one node"),
    "delivery_us_coalescing_redis": ("us", "the same across nodes over Redis (the worst measured fan-out row)"),
    "delivery_us_batch": ("us", "server CPU per delivery, batch publish (10 a request), one node"),
    "delivery_us_batch_redis": ("us", "the same across nodes over Redis"),
    "delivery_us_non_coalescing": ("us", "server CPU per delivery when each frame is its own write (many groups)"),
    "delivery_us_burst_non_coalescing": ("us", "server CPU per delivery, 10,000 single-frame writes per message at 5 msg/s"),
    "coalescing_min_msgs_per_socket": ("msgs/s", "lowest per-socket message rate at which coalescing was measured"),
    "publish_api_us_per_message": ("us", "server CPU per message through the publish API into Redis (batches of 100)"),
    "publish_api_msgs_per_node": ("msgs/s", "publish API messages/s one node accepted into Redis"),
    "redis_us_per_publish": ("us", "Redis CPU per message published (no subscribers)"),
    "redis_receive_us_per_message": ("us", "node CPU per message received from a Redis subscription"),
    "rss_kib_per_idle_socket": ("KiB", "server RSS per idle authenticated socket (user space)"),
    "rss_base_mib": ("MiB", "server RSS with no sockets"),
    "membership_kib": ("KiB", "server memory per (socket, group) membership"),
    "kernel_kib_per_socket": ("KiB", "kernel slab per idle TCP socket (sock, inode, file, dentry, epoll)"),
    "kernel_buffer_kib_per_socket": ("KiB", "kernel socket buffers per connection, average under load"),
    "auth_us_cached": ("us", "server CPU per authentication, token cached"),
    "auth_us_uncached": ("us", "server CPU per authentication, every token a PostgreSQL miss"),
    "postgres_us_per_miss": ("us", "PostgreSQL CPU per uncached authentication (upper bound)"),
    "postgres_queries_per_miss": ("queries", "PostgreSQL round trips per uncached authentication"),
    "redis_us_per_connect": ("us", "Redis CPU per authentication (cache write, user channel, presence)"),
    "redis_msgs_per_shard": ("msgs/s", "pub/sub messages/s one Redis instance (one core) carries"),
    "descriptor_overhead": ("fds", "descriptors a node holds besides its sockets"),
}

# Figures no bench.sh row gives: assumptions, each with its source. A later
# measurement replaces the value and sets "measured": true.
ASSUMED = {
    "redis_receive_us_per_message": {
        "value": 6.0,
        "source": "assumed equal to the publish side's per-message cost (publish-batch row: 6.0 us, 73 % of it the fred "
        "Redis client, docs/performance.md); not measured separately",
    },
    "membership_kib": {
        "value": 0.125,
        "source": "assumed: one hub entry (queue handle in the group's member map) and the group name per membership; "
        "not measured separately (the idle row has one group per socket, included in its RSS)",
    },
    "kernel_buffer_kib_per_socket": {
        "value": 4.0,
        "source": "assumed: one page of queued data per connection on average; an idle socket holds none, a slow "
        "reader can hold up to net.ipv4.tcp_wmem's maximum (4 MiB here) until limits.outbound_queue closes it",
    },
    "kernel_kib_per_socket": {
        "value": 3.9,
        "source": "assumed (no measurement in this file): struct tcp_sock 2.3 KiB + socket inode 0.8 + file, dentry and "
        "epoll entries ~0.6, from /proc/slabinfo object sizes on Linux 6.x",
    },
    "redis_msgs_per_shard": {
        "value": 650000,
        "source": "assumed: Centrifugo's measurement of one Redis instance, ~650k pub/sub messages/s "
        "(BENCHMARKS.md anchor column); not measured here at saturation: scripts/cluster-bench.sh measures Redis "
        "CPU per message at low load (redis_us_per_message_*, and the floor redis_msgs_per_core_floor)",
    },
    "postgres_queries_per_miss": {
        "value": 1,
        "source": "src/auth/sql.rs: the token query alone (no test_before_acquire ping since 308226c); an upper "
        "bound: under load auth::batch gathers lookups into one query (0.11-0.23 queries per authentication in "
        "docs/performance.md's gathering A/B)",
    },
    "descriptor_overhead": {
        "value": 64,
        "source": "assumed: listeners, Redis connections, the PostgreSQL pool (database.max_connections 16), logs",
    },
}


def _row(rows, label):
    for row in rows:
        if row.get("label") == label:
            return row
    return None


def derive_inputs(rows, meta, kernel=None):
    """The inputs document from wsgate-bench's JSON lines (one per run)."""
    when = meta.get("date", "?")
    ref = "%s run of %s, commit %s" % (meta.get("mode", "?"), when, meta.get("commit", "?"))
    out = {}

    def put(name, value, label, how):
        unit, desc = REQUIRED[name]
        out[name] = {
            "value": value,
            "unit": unit,
            "what": desc,
            "measured": True,
            "source": "BENCHMARKS.md row %s (%s): %s" % (label, ref, how),
        }

    def need(label):
        row = _row(rows, label)
        if row is None:
            raise InputsError("the results have no run labelled %r" % label)
        return row

    def us_delivery(label):
        return need(label)["server"]["cpu_us_per_delivery"]

    r = need("fanout-1k-500")
    put("delivery_us_coalescing", us_delivery("fanout-1k-500"), "fanout-1k-500",
        "server cpu_us_per_delivery, 1,000 subscribers at 500 msg/s (the fixed-rate row, not the saturated one)")
    rate_per_socket = r["params"]["rate"]
    put("coalescing_min_msgs_per_socket", rate_per_socket, "fanout-1k-500",
        "messages/s per socket in that row; below it the model does not count on coalescing")
    worst = max(("redis2-fanout-1k-max", "redis2-fanout-10k-max"), key=us_delivery)
    put("delivery_us_coalescing_redis", us_delivery(worst), worst,
        "server cpu_us_per_delivery over both nodes, the higher of the 1k and 10k two-node rows")
    put("delivery_us_batch", us_delivery("fanout-1k-batch10-max"), "fanout-1k-batch10-max", "server cpu_us_per_delivery")
    put("delivery_us_batch_redis", us_delivery("redis2-fanout-1k-batch10-max"), "redis2-fanout-1k-batch10-max",
        "server cpu_us_per_delivery over both nodes")
    put("delivery_us_non_coalescing", us_delivery("groups-10k"), "groups-10k",
        "server cpu_us_per_delivery, 10,000 sockets each in 10 of 1,000 groups: one frame per write")
    put("delivery_us_burst_non_coalescing", us_delivery("fanout-10k-5"), "fanout-10k-5",
        "server cpu_us_per_delivery (kept for comparison; the model uses groups-10k)")
    p = need("publish-batch")
    put("publish_api_us_per_message", p["server"]["cpu_us_per_message"], "publish-batch", "server cpu_us_per_message")
    put("publish_api_msgs_per_node", p["rate"], "publish-batch", "messages/s accepted (100 per request, 8 concurrent)")
    put("redis_us_per_publish", p["aux"]["cpu_us_per_message"], "publish-batch", "aux (Redis) cpu_us_per_message")
    idle = need("idle-19k")
    put("rss_kib_per_idle_socket", idle["rss_per_socket_kib"], "idle-19k", "rss_per_socket_kib at 19,000 sockets")
    put("rss_base_mib", round(idle["server_rss_base_kib"] / 1024.0, 1), "idle-19k", "server_rss_base_kib / 1024")
    put("auth_us_cached", need("connect-hit")["server"]["cpu_us_per_authentication"], "connect-hit",
        "server cpu_us_per_authentication")
    miss = need("connect-miss")
    put("auth_us_uncached", miss["server"]["cpu_us_per_authentication"], "connect-miss",
        "server cpu_us_per_authentication")
    put("redis_us_per_connect", miss["aux"]["cpu_us_per_authentication"], "connect-miss",
        "aux (Redis) cpu_us_per_authentication")
    other = miss["machine"]["other_cores"]
    put("postgres_us_per_miss", round(other / miss["rate"] * 1e6, 1), "connect-miss",
        "machine other_cores (%.3f, mostly PostgreSQL) / authentications per second; an upper bound" % other)

    for name, a in ASSUMED.items():
        if name in out:
            continue
        unit, desc = REQUIRED[name]
        out[name] = {"value": a["value"], "unit": unit, "what": desc, "measured": False, "source": a["source"]}
    if kernel is not None:
        unit, desc = REQUIRED["kernel_kib_per_socket"]
        out["kernel_kib_per_socket"] = {
            "value": kernel["kib_per_socket"],
            "unit": unit,
            "what": desc,
            "measured": True,
            "source": "scripts/capacity measure-kernel on %s: %d idle loopback connections, /proc/slabinfo before and "
            "after, both ends in one epoll set, divided by %d sockets (median of %d rounds)"
            % (kernel["date"], kernel["connections"], 2 * kernel["connections"], kernel["rounds"]),
            "breakdown_kib_per_socket": kernel["breakdown_kib_per_socket"],
            "sockstat_tcp_mem_pages_delta": kernel["sockstat_tcp_mem_pages_delta"],
        }
    return {
        "schema": SCHEMA,
        "about": "Per-node figures for scripts/capacity, written by scripts/bench.sh from its runs; values with "
        "\"measured\": false are assumptions. Measured on the machine below, which the load generator, Redis and "
        "PostgreSQL share with the server(s): figures per operation (CPU per delivery) carry over best.",
        "run": meta,
        "inputs": out,
    }


def parse_benchmarks_md(text):
    """(rows, meta) from a BENCHMARKS.md that scripts/bench.sh wrote."""
    m = re.search(r"## Raw results.*?```json\n(.*?)```", text, re.S)
    if not m:
        raise InputsError("no '## Raw results' JSON block in the BENCHMARKS.md given")
    rows = [json.loads(line) for line in m.group(1).splitlines() if line.strip()]
    meta = {"from": "BENCHMARKS.md"}
    d = re.search(r"^- date: (\S+) \(UTC\), (\w+) run; commit (\w+)", text, re.M)
    if d:
        meta.update(date=d.group(1), mode=d.group(2), commit=d.group(3))
    mach = re.search(r"^- machine: (.*)$", text, re.M)
    if mach:
        meta["machine"] = mach.group(1)
    meta["shared"] = "the load generator, Redis and PostgreSQL ran on the same cores as the server(s)"
    return rows, meta


def read_rows(path):
    """One JSON object a line (wsgate-bench's results, as bench.sh and cluster-bench.sh save them)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def build_inputs(results=None, from_benchmarks=None, date=None, mode=None, commit=None, machine=None,
                 kernel_path=None, carry=None):
    """The document `capacity inputs` writes: from bench.sh's results (with the run's date, mode, commit and
    machine) or from a BENCHMARKS.md; the kernel figure from measure-kernel's output if given; the
    cluster-bench entries of the inputs file `carry` kept."""
    if results:
        rows = read_rows(results)
        meta = {"from": "scripts/bench.sh results", "date": date, "mode": mode, "commit": commit,
                "machine": machine,
                "shared": "the load generator, Redis and PostgreSQL ran on the same cores as the server(s)"}
    else:
        with open(from_benchmarks) as f:
            rows, meta = parse_benchmarks_md(f.read())
    kernel = None
    if kernel_path:
        with open(kernel_path) as f:
            kernel = json.load(f)
    doc = derive_inputs(rows, meta, kernel)
    if carry:
        doc["inputs"].update(carried(carry))
    return doc


def write_json(path, doc):
    """Replace `path` with `doc` at once (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def carried(path):
    """The entries scripts/cluster-bench.sh wrote into an existing inputs file (bench.sh's runs do not measure
    them, so `capacity inputs --carry` keeps them)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    entries = doc.get("inputs", {}) if isinstance(doc, dict) else {}
    return {k: v for k, v in entries.items() if isinstance(v, dict) and v.get("writer") == CLUSTER_WRITER}


def load_inputs(path):
    """The figures of an inputs file as floats (the curve delivery_us_by_rate, if there, as curve.parse gives it),
    and the whole document; InputsError says what is wrong."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise InputsError("inputs file %s does not exist (scripts/bench.sh writes it; the repository's copy is "
                          "docs/capacity-inputs.json)" % path)
    except OSError as e:
        raise InputsError("inputs file %s cannot be read: %s" % (path, e))
    except ValueError as e:
        raise InputsError("inputs file %s is not valid JSON: %s" % (path, e))
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("inputs"), dict):
        raise InputsError("inputs file %s is not a capacity inputs document (schema %d with an \"inputs\" object)"
                          % (path, SCHEMA))
    values = {}
    missing = []
    for name in REQUIRED:
        entry = doc["inputs"].get(name)
        v = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            missing.append(name)
        else:
            values[name] = float(v)
    fl = doc["inputs"].get("redis_msgs_per_core_floor")
    if isinstance(fl, dict) and isinstance(fl.get("value"), (int, float)) and not isinstance(fl.get("value"), bool) \
            and fl["value"] > 0:
        values["redis_msgs_per_core_floor"] = float(fl["value"])
    if "delivery_us_by_rate" in doc["inputs"]:
        from . import curve  # (curve imports this module)
        values["delivery_us_by_rate"] = curve.parse(doc["inputs"]["delivery_us_by_rate"], path)
    if missing:
        raise InputsError("inputs file %s lacks a usable (non-negative number) value for: %s"
                          % (path, ", ".join(missing)))
    if values["redis_msgs_per_shard"] <= 0:
        raise InputsError("inputs file %s: redis_msgs_per_shard must be above zero" % path)
    return values, doc
