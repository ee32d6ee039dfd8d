"""The sans-IO parts of metrics and health: figures, merges, verdicts, sd_notify."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import socket
import sys
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
from hostmux.systemd import MAX_MESSAGE_BYTES, Notifier, NotifyReceiver, without_notify
from router.operations import RequestFigures, certificate_problem
from router.workers.ops import combined_readiness, merge_metrics
from router.workers.readiness import WorkerStarts

from .asyncio_bounded import run


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


ACTIVITY = """# HELP hostmux_tunnel_last_activity_timestamp_seconds l
# TYPE hostmux_tunnel_last_activity_timestamp_seconds gauge
hostmux_tunnel_last_activity_timestamp_seconds{name="app"} %d
# HELP hostmux_tunnel_idle i
# TYPE hostmux_tunnel_idle gauge
hostmux_tunnel_idle{name="app"} %d
# HELP hostmux_tunnel_usage_requests_total r
# TYPE hostmux_tunnel_usage_requests_total counter
hostmux_tunnel_usage_requests_total{name="app"} %d
"""


def test_merge_keeps_the_latest_activity_and_sums_usage() -> None:
    merged = merge_metrics([("1", ACTIVITY % (1000, 1, 2)), ("2", ACTIVITY % (900, 0, 3))])
    samples = {s.name: s.value for family in merged for s in family.samples}
    assert samples == {
        "hostmux_tunnel_last_activity_timestamp_seconds": 1000,  # not 1900
        "hostmux_tunnel_idle": 1,
        "hostmux_tunnel_usage_requests_total": 5,
    }


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


def leaf_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificate_problems(tmp_path: Path) -> None:
    good = write_cert(tmp_path / "good.pem", "*.example.org", days=(-1, 30))
    assert certificate_problem(leaf_of(good), good, "example.org") == ""
    assert certificate_problem(None, None, "example.org") == ""  # the development CA
    old = write_cert(tmp_path / "old.pem", "*.example.org", days=(-30, -1))
    assert f"{old} expired at" in certificate_problem(leaf_of(old), old, "example.org")
    new = write_cert(tmp_path / "new.pem", "*.example.org", days=(2, 30))
    assert "valid from" in certificate_problem(leaf_of(new), new, "example.org")
    assert "names no host under other.org" in certificate_problem(leaf_of(good), good, "other.org")
    # The certificate in use is judged, not the file: junk written over it since changes nothing.
    in_use = leaf_of(good)
    good.write_text("not a certificate")
    assert certificate_problem(in_use, good, "example.org") == ""


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


def test_notify_receiver_hears_its_children_only() -> None:
    """A child's READY=1 comes with the child's pid; this process's own message (not a
    child's) and a child's message too long to read whole are dropped."""

    async def scenario() -> list[tuple[int, dict[str, str]]]:
        heard: list[tuple[int, dict[str, str]]] = []
        got = asyncio.Event()

        def on_message(pid: int, message: dict[str, str]) -> None:
            heard.append((pid, message))
            got.set()

        receiver = NotifyReceiver(on_message)
        address = receiver.open()
        try:
            assert address.startswith("@hostmux-notify-")
            Notifier({"NOTIFY_SOCKET": address}).send("READY=1")  # this process: no child
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "from hostmux.systemd import Notifier; notifier = Notifier(); "
                f"notifier.send('READY=1', 'STATUS={'x' * MAX_MESSAGE_BYTES}'); "
                "notifier.ready('up')",
                env={**os.environ, "NOTIFY_SOCKET": address},
            )  # fmt: skip
            assert await child.wait() == 0
            await got.wait()  # the child's message (datagrams arrive in order)
            return [(pid if pid != child.pid else -1, message) for pid, message in heard]
        finally:
            receiver.close()

    assert run(scenario()) == [(-1, {"READY": "1", "STATUS": "up"})]


class FakeWorker:
    """A worker process as ``WorkerStarts`` sees one: a pid and the signals it was sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)


def test_worker_starts_ready_once_all_said_so_and_stop_waits_for_readiness() -> None:
    said: list[str] = []
    starts = WorkerStarts(2, lambda: said.append("ready"))
    one, two, three = FakeWorker(11), FakeWorker(12), FakeWorker(13)
    starts.message(12, {"READY": "1"})  # before its process was recorded (rule 3)
    starts.started(one)
    starts.started(two)
    starts.message(11, {"STATUS": "starting"})
    assert said == []
    starts.message(11, {"READY": "1"})
    assert said == ["ready"] and starts.ready
    starts.ended(one)  # a restart: readiness is not taken back, nor said again
    starts.started(three)
    starts.message(13, {"READY": "1"})
    assert said == ["ready"]
    starts.signal_when_ready(signal.SIGUSR1)
    assert (two.signals, three.signals) == ([signal.SIGUSR1], [signal.SIGUSR1])


def test_worker_starts_holds_a_stop_signal_until_the_worker_is_ready() -> None:
    said: list[str] = []
    starts = WorkerStarts(2, lambda: said.append("ready"))
    one, two = FakeWorker(21), FakeWorker(22)
    starts.started(one)
    starts.started(two)
    starts.message(21, {"READY": "1"})
    starts.signal_when_ready(signal.SIGUSR2)
    starts.signal_when_ready(signal.SIGUSR2)  # held once, as the kernel keeps one
    assert (one.signals, two.signals) == ([signal.SIGUSR2] * 2, [])  # it would end two now
    starts.stop(signal.SIGTERM)
    assert (one.signals, two.signals) == ([signal.SIGUSR2, signal.SIGUSR2, signal.SIGTERM], [])
    starts.message(22, {"READY": "1"})
    starts.message(22, {"READY": "1"})  # said twice: signalled once
    assert two.signals == [signal.SIGUSR2, signal.SIGTERM]  # in the order asked
    assert said == []  # stopping: never ready


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
