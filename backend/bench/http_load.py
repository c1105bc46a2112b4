"""The load generator of `make bench-http`: a separate process, keep-alive HTTP/1.1 on loopback.

A deliberately small client (asyncio streams, requests encoded once, responses read by
Content-Length) so the load process spends little of the machine's two cores: the server
under test is what should be measured. One process serves every cell of the benchmark; the
parent sends it a `Cell` over a pipe and gets a `CellResult` back.

Connections are opened once per server and kept for every cell, spread evenly over the
server's worker processes. Which worker accepts a new connection is the kernel's and the
workers' race: 16 connections opened afresh split anywhere from 8/8 to 14/2 (measured), and a
slice whose connections crowd one worker while the other idles measured that split, not the
route. So each connection is probed once to learn which worker holds it (the worker's own
socket table, via psutil), surplus ones on a crowded worker are closed and reopened, and the
pool is ordered so that any even number of connections is half on each worker.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import psutil

# Opening attempts per connection wanted before a pool settles for an uneven split.
_ATTEMPTS_PER_CONNECTION = 20


@dataclass(frozen=True)
class Cell:
    """What to send: requests (cycled through), how many at once, for how long, at most how many."""

    host: str
    port: int
    requests: list[bytes]
    concurrency: int
    seconds: float
    max_requests: int
    # The server's worker processes, to spread the connections over; empty: no balancing.
    worker_pids: tuple[int, ...] = ()
    # A request any worker answers cheaply, sent once on each new connection to learn its worker.
    probe: bytes = b""


@dataclass
class CellResult:
    """Latencies (seconds) of the successful requests, and what went wrong with the others."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # non-2xx answers and broken connections
    error_samples: list[str] = field(default_factory=list)
    split: tuple[int, ...] = ()  # the cell's connections per worker (when balanced)


def encode_request(
    method: str, path: str, headers: dict[str, str], body: bytes = b"", host: str = "127.0.0.1"
) -> bytes:
    """One HTTP/1.1 request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, header_block = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    close = False
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not supported by this client")
    body = await reader.readexactly(length) if length else b""
    return status, body, close


_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ConnectionPool:
    """Keep-alive connections to one server, half on each worker in any even-length prefix."""

    def __init__(self, host: str, port: int, worker_pids: tuple[int, ...], probe: bytes) -> None:
        self.host, self.port, self.probe = host, port, probe
        self.workers = [psutil.Process(pid) for pid in worker_pids]
        self.by_worker: dict[int, list[_Stream]] = {pid: [] for pid in worker_pids}
        self.unplaced: list[_Stream] = []  # no balancing: in opening order

    def streams(self, count: int) -> tuple[list[_Stream], tuple[int, ...]]:
        """The first `count` connections, and how many of them each worker holds."""
        if not self.workers:
            return self.unplaced[:count], ()
        interleaved = [
            stream
            for group in itertools.zip_longest(*self.by_worker.values())
            for stream in group
            if stream is not None
        ]
        chosen = interleaved[:count]
        split = tuple(
            sum(1 for stream in chosen if stream in streams) for streams in self.by_worker.values()
        )
        return chosen, split

    async def grow(self, count: int) -> None:
        """Open connections until there are `count` (ceil(count / workers) on each worker)."""
        if not self.workers:
            while len(self.unplaced) < count:
                self.unplaced.append(await asyncio.open_connection(self.host, self.port))
            return
        per_worker = -(-count // len(self.workers))
        for _ in range(count * _ATTEMPTS_PER_CONNECTION):
            if all(len(streams) >= per_worker for streams in self.by_worker.values()):
                return
            stream = await asyncio.open_connection(self.host, self.port)
            worker = await self._worker_of(stream)
            if worker is not None and len(self.by_worker[worker]) < per_worker:
                self.by_worker[worker].append(stream)
            else:
                stream[1].close()
        # The kernel kept handing connections to one worker: settle for the split there is.
        while sum(len(streams) for streams in self.by_worker.values()) < count:
            stream = await asyncio.open_connection(self.host, self.port)
            worker = await self._worker_of(stream)
            self.by_worker[worker if worker is not None else self.workers[0].pid].append(stream)

    def replace(self, old: _Stream, new: _Stream) -> None:
        """Put a reopened connection where a broken one was (its worker may differ)."""
        for streams in [*self.by_worker.values(), self.unplaced]:
            if old in streams:
                streams[streams.index(old)] = new
                return

    async def _worker_of(self, stream: _Stream) -> int | None:
        reader, writer = stream
        writer.write(self.probe)
        await _read_response(reader)  # answered: a worker has accepted it
        local_port = writer.get_extra_info("sockname")[1]
        for worker in self.workers:
            for connection in worker.net_connections("tcp"):
                if connection.raddr and connection.raddr.port == local_port:
                    return worker.pid
        return None


_POOLS: dict[tuple[str, int], ConnectionPool] = {}


async def _run(cell: Cell) -> CellResult:
    result = CellResult()
    pool = _POOLS.get((cell.host, cell.port))
    if pool is None:
        pool = ConnectionPool(cell.host, cell.port, cell.worker_pids, cell.probe)
        _POOLS[(cell.host, cell.port)] = pool
    await pool.grow(cell.concurrency)
    streams, result.split = pool.streams(cell.concurrency)
    deadline = time.perf_counter() + cell.seconds
    sent = 0

    async def worker(offset: int) -> None:
        nonlocal sent
        stream: _Stream | None = streams[offset]
        index = offset
        while sent < cell.max_requests and time.perf_counter() < deadline:
            sent += 1
            request = cell.requests[index % len(cell.requests)]
            index += cell.concurrency
            try:
                if stream is None:
                    stream = await asyncio.open_connection(cell.host, cell.port)
                    pool.replace(streams[offset], stream)
                    streams[offset] = stream
                reader, writer = stream
                started = time.perf_counter()
                writer.write(request)
                status, body, close = await _read_response(reader)
                latency = time.perf_counter() - started
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{type(exc).__name__}: {exc}")
                if stream is not None:
                    stream[1].close()
                stream = None
                continue
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                result.latencies.append(latency)
            else:
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{status}: {body[:200]!r}")
            if close:
                stream[1].close()
                stream = None

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(cell.concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


async def _serve(connection: Connection) -> None:
    # One event loop for the process's life: the pools' connections belong to it.
    while True:
        cell = await asyncio.to_thread(connection.recv)
        if cell is None:
            for pool in _POOLS.values():
                for streams in [*pool.by_worker.values(), pool.unplaced]:
                    for _, writer in streams:
                        writer.close()
            return
        connection.send(await _run(cell))


def serve(connection: Connection) -> None:
    """The load process's loop: run each Cell received, send back its CellResult; None ends."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        runner = asyncio.run
    runner(_serve(connection))
