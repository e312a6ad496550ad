"""Redis Cluster helpers: key slots, `redis-cli` calls, the parsed
`CLUSTER NODES` view, and starting a redis-server of the run again (the
master-loss phase brings its victim back as a replica)."""

from __future__ import annotations

import os
import subprocess
from argparse import Namespace
from dataclasses import dataclass

from .procs import write_pid

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


def start_redis(args: Namespace, port: int) -> int:
    """Starts the cluster node on `port` again with the script's settings and
    records its PID in RUN_DIR (so the script's clean-up stops it)."""
    d = os.path.join(args.redis_dir, str(port))
    logf = open(os.path.join(args.log_dir, f"redis-{port}.log"), "a")
    p = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", d, "--cluster-enabled", "yes",
         "--cluster-config-file", os.path.join(d, "nodes.conf"),
         "--cluster-node-timeout", str(args.node_timeout_ms)],
        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    write_pid(args.run_dir, f"redis-{port}", p.pid)
    return p.pid
