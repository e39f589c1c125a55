#!/usr/bin/env python3
"""benches/lib/slow_clients.py: the attack of benches/slow-clients.sh against one proxy.

Opens BODY slow-body clients (a POST declaring 1000 bytes that sends 10, then 1 byte every
5 s) and READ slow-read clients (a GET of the first READ_BYTES of /1m on a 4 KiB receive buffer
that reads 1 KiB every 5 s), HTTP/1.1 over TLS, while one ordinary client GETs / on a new connection every 50 ms.
After the clients are in and SETTLE seconds more, it samples the proxy's resident memory (the
summed VmRSS of PIDS) and its connections to the origin port; at SECS it closes everything and
prints one JSON line:
  held      slow clients connected at the sample (connected: all that got in)
  origin    the proxy's established connections to the origin at the sample
  rss_kb    proxy RSS at the sample, minus RSS before the attack
  ok/total  ordinary requests answered 2xx, of those sent during the attack
Every wait is bounded: a connection or request that takes over 5 s counts as failed.
"""

import argparse
import asyncio
import json
import socket
import ssl
import subprocess
import time

HOST = "bench.test"


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def origin_connections(origin_port):
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{origin_port} )"],
        capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


class Attack:
    def __init__(self, args):
        self.args = args
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.connected = 0  # slow clients that got in, ever
        self.open = 0  # slow clients connected now
        self.ok = 0
        self.total = 0
        self.handshakes = asyncio.Semaphore(64)
        self.end = 0.0

    async def connect(self, rcvbuf=None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        async with self.handshakes:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", self.args.port)), 5)
            return await asyncio.wait_for(asyncio.open_connection(
                sock=sock, ssl=self.ctx, server_hostname=HOST, limit=4096), 5)

    async def until_end(self, step):
        while time.monotonic() + step < self.end:
            await asyncio.sleep(step)
            yield

    async def slow_body(self):
        try:
            reader, writer = await self.connect()
            writer.write(f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n"
                         .encode() + b"x" * 10)
            await writer.drain()
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            return
        self.connected += 1
        self.open += 1
        try:
            async for _ in self.until_end(5):
                writer.write(b"x")
                await asyncio.wait_for(writer.drain(), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.transport.abort()

    async def slow_read(self):
        try:
            reader, writer = await self.connect(rcvbuf=4096)
            writer.write(f"GET /1m HTTP/1.1\r\nHost: {HOST}\r\n"
                         f"Range: bytes=0-{self.args.read_bytes - 1}\r\n\r\n".encode())
            await writer.drain()
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            return
        self.connected += 1
        self.open += 1
        try:
            async for _ in self.until_end(5):
                if not await asyncio.wait_for(reader.read(1024), 5):
                    break  # the proxy closed it
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.transport.abort()

    async def ordinary(self):
        async for _ in self.until_end(0.05):
            self.total += 1
            try:
                reader, writer = await self.connect()
                writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                             .encode())
                await writer.drain()
                status = await asyncio.wait_for(reader.readline(), 5)
                if status.split()[1:2] and status.split()[1].startswith(b"2"):
                    self.ok += 1
                writer.transport.abort()
            except (OSError, asyncio.TimeoutError, ssl.SSLError, IndexError):
                pass

    async def run(self):
        args = self.args
        base = rss_kb(args.pids)
        self.end = time.monotonic() + args.secs
        tasks = [asyncio.create_task(self.ordinary())]
        tasks += [asyncio.create_task(self.slow_body()) for _ in range(args.body)]
        tasks += [asyncio.create_task(self.slow_read()) for _ in range(args.read)]
        want = args.body + args.read
        while self.connected < want and time.monotonic() + args.settle < self.end:
            await asyncio.sleep(0.2)
        await asyncio.sleep(args.settle)
        sample = {
            "held": self.open,
            "connected": self.connected,
            "origin": origin_connections(args.origin_port),
            "rss_kb": rss_kb(args.pids) - base,
        }
        await asyncio.gather(*tasks)
        sample.update(ok=self.ok, total=self.total)
        print(json.dumps(sample))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--origin-port", type=int, default=18080)
    parser.add_argument("--pids", type=int, nargs="+", required=True)
    parser.add_argument("--body", type=int, default=1000)
    parser.add_argument("--read", type=int, default=1000)
    parser.add_argument("--read-bytes", type=int, default=1 << 20)
    parser.add_argument("--secs", type=float, default=30)
    parser.add_argument("--settle", type=float, default=3)
    asyncio.run(Attack(parser.parse_args()).run())


if __name__ == "__main__":
    main()
