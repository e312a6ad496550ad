"""`capacity measure-kernel`: kernel memory per idle TCP socket, on loopback.

Apart because it is the one part that touches the machine (sockets, /proc, rlimits) rather than files; bench.sh
runs it once per benchmark and passes the result to `capacity inputs --kernel`.
"""

import os
import resource
import select
import socket
import statistics
import time

from .inputs import InputsError

SOCKET_CACHES = ("TCP", "TCPv6", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq",
                 "skbuff_head_cache", "request_sock_TCP")


def _slab():
    caches = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith(("slabinfo", "#")):
                continue
            parts = line.split()
            # name active_objs num_objs objsize objperslab pagesperslab : ... : slabdata active num shared
            caches[parts[0]] = int(parts[2]) * int(parts[3])  # bytes in allocated objects
    return caches


def _sockstat_tcp_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    return 0


def _one_round(n):
    before, mem0 = _slab(), _sockstat_tcp_pages()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    ep = select.epoll()
    held = []
    try:
        for _ in range(n):
            c = socket.create_connection(lst.getsockname(), timeout=5)
            s, _ = lst.accept()
            # A request and an answer each way, read completely: an idle
            # socket after its handshake, as a gateway holds it.
            c.sendall(b"x" * 200)
            s.recv(4096)
            s.sendall(b"y" * 150)
            c.recv(4096)
            ep.register(s.fileno(), select.EPOLLIN)
            ep.register(c.fileno(), select.EPOLLIN)
            held += [c, s]
        time.sleep(0.3)
        after, mem1 = _slab(), _sockstat_tcp_pages()
    finally:
        for s in held:
            s.close()
        ep.close()
        lst.close()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    return delta, mem1 - mem0


def measure_kernel(n, rounds):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 64
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise InputsError("measure-kernel needs %d descriptors, the hard limit is %d" % (want, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if not os.access("/proc/slabinfo", os.R_OK):
        raise InputsError("/proc/slabinfo is not readable (needs root); the kernel figure stays assumed")
    per_round, pages = [], []
    breakdown = {k: [] for k in SOCKET_CACHES}
    for _ in range(rounds):
        delta, p = _one_round(n)
        sockets = 2 * n
        # Only the caches a socket allocates from: the total over every cache
        # picks up whatever the machine's other processes did meanwhile.
        per_round.append(sum(max(delta.get(k, 0), 0) for k in SOCKET_CACHES) / sockets / 1024.0)
        for k in SOCKET_CACHES:
            breakdown[k].append(delta.get(k, 0) / sockets / 1024.0)
        pages.append(p)
        time.sleep(0.5)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "connections": n,
        "rounds": rounds,
        "kib_per_socket": round(statistics.median(per_round), 2),
        "rounds_kib_per_socket": [round(x, 2) for x in per_round],
        "breakdown_kib_per_socket": {k: round(statistics.median(v), 2) for k, v in breakdown.items()
                                     if round(statistics.median(v), 2) != 0},
        "sockstat_tcp_mem_pages_delta": int(statistics.median(pages)),
        "kernel": os.uname().release,
    }
