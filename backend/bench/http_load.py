"""The load generator of `make bench-http`: a separate process, keep-alive HTTP/1.1 on loopback.

A deliberately small client (asyncio streams, requests encoded once, responses read by
Content-Length) so the load process spends little of the machine's two cores: the server
under test is what should be measured. One process serves every cell of the benchmark; the
parent sends it a `Cell` over a pipe and gets a `CellResult` back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection


@dataclass(frozen=True)
class Cell:
    """What to send: requests (cycled through), how many at once, for how long, at most how many."""

    host: str
    port: int
    requests: list[bytes]
    concurrency: int
    seconds: float
    max_requests: int


@dataclass
class CellResult:
    """Latencies (seconds) of the successful requests, and what went wrong with the others."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # non-2xx answers and broken connections
    error_samples: list[str] = field(default_factory=list)


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


async def _run(cell: Cell) -> CellResult:
    result = CellResult()
    deadline = time.perf_counter() + cell.seconds
    sent = 0

    async def worker(offset: int) -> None:
        nonlocal sent
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        index = offset
        while sent < cell.max_requests and time.perf_counter() < deadline:
            sent += 1
            request = cell.requests[index % len(cell.requests)]
            index += cell.concurrency
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(cell.host, cell.port)
                started = time.perf_counter()
                writer.write(request)
                status, body, close = await _read_response(reader)
                latency = time.perf_counter() - started
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                result.latencies.append(latency)
            else:
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{status}: {body[:200]!r}")
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(cell.concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


def serve(connection: Connection) -> None:
    """The load process's loop: run each Cell received, send back its CellResult; None ends."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        runner = asyncio.run
    while True:
        cell = connection.recv()
        if cell is None:
            return
        connection.send(runner(_run(cell)))
