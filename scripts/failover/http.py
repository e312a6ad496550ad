"""A minimal keep-alive HTTP/1.1 client: httpx costs too much CPU per
request for a few hundred requests a second on a busy 2-core machine. Used
for publishing, the presence and registry watch, and polling /readyz."""

from __future__ import annotations

import asyncio
import json

class RawHttp:
    def __init__(self, port: int, key: str | None, size: int, timeout: float) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.timeout = timeout
        self.pool: asyncio.LifoQueue = asyncio.LifoQueue()
        for _ in range(size):
            self.pool.put_nowait(None)
        self.waiting = 0

    @staticmethod
    async def _read(r: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        line = await r.readline()
        if not line:
            raise ConnectionError("closed")
        status = int(line.split()[1])
        length, close = 0, False
        while True:
            h = await r.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and v.strip().lower() == "close":
                close = True
        return status, (await r.readexactly(length)) if length else b"", close

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """(status, body); status 0 when there was no answer in time."""
        self.waiting += 1
        try:
            conn = await self.pool.get()
        finally:
            self.waiting -= 1
        try:
            if conn is None:
                conn = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), self.timeout)
            r, w = conn
            w.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.auth}"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status, data, close = await asyncio.wait_for(self._read(r), self.timeout)
            if close:
                w.close()
                conn = None
            return status, data
        except Exception:
            if conn is not None:
                conn[1].close()
            conn = None
            return 0, b""
        finally:
            self.pool.put_nowait(conn)

    async def get_json(self, path: str):
        st, data = await self.request("GET", path)
        return st, (json.loads(data) if st == 200 and data else None)
