"""The sans-IO parts of metrics and health: figures, merges, verdicts, sd_notify."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from hostmux.metric_values import DurationHistogram, code_class
from hostmux.ops_server import LOOP_ANSWER_S, Endpoints, OpsServer, Readiness
from hostmux.relay import RequestRecord
from hostmux.systemd import Notifier, without_notify
from router.operations import RequestFigures, certificate_problem
from router.workers.ops import combined_readiness, merge_metrics


def record(status: int, *, name: str = "demo", ms: float = 3.0) -> RequestRecord:
    return RequestRecord(
        request_id="r", peer="127.0.0.1:1", host=f"{name}.localhost", name=name, method="GET",
        target="/", status=status, bytes_in=10, bytes_out=100, duration_ms=ms,
    )  # fmt: skip


def test_code_classes() -> None:
    assert [code_class(s) for s in (101, 200, 204, 302, 404, 502, 0, 600, 99)] == [
        "1xx", "2xx", "2xx", "3xx", "4xx", "5xx", "none", "none", "none",
    ]  # fmt: skip


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    histogram = DurationHistogram((0.1, 1.0))
    for value in (0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    family = HistogramMetricFamily("x_seconds", "x")
    histogram.add_to(family)
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values == {
        ("x_seconds_bucket", "0.1"): 1, ("x_seconds_bucket", "1.0"): 3,
        ("x_seconds_bucket", "+Inf"): 4, ("x_seconds_count", None): 4,
        ("x_seconds_sum", None): 8.6,
    }  # fmt: skip


def test_request_figures_count_one_per_record_and_names_only_when_asked() -> None:
    plain, named = RequestFigures(per_tunnel=False), RequestFigures(per_tunnel=True)
    for figures in (plain, named):
        for status in (200, 200, 404, 0):
            figures.observe(record(status))
    assert plain.requests == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 0, "none": 1}
    assert (plain.bytes_in, plain.bytes_out) == (40, 400)
    assert plain.per_tunnel is None
    assert named.per_tunnel == {("demo", "2xx"): 2, ("demo", "4xx"): 1, ("demo", "none"): 1}


def test_readiness_answers() -> None:
    assert Readiness().answer() == (200, {"status": "ready"})
    degraded = Readiness(degraded={"portal": "down"})
    assert degraded.answer() == (200, {"status": "degraded", "degraded": {"portal": "down"}})
    failed = Readiness(reason="stopping", degraded={"portal": "down"})
    assert failed.answer()[0] == 503
    assert failed.answer()[1]["reason"] == "stopping"


WORKER = """# HELP hostmux_http_requests_total r
# TYPE hostmux_http_requests_total counter
hostmux_http_requests_total{code_class="2xx"} %d
# HELP hostmux_tunnels t
# TYPE hostmux_tunnels gauge
hostmux_tunnels %d
# HELP process_cpu_seconds_total c
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total %d
# HELP hostmux_build_info b
# TYPE hostmux_build_info gauge
hostmux_build_info{component="router",version="1"} 1
# HELP hostmux_ready r
# TYPE hostmux_ready gauge
hostmux_ready 1
"""


def test_merge_sums_router_series_and_labels_process_series_by_worker() -> None:
    merged = merge_metrics([("1", WORKER % (3, 1, 5)), ("2", WORKER % (4, 0, 7))])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in merged
        for s in family.samples
    }
    assert samples == {
        ("hostmux_http_requests_total", (("code_class", "2xx"),)): 7,
        ("hostmux_tunnels", ()): 1,
        ("process_cpu_seconds_total", (("worker", "1"),)): 5,
        ("process_cpu_seconds_total", (("worker", "2"),)): 7,
        ("hostmux_build_info", (("component", "router"), ("version", "1"))): 1,
    }  # hostmux_ready is the supervisor's own verdict, not a sum of its workers'


def test_combined_readiness_fails_only_when_no_worker_is_ready() -> None:
    ok = {"reason": "", "degraded": {}}
    portal = {"reason": "", "degraded": {"portal": "down"}}
    stopping = {"reason": "stopping", "degraded": {}}
    assert combined_readiness({1: ok, 2: ok}) == Readiness()
    assert combined_readiness({1: ok, 2: None}).degraded == {"worker 2": "did not answer"}
    assert combined_readiness({1: portal, 2: ok}).degraded == {"portal": "worker 1: down"}
    assert combined_readiness({1: stopping, 2: ok}).degraded == {"worker 1": "stopping"}
    assert combined_readiness({1: stopping, 2: None}).reason == "no worker is ready: stopping"
    assert combined_readiness({1: None}).reason == "no worker is ready (none answered)"


def write_cert(path: Path, host: str, *, days: tuple[int, int]) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificate_problems(tmp_path: Path) -> None:
    good = write_cert(tmp_path / "good.pem", "*.example.org", days=(-1, 30))
    assert certificate_problem(good, "example.org") == ""
    assert certificate_problem(None, "example.org") == ""  # the development CA
    assert "expired at" in certificate_problem(
        write_cert(tmp_path / "old.pem", "*.example.org", days=(-30, -1)), "example.org"
    )
    assert "valid from" in certificate_problem(
        write_cert(tmp_path / "new.pem", "*.example.org", days=(2, 30)), "example.org"
    )
    assert "names no host under other.org" in certificate_problem(good, "other.org")
    assert "cannot be read" in certificate_problem(tmp_path / "missing.pem", "example.org")
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert "cannot be read" in certificate_problem(tmp_path / "junk.pem", "example.org")


def test_notifier_sends_datagrams_to_a_path_and_to_the_abstract_namespace(tmp_path: Path) -> None:
    for where, address in (
        (str(tmp_path / "notify.sock"), str(tmp_path / "notify.sock")),
        (f"@hostmux-test-{os.getpid()}", f"\0hostmux-test-{os.getpid()}"),
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            notifier = Notifier({"NOTIFY_SOCKET": where})
            notifier.ready("serving")
            notifier.stopping()
            assert sock.recv(100) == b"READY=1\nSTATUS=serving"
            assert sock.recv(100) == b"STOPPING=1"


def test_notifier_without_a_socket_does_nothing_and_a_gone_one_is_not_fatal(
    tmp_path: Path,
) -> None:
    Notifier({}).ready()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    gone.ready()
    gone.stopping()  # logged once, never raised


def test_watchdog_period_and_child_environment() -> None:
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"}).watchdog_s == 2.0
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_s is None
    other = {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_s is None  # meant for another process
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "PATH": "/bin"}
    assert without_notify(env) == {"PATH": "/bin"}


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_ops_server_answers_from_the_loop_and_503_when_the_loop_is_stuck() -> None:
    async def metrics() -> bytes:
        return b"# HELP x y\n# TYPE x gauge\nx 1\n"

    async def readiness() -> Readiness:
        return Readiness(degraded={"portal": "down"})

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = OpsServer(Endpoints(metrics, readiness), loop)
        server.start("127.0.0.1", 0)
        base = f"http://{server.address}"
        try:
            answers = await asyncio.gather(
                *(asyncio.to_thread(fetch, base + p) for p in ("/metrics", "/healthz", "/readyz"))
            )
            assert answers[0] == (200, b"# HELP x y\n# TYPE x gauge\nx 1\n")
            assert answers[1] == (200, b'{"status":"ok"}\n')
            assert answers[2] == (200, b'{"status":"degraded","degraded":{"portal":"down"}}\n')
            assert (await asyncio.to_thread(fetch, base + "/nothing"))[0] == 404
            # The loop stuck (a blocking call on it): the server's thread says so.
            answered = threading.Event()
            result: list[tuple[int, bytes]] = []

            def probe() -> None:
                result.append(fetch(base + "/healthz"))
                answered.set()

            threading.Thread(target=probe).start()
            assert answered.wait(LOOP_ANSWER_S + 10)  # blocks this loop meanwhile
            assert result[0][0] == 503
            assert b"did not answer" in result[0][1]
        finally:
            await server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("text", [WORKER % (1, 1, 1)])
def test_worker_text_parses(text: str) -> None:  # the fixture above is valid exposition
    assert next(f.name for f in text_string_to_metric_families(text)) == "hostmux_http_requests"
