"""Micro benchmark of the ClientHello reader (hostmux/tls_hello.py): µs per hello.

    .venv/bin/python bench/tls_hello.py

Reads the captured curl and openssl hellos (tests/unit/client_hellos/) fed at
once, in two halves, and one byte at a time; prints the median of 5 repeats
of CPU time per hello. Pure CPU, no sockets, a few seconds.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hostmux.tls_hello import ClientHello, HelloReader  # noqa: E402

HELLOS = ROOT / "tests" / "unit" / "client_hellos"
_REPEATS = 5
_BUDGET_S = 0.2  # CPU time per repeat


def at_once(data: bytes) -> Callable[[], object]:
    return lambda: HelloReader().feed(data)


def halves(data: bytes) -> Callable[[], object]:
    middle = len(data) // 2
    first, second = data[:middle], data[middle:]

    def run() -> object:
        reader = HelloReader()
        reader.feed(first)
        return reader.feed(second)

    return run


def byte_by_byte(data: bytes) -> Callable[[], object]:
    pieces = [data[i : i + 1] for i in range(len(data))]

    def run() -> object:
        reader = HelloReader()
        for piece in pieces:
            result = reader.feed(piece)
        return result

    return run


def per_call_us(run: Callable[[], object]) -> float:
    assert isinstance(run(), ClientHello)
    samples = []
    for _ in range(_REPEATS):
        count, started = 0, time.process_time()
        while (elapsed := time.process_time() - started) < _BUDGET_S:
            for _ in range(20):
                run()
            count += 20
        samples.append(elapsed / count * 1e6)
    return statistics.median(samples)


def main() -> None:
    print(f"python {sys.version.split()[0]}, median of {_REPEATS} x {_BUDGET_S} s CPU")
    for name in ("curl", "openssl-sni-alpn"):
        data = (HELLOS / f"{name}.bin").read_bytes()
        for how, make in (
            ("at once", at_once),
            ("two halves", halves),
            ("byte by byte", byte_by_byte),
        ):
            print(f"{name} ({len(data)} B) {how}: {per_call_us(make(data)):.1f} µs per hello")


if __name__ == "__main__":
    main()
