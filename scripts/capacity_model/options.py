"""The plan's command-line options, and the checked number types the commands share.

A module of its own because the plan's options are read twice: from the command line, and by cluster-report,
which builds the plan for a measured run from the very command line it prints (so the two cannot drift).
"""

import argparse
import math
import re

from .inputs import DEFAULT_INPUTS


def positive(kind):
    def conv(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError("not a number: %r" % s)
        if not v > 0 or (isinstance(v, float) and not math.isfinite(v)):
            raise argparse.ArgumentTypeError("must be above zero: %r" % s)
        return v
    return conv


def fraction(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1: %r" % s)
    return v


def plan_parser():
    ap = argparse.ArgumentParser(
        prog="capacity",
        description="wsgate capacity plan from measured per-node figures (docs/scaling.md). "
        "Other commands: 'capacity inputs --help', 'capacity measure-kernel --help', 'capacity pod-target --help'.")
    ap.add_argument("--sockets", type=positive(int), required=True, help="concurrent WebSocket connections")
    ap.add_argument("--groups", type=positive(int), required=True, help="groups with members")
    ap.add_argument("--groups-per-socket", type=positive(float), required=True, help="groups each socket is in")
    ap.add_argument("--publish-rate", type=float, required=True, help="publishes/s over all groups, spread evenly")
    ap.add_argument("--inputs", default=DEFAULT_INPUTS, help="inputs file (default docs/capacity-inputs.json)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("--pod-cpu", type=positive(float), default=2.0, help="CPU request per pod, cores (2)")
    ap.add_argument("--pod-memory-gib", type=positive(float), default=4.0, help="memory limit per pod, GiB (4)")
    ap.add_argument("--cpu-utilisation", type=fraction, default=0.6, help="target CPU utilisation (0.6)")
    ap.add_argument("--memory-utilisation", type=fraction, default=0.7, help="target memory utilisation (0.7)")
    ap.add_argument("--redis-utilisation", type=fraction, default=0.6, help="target Redis shard utilisation (0.6)")
    ap.add_argument("--fd-limit", type=positive(int), default=1048576, help="descriptor limit per pod (1048576)")
    ap.add_argument("--max-connections", type=positive(int), default=100000,
                    help="limits.max_connections per pod (wsgate's default 100000)")
    ap.add_argument("--coalescing", choices=("auto", "yes", "no"), default="auto",
                    help="whether frames coalesce; auto: from the per-socket message rate")
    ap.add_argument("--delivery-us", type=positive(float),
                    help="server CPU-us per delivery, instead of the measured figure the model picks (sensitivity)")
    ap.add_argument("--batched", action="store_true", help="publishers send batches (10+ messages a request)")
    ap.add_argument("--publish-via", choices=("api", "redis"), default="api",
                    help="publishes arrive through the pods' HTTP API, or straight into Redis")
    ap.add_argument("--churn", type=float, default=0.0, help="steady connects/s (cached authentications)")
    ap.add_argument("--reconnect-window", type=positive(float), default=60.0,
                    help="seconds over which a full reconnect spreads (60)")
    ap.add_argument("--pods", type=positive(int),
                    help="evaluate this many pods instead of sizing the fleet (e.g. a measured cluster's 3 nodes)")
    ap.add_argument("--cache-hit-ratio", type=fraction, default=0.0,
                    help="share of reconnecting tokens found in the auth cache (0: auth.cache_ttl is 60 s, so "
                         "long-lived sockets' tokens have left it)")
    return ap



def mebibytes(text):
    """A Kubernetes memory quantity (256Mi, 1Gi, 500M, 268435456) in MiB."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text).strip())
    if not m:
        raise argparse.ArgumentTypeError("not a memory quantity: %r" % text)
    mult = {None: 1, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4,
            "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m.group(2)]
    return float(m.group(1)) * mult / 1024 ** 2
