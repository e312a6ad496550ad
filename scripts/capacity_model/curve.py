"""The CPU per delivery by a node's delivery rate (`delivery_us_by_rate` in the inputs file): how it is read and
checked, looked up for a plan's per-pod rate, and derived from scripts/cluster-bench.sh's `--only curve` runs.

Apart from the model because the curve has three users (the plan, cluster-report's table, cluster-inputs) and a
format of its own: a list of [deliveries/s per node, CPU-us per delivery] pairs rather than one number. A node
pays more per delivery when lightly loaded (every message wakes idle threads) than saturated; the curve says how
much at each load on the machine it was measured on.
"""

import math

from .inputs import CLUSTER_WRITER, InputsError

NAME = "delivery_us_by_rate"
UNIT = "[deliveries/s per node, us]"
WHAT = ("server CPU per delivery by the node's delivery rate, one embedded node, market shape (many groups a "
        "socket, one frame per write, publishes through the API; the source gives the sizes)")
# A point kept up when the node delivered at least this share of what was offered, and the publisher sent at
# least this share of the publishes asked for.
KEEP_UP = 0.95
LABEL = "curve-"


def parse(entry, path):
    """The curve of an inputs file's entry: {"points": [(rate, us), ...] by rising rate, "saturated": whether the
    last point is a saturated node's}; InputsError if it is not a list of positive number pairs."""
    pts = entry.get("value") if isinstance(entry, dict) else None
    ok = isinstance(pts, list) and len(pts) >= 1
    out = []
    for p in pts if ok else []:
        good = (isinstance(p, list) and len(p) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
                        for x in p))
        if not good:
            ok = False
            break
        out.append((float(p[0]), float(p[1])))
    if not ok:
        raise InputsError("inputs file %s: %s must be a list of [deliveries/s per node, us per delivery] pairs of "
                          "positive numbers" % (path, NAME))
    out.sort()
    if len({r for r, _ in out}) != len(out):
        raise InputsError("inputs file %s: %s has two points at one rate" % (path, NAME))
    return {"points": out, "saturated": bool(entry.get("saturated_at_last_point")), "date": entry.get("date")}


def cost(curve, rate):
    """CPU-us per delivery at `rate` deliveries/s per node: interpolated linearly in log(rate) between the two
    points around it, clamped to the end points outside them; with a dict saying which and why."""
    pts = curve["points"]
    lo, hi = pts[0], pts[-1]
    d = {"rate_per_pod": rate, "curve_date": curve.get("date")}
    if rate <= lo[0]:
        d.update(how="below", points=[list(lo)],
                 text="below the curve's lowest measured rate (%s/s): its figure, clamped" % _n(lo[0]))
        return lo[1], d
    if rate >= hi[0]:
        state = ("the node was saturated there: the saturated figure" if curve["saturated"] else
                 "the node still kept up there: its figure, clamped (extrapolated above it)")
        d.update(how="above", points=[list(hi)],
                 text="at or above the curve's highest measured rate (%s/s; %s)" % (_n(hi[0]), state))
        return hi[1], d
    for r0, u0 in pts:
        if rate == r0:
            d.update(how="at", points=[[r0, u0]], text="at the curve's point %s/s" % _n(r0))
            return u0, d
    for (r0, u0), (r1, u1) in zip(pts, pts[1:]):
        if r0 < rate < r1:
            t = (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0))
            d.update(how="interpolated", points=[[r0, u0], [r1, u1]],
                     text="interpolated in log(rate) between the curve's points %s/s (%.2f us) and %s/s (%.2f us)"
                     % (_n(r0), u0, _n(r1), u1))
            return u0 + t * (u1 - u0), d
    raise InputsError("curve lookup fell through at %r" % rate)  # unreachable: the points are sorted


def _n(x):
    return "{:,.0f}".format(x)


# --- scripts/cluster-bench.sh's curve runs -------------------------------------------------------------------------

def point(r):
    """One curve run (a wsgate-bench `groups` row on the embedded node) as a curve point with its context."""
    n = r["nodes"][0]
    wall = r["machine"]["wall_s"]
    asked_pubs = r["params"]["rate"]
    offered = r["deliveries"]["offered_per_s"]
    per_s = r["deliveries"]["per_s"]
    reasons = []
    if per_s < KEEP_UP * offered:
        reasons.append("delivered %s/s of %s/s offered" % (_n(per_s), _n(offered)))
    if r["published"]["rate_msgs_s"] < KEEP_UP * asked_pubs:
        reasons.append("published %s/s of %s/s asked" % (_n(r["published"]["rate_msgs_s"]), _n(asked_pubs)))
    if r["deliveries"]["missing"]:
        reasons.append("%d deliveries missing" % r["deliveries"]["missing"])
    if n.get("dropped"):
        reasons.append("%d dropped by the node" % n["dropped"])
    return {
        "label": r["label"], "sockets": r["sockets"]["ok"], "groups": r["params"]["groups"],
        "per_socket": r["params"]["per_socket"], "publishes_per_s": r["published"]["rate_msgs_s"],
        "publishes_asked_per_s": asked_pubs, "offered_deliveries_per_s": offered, "deliveries_per_s": per_s,
        "cpu_us_per_delivery": n["cpu_us_per_delivery"], "node_cores": round(n["cpu_s"] / wall, 3),
        "machine_busy_cores": r["machine"]["busy_cores"], "other_cores": r["machine"]["other_cores"],
        "latency_p99_ms": r["latency_ms"].get("p99"), "saturated": bool(reasons), "why": "; ".join(reasons),
    }


def shape(p):
    """The load shape of a curve point, in words."""
    return ("%d groups a socket, groups of %.0f members, %.0f messages/s a socket, %.2g publishes/s per group through "
            "the API, the sockets scaled with the rate" % (
                p["per_socket"], p["sockets"] * p["per_socket"] / p["groups"],
                p["publishes_asked_per_s"] * p["per_socket"] / p["groups"], p["publishes_asked_per_s"] / p["groups"]))


def curve_rows(rows):
    return [r for r in rows if r["label"].startswith(LABEL)]


def entry(rows, meta, ref):
    """The inputs entry `delivery_us_by_rate` from the curve runs among `rows` (None without any): the points up
    to and including the first saturated one."""
    pts = []
    for r in curve_rows(rows):
        p = point(r)
        pts.append(p)
        if p["saturated"]:
            break
    if not pts:
        return None
    sat = pts[-1]["saturated"]
    return {
        "value": [[p["deliveries_per_s"], p["cpu_us_per_delivery"]] for p in pts],
        "unit": UNIT, "what": WHAT, "measured": True, "writer": CLUSTER_WRITER,
        "date": meta.get("date"),
        "command": "scripts/cluster-bench.sh --only curve --inputs-out docs/capacity-inputs.json",
        "saturated_at_last_point": sat,
        "source": "%s (%s): rows %s: one embedded node alone (SQLite, the in-process broker), %s, about %.0f s a "
        "point; each point is the node's deliveries/s (wsgate_messages_delivered_total) and its utime+stime over "
        "them. %s" % (
            CLUSTER_WRITER, ref, ", ".join(p["label"] for p in pts), shape(pts[0]),
            curve_rows(rows)[0]["published"]["elapsed_s"],
            "The last point's node could not keep up (%s): its rate is the most it delivered here, with the load "
            "generator and everything else on the same cores" % pts[-1]["why"] if sat else
            "Every point kept up: above the last one the figure is clamped, not measured"),
        "points": pts,
    }


def report(rows):
    """cluster-report's section for the curve runs (Markdown), or ''."""
    pts = [point(r) for r in curve_rows(rows)]
    if not pts:
        return ""
    o = ["## CPU per delivery by load: one embedded node\n\n",
         "The node alone (SQLite, in-process broker): %s; %.0f s a point. A point is saturated when the node "
         "delivered under %.0f %% of what was offered or the publisher sent under %.0f %% of what it was asked "
         "(the climb stops there).\n\n"
         % (shape(pts[0]), curve_rows(rows)[0]["published"]["elapsed_s"], KEEP_UP * 100, KEEP_UP * 100),
         "| run | sockets | groups | publishes/s | deliveries/s (offered) | node CPU per delivery | node cores | "
         "machine busy (other) | p99 latency | kept up? |\n|---|---|---|---|---|---|---|---|---|---|\n"]
    for p in pts:
        o.append("| %s | %s | %s | %s | %s (%s) | %.2f us | %.3f | %.2f (%.2f) | %s ms | %s |\n" % (
            p["label"], _n(p["sockets"]), _n(p["groups"]), _n(p["publishes_per_s"]), _n(p["deliveries_per_s"]),
            _n(p["offered_deliveries_per_s"]), p["cpu_us_per_delivery"], p["node_cores"], p["machine_busy_cores"],
            p["other_cores"], p["latency_p99_ms"], "no: " + p["why"] if p["saturated"] else "yes"))
    return "".join(o) + "\n"
