"""Capture real ClientHellos into this folder (run by hand; the files are committed).

    .venv/bin/python -m tests.unit.client_hellos.capture

A plain TCP server on loopback records the first TLS record each client sends
(the ClientHello: one record for every client here), then closes; the clients
fail their handshakes, as expected. Clients: ``openssl s_client`` and ``curl``
(Python's ssl is captured live by the tests instead, see test_tls_hello.py).
"""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
_DEADLINE_S = 10.0


def _read_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def capture(command: list[str]) -> bytes:
    """The first record ``command`` sends to ``{port}`` on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(_DEADLINE_S)
        port = server.getsockname()[1]
        argv = [part.format(port=port) for part in command]
        result: list[bytes] = []

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(_DEADLINE_S)
                head = _read_exact(conn, 5)
                result.append(head + _read_exact(conn, int.from_bytes(head[3:5], "big")))

        thread = threading.Thread(target=accept)
        thread.start()
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_DEADLINE_S,
                       check=False)  # fmt: skip
        thread.join(_DEADLINE_S)
        return result[0]


CLIENTS = {
    "openssl-sni-alpn": ["openssl", "s_client", "-connect", "127.0.0.1:{port}",
                         "-servername", "myapp.example.org", "-alpn", "h2,http/1.1"],
    "openssl-acme": ["openssl", "s_client", "-connect", "127.0.0.1:{port}",
                     "-servername", "example.org", "-alpn", "acme-tls/1"],
    "openssl-no-sni-tls12": ["openssl", "s_client", "-connect", "127.0.0.1:{port}", "-noservername",
                             "-tls1_2"],
    "curl": ["curl", "-sS", "--max-time", "5", "--resolve", "x.example.org:{port}:127.0.0.1",
             "https://x.example.org:{port}/"],
    "curl-http11": ["curl", "-sS", "--http1.1", "--max-time", "5", "--resolve",
                    "Lab-1.Example.ORG:{port}:127.0.0.1", "https://Lab-1.Example.ORG:{port}/"],
}  # fmt: skip


def main() -> None:
    for name, command in CLIENTS.items():
        hello = capture(command)
        (HERE / f"{name}.bin").write_bytes(hello)
        print(f"{name}: {len(hello)} bytes")


if __name__ == "__main__":
    main()
