"""Which router to dial first: the one whose SSH banner arrives soonest.

DIT4C's listener ranked routers with an nmap script timing the SSH banner; here
each router gets a TCP connect plus the first line of its banner, all probed
at once with a deadline. Routers that do not answer go last (they are still
tried: a probe can fail where a real connection would not).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from hostmux.config.layered import parse_host_port

# A router that cannot show its banner in this long is ranked last.
PROBE_TIMEOUT_S = 3.0


async def _latency(server: str) -> float:
    host, port = parse_host_port(server, "router")
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                banner = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return float("inf")
    return time.perf_counter() - started if banner.startswith(b"SSH-") else float("inf")


async def rank_by_latency(servers: Sequence[str]) -> list[str]:
    """``servers`` fastest first (stable for ties)."""
    if len(servers) < 2:
        return list(servers)
    latencies = await asyncio.gather(*(_latency(s) for s in servers))
    order = sorted(range(len(servers)), key=lambda i: (latencies[i], i))
    return [servers[i] for i in order]
