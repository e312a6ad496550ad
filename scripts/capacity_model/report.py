"""What the plan and pod-target print: the text summary and the JSON document (tests/capacity.rs and
scripts/validate-deploy.sh read the JSON; people read the text).

Apart from the model so that the arithmetic can be reused (cluster-report) without its presentation, and so
that the output formats are in one place.
"""

import json
import math
import os
import sys


def binding_text(p):
    lim = p["pods"]["by_limit"]
    others = ", ".join("%s %d" % (k, v) for k, v in lim.items() if k != p["binding_limit"])
    what = {
        "cpu": "CPU (deliveries and publishes at the target utilisation)",
        "memory": "memory (sockets x per-socket memory at the target utilisation)",
        "descriptors": "descriptors (sockets + overhead against --fd-limit)",
        "max_connections": "limits.max_connections (sockets per pod, --max-connections)",
    }[p["binding_limit"]]
    return "%s: %d pods (others: %s)" % (what, lim[p["binding_limit"]], others)


def fmt(x):
    if isinstance(x, float) and x != math.inf:
        if abs(x) >= 100:
            return "{:,.0f}".format(x)
        return "{:,.2f}".format(x)
    if isinstance(x, int):
        return "{:,}".format(x)
    return str(x)


def print_text(p, source):
    w, po, rd, pg = p["workload"], p["pods"], p["redis"], p["postgres_full_reconnect"]
    print("inputs: %s" % source)
    print("load: %s sockets, %s groups, %s per socket, %s publishes/s -> %s members a group, %s msgs/s per socket, "
          "%s deliveries/s (%s)" % (fmt(w["sockets"]), fmt(w["groups"]), fmt(w["groups_per_socket"]),
                                    fmt(w["publish_rate"]), fmt(w["subscribers_per_group"]),
                                    fmt(w["messages_per_socket_per_s"]), fmt(w["deliveries_per_s"]),
                                    "frames coalesce" if w["coalescing"] else "one frame per write"))
    print("pods: %d x (%s CPU request, %s MiB memory request) = %s CPUs, %s GiB%s" % (
        po["count"], fmt(po["cpu_request_cores"]), fmt(po["memory_request_mib"]), fmt(po["total_cpu_cores"]),
        fmt(po["total_memory_gib"]),
        " (fixed by --pods; the load needs %d)" % po["needed"] if po["fixed"] else ""))
    print("  CPU: %s cores needed (%s), %s us per delivery; %s of the CPUs at load (target %s)" % (
        fmt(po["cpu_cores_needed"]), ", ".join("%s %s" % (k, fmt(v)) for k, v in po["cpu_cores_by_part"].items()),
        fmt(po["cpu_us_per_delivery"]), "{:.0%}".format(po["cpu_utilisation_at_load"]),
        "{:.0%}".format(po["cpu_utilisation_target"])))
    print("  CPU per delivery: %s us, %s" % (fmt(po["cpu_us_per_delivery"]), po["cpu_us_per_delivery_source"]["text"]))
    print("  memory: %s KiB per socket, %s sockets per pod, %s MiB per pod at load" % (
        fmt(po["memory_kib_per_socket"]), fmt(po["sockets_per_pod"]), fmt(po["memory_mib_per_pod_at_load"])))
    print("  descriptors: %s per pod (limit %s)" % (fmt(po["descriptors_per_pod"]), fmt(po["fd_limit"])))
    print("redis: %d shard(s) (pub/sub %d, full reconnect %d); %s msgs/s through Redis, each publish reaching %s "
          "nodes; busiest group %s msgs/s%s" % (
              rd["shards"], rd["shards_for_pubsub"], rd["shards_for_full_reconnect"], fmt(rd["pubsub_msgs_per_s"]),
              fmt(rd["nodes_per_group"]), fmt(rd["busiest_group_msgs_per_s"]),
              "" if rd["busiest_group_fits_one_shard"] else " - MORE THAN ONE SHARD CARRIES: split the group"))
    if rd["shards_for_pubsub_at_measured_floor"] is not None:
        print("  at the measured floor of %s msgs/s per Redis core (a low-load figure, see the inputs file): %d "
              "shard(s) for pub/sub" % (fmt(rd["measured_floor_msgs_per_s"]), rd["shards_for_pubsub_at_measured_floor"]))
    print("postgres, full reconnect in %s s: %s authentications/s, cache hit ratio %s -> %s queries/s, %s cores "
          "(cold cache: %s queries/s); gateway %s cores of %s spare%s" % (
              fmt(pg["reconnect_window_s"]), fmt(pg["authentications_per_s"]), fmt(pg["cache_hit_ratio"]),
              fmt(pg["queries_per_s"]), fmt(pg["cpu_cores"]), fmt(pg["queries_per_s_cold_cache"]),
              fmt(pg["gateway_cores"]), fmt(pg["gateway_spare_cores"]),
              "" if pg["gateway_fits_in_spare"] else
              " - the storm takes at least %s s" % fmt(pg["fastest_full_reconnect_s"] or math.inf)))
    print("binding limit: %s" % binding_text(p))



def print_plan(p, path, doc, as_json):
    """The plan `p`, made from the inputs file `path` (its document `doc`), as text or as JSON."""
    run = doc.get("run", {})
    source = "%s (%s run of %s, commit %s; %s)" % (os.path.relpath(path), run.get("mode", "?"),
                                                  run.get("date", "?"), run.get("commit", "?"),
                                                  run.get("machine", "machine not recorded"))
    if as_json:
        p["inputs"] = {"file": os.path.relpath(path), "run": run,
                       "assumed": sorted(k for k, v in doc["inputs"].items()
                                         if isinstance(v, dict) and not v.get("measured"))}
        p["binding_limit_text"] = binding_text(p)
        json.dump(p, sys.stdout, indent=2, default=lambda x: None)
        sys.stdout.write("\n")
    else:
        print_text(p, source)


def print_pod_target(t, as_json):
    """pod-target's figures `t` (model.pod_target), as text or as JSON."""
    if as_json:
        json.dump(t, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print("pod: %s MiB memory request (limit %s MiB), limits.max_connections %s" % (
        fmt(t["pod"]["memory_request_mib"]), fmt(t["pod"]["memory_limit_mib"]), fmt(t["pod"]["max_connections"])))
    print("memory per socket: %s KiB (%s groups each); %s of the request at target" % (
        fmt(t["memory_kib_per_socket"]), fmt(t["groups_per_socket"]), "{:.0%}".format(t["memory_utilisation"])))
    print("sockets per pod by limit: %s; binding: %s" % (
        ", ".join("%s %s" % (k, fmt(v)) for k, v in t["sockets_by_limit"].items()), t["binding_limit"]))
    print("autoscaling.connections.averageValue: \"%s\" (%s rounded down to a multiple of %s)" % (
        t["average_value"], fmt(t["sockets_per_pod"]), fmt(t["round_to"])))
