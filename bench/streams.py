"""Thousands of idle event streams: what they cost the API and the requests beside them (issue 10).

Starts ``difflane serve --workers 0`` (SQLite, no worker: every job stays queued, so every stream
stays open and idle), submits one job per stream spread over several principals
(``X-Difflane-Principal``, auth=none; the per-principal stream cap is lifted with
``DIFFLANE_LIMIT_EVENT_STREAMS=0``), then for each N opens streams up to N and measures:

- ``/livez`` and ``GET /v1/jobs/{id}`` latency (p50, p99, max) of sequential requests on one
  kept-alive connection while the N streams stay open;
- the API process's CPU seconds per second (utime + stime from ``/proc/PID/stat``) over a quiet
  window with only the streams open.

The client is raw asyncio sockets speaking HTTP/1.1 (one ``asyncio.Protocol`` per stream that only
counts bytes), the cheapest client that still holds a real connection per stream. Each stream is a
file descriptor on both sides: the soft ``RLIMIT_NOFILE`` is raised to the hard limit here, and the
server inherits it.

    .venv/bin/python bench/streams.py                # N = 0, 1000, 2000, 5000
    .venv/bin/python bench/streams.py --counts 0,500 --samples 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from pathlib import Path

from bench.harness import percentile, platform

PRINCIPALS = 10
BODY = json.dumps({"model": "tiny", "prompt": "an idle fox"}).encode()


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors this run needs")
    return target


def principal(i: int) -> str:
    return f"bench/p{i % PRINCIPALS}"


class Connection:
    """One kept-alive HTTP/1.1 connection for sequential requests (Content-Length bodies only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, method: str, path: str, who: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nX-Difflane-Principal: {who}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class Stream(asyncio.Protocol):
    """An open event stream that only counts what arrives."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.first_event: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if not self.first_event.done() and b"event: state" in data:
            self.first_event.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first_event.done():
            self.first_event.set_exception(ConnectionError("stream closed before its first event"))


async def submit(host: str, port: int, count: int, parallel: int = 8) -> list[str]:
    ids: list[str] = [""] * count

    async def one_lane(k: int) -> None:
        conn = await Connection.open(host, port)
        for i in range(k, count, parallel):
            status, body = await conn.request("POST", "/v1/jobs", principal(i), BODY)
            if status != 202 and status != 201:
                raise SystemExit(f"submit answered {status}: {body[:200]!r}")
            ids[i] = json.loads(body)["id"]
        conn.close()

    await asyncio.gather(*(one_lane(k) for k in range(parallel)))
    return ids


async def open_streams(host: str, port: int, ids: list[str], start: int, stop: int) -> list[Stream]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(100)

    async def one(i: int) -> Stream:
        request = (
            f"GET /v1/jobs/{ids[i]}/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
            f"X-Difflane-Principal: {principal(i)}\r\n\r\n"
        ).encode()
        async with gate:
            _, stream = await loop.create_connection(lambda: Stream(request), host, port)
            await asyncio.wait_for(stream.first_event, 60)
        return stream

    return list(await asyncio.gather(*(one(i) for i in range(start, stop))))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def api_pid(port: int) -> int:
    """The ``difflane serve`` process listening on ``port`` (the API runs in it with one API process)."""
    wanted = ["serve", "--port", str(port)]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if any(args[i : i + 3] == wanted for i in range(len(args))):
                return int(entry.name)
    raise SystemExit("could not find the API process")


async def latencies(conn: Connection, path: str, who: str, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        status, _ = await conn.request("GET", path, who)
        out.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise SystemExit(f"GET {path} answered {status}")
        await asyncio.sleep(0.005)  # a steady probe, not a load test
    return out


def summary(values: list[float]) -> str:
    return f"{percentile(values, 50):6.1f} {percentile(values, 99):6.1f} {max(values):7.1f}"


async def run(counts: list[int], samples: int, quiet_s: float, host: str, port: int) -> None:
    pid = api_pid(port)
    ids = await submit(host, port, max(max(counts), 1))
    streams: list[Stream] = []
    print(f"{'streams':>7} | livez p50 p99 max (ms) | GET job p50 p99 max (ms) | API CPU s/s | load 1m")
    for n in counts:
        if n > len(streams):
            streams += await open_streams(host, port, ids, len(streams), n)
        await asyncio.sleep(1.0)  # let the opening burst settle
        before, started = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(quiet_s)
        cpu = (cpu_seconds(pid) - before) / (time.monotonic() - started)
        probe = await Connection.open(host, port)  # fresh: the server closes connections idle for 5 s
        live = await latencies(probe, "/livez", principal(0), samples)
        job = await latencies(probe, f"/v1/jobs/{ids[0]}", principal(0), samples)
        probe.close()
        closed = sum(1 for s in streams if s.transport is None or s.transport.is_closing())
        note = f" ({closed} closed)" if closed else ""
        print(
            f"{n:7d} | {summary(live)} | {summary(job)}    | {cpu:10.3f}  | {os.getloadavg()[0]:.2f}{note}",
            flush=True,
        )
    for s in streams:
        if s.transport is not None:
            s.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="0,1000,2000,5000", help="stream counts to measure at, ascending")
    parser.add_argument("--samples", type=int, default=200, help="requests of each kind per count")
    parser.add_argument("--quiet", type=float, default=5.0, help="seconds of idle streams to take the CPU over")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    limit = raise_fd_limit(2 * max(counts) + 200)  # both ends of each stream live on this machine
    print(f"RLIMIT_NOFILE soft limit {limit}; {PRINCIPALS} principals; load {os.getloadavg()}")
    settings = {
        "limit_event_streams": "0",
        "limit_outstanding_jobs": "0",
        "limit_submit_rate": "0",
        "limit_queued_per_lane": "0",
    }
    with platform(0, **settings) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        asyncio.run(run(counts, args.samples, args.quiet, host, int(port)))


if __name__ == "__main__":
    main()
