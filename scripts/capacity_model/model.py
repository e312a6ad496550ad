"""The capacity model's arithmetic: a workload and the per-node figures in, pods, Redis shards and the
PostgreSQL load of a full reconnect out (the plan), and the connections per pod the chart's HPA targets.

Kept free of files and printing so that the plan, pod-target and cluster-report (which compares the plan with
a measured run) all use the same numbers; docs/scaling.md explains each step.
"""

import math

from .curve import cost as curve_cost
from .inputs import InputsError
from .report import fmt

# At most this many raises of the pod count while looking for the CPU's (each raises it by one or more).
MAX_STEPS = 100000


def nodes_holding(pods, subscribers):
    """Expected number of pods with at least one member of a group of `subscribers`, spread evenly at random."""
    if pods <= 1 or subscribers <= 0:
        return min(1.0, float(pods)) if subscribers > 0 else 0.0
    return pods * (1.0 - (1.0 - 1.0 / pods) ** subscribers)


def plan(w, inp):
    """The capacity plan for workload `w` (a dict of the command-line options) and inputs `inp`."""
    n, g, k, r = w["sockets"], w["groups"], w["groups_per_socket"], w["publish_rate"]
    subs = n * k / g  # average members of a group
    per_socket = r * k / g  # messages/s a socket receives
    deliveries = r * subs
    if w["coalescing"] == "auto":
        coalesce = per_socket >= inp["coalescing_min_msgs_per_socket"]
    else:
        coalesce = w["coalescing"] == "yes"

    curve = inp.get("delivery_us_by_rate")

    def delivery_cost(pods):
        """CPU-us per delivery at `pods` pods, and where it comes from (a dict, printed with the plan)."""
        if w.get("delivery_us") is not None:
            return w["delivery_us"], {"from": "--delivery-us", "text": "given by --delivery-us"}
        if not coalesce:
            if curve is not None:
                us, how = curve_cost(curve, deliveries / pods)
                how.update({"from": "delivery_us_by_rate", "text": "the measured curve at %s deliveries/s per pod, %s"
                            % (fmt(deliveries / pods), how["text"])})
                return us, how
            return inp["delivery_us_non_coalescing"], {
                "from": "delivery_us_non_coalescing",
                "text": "delivery_us_non_coalescing (measured on a saturated node; the inputs have no curve)"}
        if w["batched"]:
            name = "delivery_us_batch" if pods == 1 else "delivery_us_batch_redis"
        else:
            name = "delivery_us_coalescing" if pods == 1 else "delivery_us_coalescing_redis"
        return inp[name], {"from": name, "text": "%s (frames coalesce)" % name}

    def delivery_us(pods):
        return delivery_cost(pods)[0]

    def cpu_parts(pods):
        nodes = nodes_holding(pods, subs)
        parts = {
            "deliveries": deliveries * delivery_us(pods),
            "publish_api": r * inp["publish_api_us_per_message"] if w["publish_via"] == "api" else 0.0,
            "redis_receive": r * nodes * inp["redis_receive_us_per_message"],
            "connect_churn": w["churn"] * inp["auth_us_cached"],
        }
        return {key: v / 1e6 for key, v in parts.items()}  # cores

    cpu_cap = w["pod_cpu"] * w["cpu_utilisation"]
    mem_socket_kib = (inp["rss_kib_per_idle_socket"] + k * inp["membership_kib"] + inp["kernel_kib_per_socket"]
                      + inp["kernel_buffer_kib_per_socket"])
    mem_budget_mib = w["pod_memory_gib"] * 1024.0 * w["memory_utilisation"] - inp["rss_base_mib"]
    if mem_budget_mib <= 0:
        raise InputsError("--pod-memory-gib x --memory-utilisation leaves nothing above the base RSS")
    by_memory = math.ceil(n * mem_socket_kib / 1024.0 / mem_budget_mib)
    fd_room = w["fd_limit"] - inp["descriptor_overhead"]
    if fd_room <= 0:
        raise InputsError("--fd-limit is below the descriptor overhead")
    by_descriptors = math.ceil(n / fd_room)
    by_connections = math.ceil(n / w["max_connections"])
    # CPU depends on the pod count (Redis messages reach more nodes, coalescing
    # is measured lower across nodes, and on the curve a pod with fewer
    # deliveries pays more for each): raise the count until it fits. The CPU
    # needed never falls as pods are added, so the jump to ceil(need / cap)
    # skips no count that fits; the bound only guards against a curve that
    # breaks that.
    def fits(pods):
        return sum(cpu_parts(pods).values()) <= pods * cpu_cap + 1e-9

    def raise_until_fits(pods):
        for _ in range(MAX_STEPS):
            if fits(pods):
                return pods
            pods = max(pods + 1, math.ceil(sum(cpu_parts(pods).values()) / cpu_cap))
        raise InputsError("the pod count by CPU did not settle in %d steps (is the curve %s sane?)"
                          % (MAX_STEPS, "delivery_us_by_rate"))

    by_cpu = raise_until_fits(max(1, math.ceil(sum(cpu_parts(1).values()) / cpu_cap)))
    limits = {
        "cpu": by_cpu,
        "memory": by_memory,
        "descriptors": by_descriptors,
        "max_connections": by_connections,
    }
    needed = max(limits.values())
    if not fits(needed):  # only with a curve that is not monotonic: then CPU binds at the count that fits
        needed = limits["cpu"] = raise_until_fits(needed)
    # --pods N evaluates a given fleet (e.g. the 3 nodes of scripts/cluster-bench.sh)
    # instead of sizing one: every figure below is then at N pods.
    pods = w["pods"] if w.get("pods") else needed
    # The binding limit: the one that asks for the most pods (CPU first on a tie).
    binding = max(limits, key=lambda key: (limits[key], key == "cpu"))
    parts = cpu_parts(pods)
    cores = sum(parts.values())
    sockets_pod = math.ceil(n / pods)
    mem_pod_mib = inp["rss_base_mib"] + sockets_pod * mem_socket_kib / 1024.0
    mem_request_mib = math.ceil(mem_pod_mib / w["memory_utilisation"])

    # Redis: each publish goes in once and out once to every node subscribed to its group.
    nodes = nodes_holding(pods, subs)
    # (A plan is for nodes over Redis, even a plan of one pod.)
    redis_msgs = r * (1.0 + nodes)
    shard_cap = inp["redis_msgs_per_shard"] * w["redis_utilisation"]
    shards_pubsub = max(1, math.ceil(redis_msgs / shard_cap))
    floor = inp.get("redis_msgs_per_core_floor")
    shards_floor = max(1, math.ceil(redis_msgs / (floor * w["redis_utilisation"]))) if floor else None
    per_group_msgs = (r / g) * (1.0 + nodes)

    # A full reconnect: every socket authenticates again within the window.
    storm = n / w["reconnect_window"]
    hit = w["cache_hit_ratio"]
    misses = storm * (1.0 - hit)
    gw_storm_cores = storm * (hit * inp["auth_us_cached"] + (1.0 - hit) * inp["auth_us_uncached"]) / 1e6
    spare = pods * w["pod_cpu"] - cores
    storm_redis_cores = storm * inp["redis_us_per_connect"] / 1e6
    shards_storm = max(1, math.ceil(storm_redis_cores / w["redis_utilisation"]))
    shards = max(shards_pubsub, shards_storm)
    full_reconnect_s = (n * (hit * inp["auth_us_cached"] + (1.0 - hit) * inp["auth_us_uncached"]) / 1e6 / spare
                        if spare > 0 else None)

    return {
        "workload": {
            "sockets": n, "groups": g, "groups_per_socket": k, "publish_rate": r,
            "subscribers_per_group": subs, "messages_per_socket_per_s": per_socket, "deliveries_per_s": deliveries,
            "coalescing": coalesce, "coalescing_rule": w["coalescing"], "batched": w["batched"],
            "publish_via": w["publish_via"], "connect_churn_per_s": w["churn"],
        },
        "pods": {
            "count": pods,
            "fixed": bool(w.get("pods")),
            "needed": needed,
            "by_limit": limits,
            "cpu_request_cores": w["pod_cpu"],
            "memory_request_mib": mem_request_mib,
            "memory_limit_mib": round(w["pod_memory_gib"] * 1024),
            "total_cpu_cores": pods * w["pod_cpu"],
            "total_memory_gib": round(pods * mem_request_mib / 1024.0, 1),
            "sockets_per_pod": sockets_pod,
            "descriptors_per_pod": sockets_pod + int(inp["descriptor_overhead"]),
            "fd_limit": w["fd_limit"],
            "max_connections": w["max_connections"],
            "cpu_us_per_delivery": delivery_us(pods),
            # Which figure that is and why (the curve's point, the per-pod rate).
            "cpu_us_per_delivery_source": delivery_cost(pods)[1],
            # Every part of the CPU (publish API, Redis receive, churn) per
            # delivery: what a node's CPU / its deliveries measures.
            "cpu_us_per_delivery_all_in": cores * 1e6 / deliveries if deliveries > 0 else None,
            "cpu_cores_per_pod": cores / pods,
            "cpu_cores_needed": cores,
            "cpu_cores_by_part": parts,
            "cpu_capacity_at_target": pods * cpu_cap,
            "cpu_utilisation_target": w["cpu_utilisation"],
            "cpu_utilisation_at_load": cores / (pods * w["pod_cpu"]),
            "memory_kib_per_socket": mem_socket_kib,
            "memory_mib_per_pod_at_load": mem_pod_mib,
            "memory_utilisation_target": w["memory_utilisation"],
        },
        "redis": {
            "shards": shards,
            "shards_for_pubsub": shards_pubsub,
            "shards_for_full_reconnect": shards_storm,
            # With the measured floor of a core's pub/sub messages/s instead of the assumed per-shard figure.
            "shards_for_pubsub_at_measured_floor": shards_floor,
            "measured_floor_msgs_per_s": floor,
            "nodes_per_group": nodes,
            "pubsub_msgs_per_s": redis_msgs,
            # One shard is one Redis core: its CPU is its messages / its capacity.
            "cpu_us_per_message": 1e6 / inp["redis_msgs_per_shard"],
            "cpu_us_per_publish": (1.0 + nodes) * 1e6 / inp["redis_msgs_per_shard"],
            "cpu_cores": redis_msgs / inp["redis_msgs_per_shard"],
            "per_shard_capacity_msgs_per_s": inp["redis_msgs_per_shard"],
            "per_shard_capacity_at_target": shard_cap,
            "busiest_group_msgs_per_s": per_group_msgs,
            "busiest_group_fits_one_shard": per_group_msgs <= shard_cap,
            "full_reconnect_cores": storm_redis_cores,
        },
        "postgres_full_reconnect": {
            "reconnect_window_s": w["reconnect_window"],
            "authentications_per_s": storm,
            "cache_hit_ratio": hit,
            "uncached_per_s": misses,
            "queries_per_s": misses * inp["postgres_queries_per_miss"],
            "cpu_cores": misses * inp["postgres_us_per_miss"] / 1e6,
            "queries_per_s_cold_cache": storm * inp["postgres_queries_per_miss"],
            "gateway_cores": gw_storm_cores,
            "gateway_spare_cores": spare,
            "gateway_fits_in_spare": gw_storm_cores <= spare,
            "fastest_full_reconnect_s": full_reconnect_s,
        },
        "binding_limit": binding,
    }



def pod_target(inp, w):
    """Authenticated sockets per pod at which the HPA should add pods: the most a pod holds with its memory at
    the target share of its memory request (the plan's rule: request = memory at load / utilisation), capped by
    limits.max_connections and the descriptors. CPU is left to the HPA's CPU metric (it depends on traffic)."""
    mem_socket_kib = (inp["rss_kib_per_idle_socket"] + w["groups_per_socket"] * inp["membership_kib"]
                      + inp["kernel_kib_per_socket"] + inp["kernel_buffer_kib_per_socket"])
    request, limit = w["memory_request_mib"], w["memory_limit_mib"]
    if limit < request:
        raise InputsError("the memory limit (%s MiB) is below the request (%s MiB)" % (fmt(limit), fmt(request)))
    budget = request * w["memory_utilisation"] - inp["rss_base_mib"]
    if budget <= 0:
        raise InputsError("the memory request x utilisation leaves nothing above the base RSS")
    by = {
        "memory": budget * 1024.0 / mem_socket_kib,
        "max_connections": float(w["max_connections"]),
        "descriptors": float(w["fd_limit"] - inp["descriptor_overhead"]),
    }
    binding = min(by, key=by.get)
    sockets = by[binding]
    step = w["round_to"]
    return {
        "pod": {"memory_request_mib": request, "memory_limit_mib": limit, "max_connections": w["max_connections"],
                "fd_limit": w["fd_limit"]},
        "groups_per_socket": w["groups_per_socket"],
        "memory_kib_per_socket": mem_socket_kib,
        "memory_utilisation": w["memory_utilisation"],
        "sockets_by_limit": by,
        "binding_limit": binding,
        "sockets_per_pod": sockets,
        "memory_mib_at_target": inp["rss_base_mib"] + sockets * mem_socket_kib / 1024.0,
        "round_to": step,
        "average_value": str(int(math.floor(sockets / step) * step)),
    }
