"""The processes the driver may touch: only those scripts/cluster-failover.sh
started, by the PIDs it wrote under RUN_DIR; a PID is checked against its
command line before it is killed, and its start time tells a restart."""

from __future__ import annotations

import os
import signal

def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def proc_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(run: str, name: str) -> int:
    with open(os.path.join(run, f"{name}.pid")) as f:
        return int(f.read().strip())


def write_pid(run_dir: str, name: str, pid: int) -> None:
    with open(os.path.join(run_dir, f"{name}.pid"), "w") as f:
        f.write(str(pid))


def kill_owned(run_dir: str, name: str, must_contain: str) -> int:
    """SIGKILL of the process RUN_DIR/name.pid names, if its command line
    contains `must_contain` (else it is not ours: RuntimeError)."""
    pid = read_pid(run_dir, name)
    cmd = proc_cmdline(pid)
    if must_contain not in cmd:
        raise RuntimeError(f"pid {pid} of {name} is not ours ({cmd[:60]!r})")
    os.kill(pid, signal.SIGKILL)
    return pid
