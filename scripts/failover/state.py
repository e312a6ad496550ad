"""The state of one run, shared by the measurements (analysis.py) and the
set-up (run.py): the command line, the nodes and PIDs the script started,
the groups and their masters, the clients, what was published, the
failures and the report's lines."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import NOW, log
from .procs import proc_start, read_pid

if TYPE_CHECKING:
    from .clients import Client
    from .http import RawHttp
    from .publisher import PubRec


class State:
    # Set by the entry point's orchestrate() before the phases.
    api: RawHttp  # publishes through nginx's API port
    pg_start: tuple[int, int, int]  # pg_stat() before the first connection
    t_connected: float  # when every client was subscribed

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ws_url = f"ws://127.0.0.1:{args.lb_ws}/ws"
        self.api_url = f"http://127.0.0.1:{args.lb_api}"
        with open(args.api_key_file) as f:
            self.api_key = f.read().strip()
        with open(args.tokens_file) as f:
            self.tokens = [line.strip() for line in f if line.strip()]
        self.nodes: dict[str, dict] = {}  # node id -> {pid, metrics, start}
        for spec in args.nodes.split(","):
            name, metrics = spec.split(":")
            pid = read_pid(args.run_dir, name)
            self.nodes[name] = {"pid": pid, "metrics": int(metrics), "start": proc_start(pid)}
        self.redis_ports = [int(p) for p in args.redis_ports.split(",")]
        self.prefix = args.prefix
        self.groups: list[str] = []
        self.group_master: dict[str, int] = {}
        self.clients: list[Client] = []
        self.pub: dict[str, list[PubRec]] = {}
        self.pub_inflight = 0
        self.pub_skipped = 0
        self.stopping = False
        self.phase = ""
        self.not_recovered: list = []
        self.failures: list[str] = []
        self.report: list[str] = []
        self.ready_log: dict[str, list[tuple[float, int]]] = {n: [] for n in self.nodes}
        self.dead_nodes: set[str] = set()
        self.t_start = NOW()
        self.results: dict = {}
        self.lag: dict[str, float] = {}

    def is_history(self, g: str) -> bool:
        return g.startswith("fo.h.")

    def channel(self, g: str) -> str:
        return f"{self.prefix}group:{g}"

    def fail(self, msg: str) -> None:
        log("CHECK FAILED: " + msg)
        self.failures.append(msg)

    def out(self, line: str = "") -> None:
        self.report.append(line)
