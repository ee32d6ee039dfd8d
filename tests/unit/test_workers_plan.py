"""``workers = N``: the supervisor's pure rules (router.workers.plan), the options that
start it, its cluster files, and that it never loads asyncssh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hostmux.config.layered import ConfigError
from router.config import MAX_WORKERS, load_config
from router.workers.cluster_files import own_cluster_link
from router.workers.plan import (
    BACKOFF_MAX_S,
    ClusterLink,
    RestartBackoff,
    base_router_id,
    describe_exit,
    usable_cpus,
    usable_workers,
    worker_cluster_address,
    worker_flags,
)

ROOT = Path(__file__).resolve().parents[2]
REDIS = ["--registry", "redis://127.0.0.1:6379/0"]


def test_workers_0_is_one_per_usable_cpu_and_never_more_than_the_maximum() -> None:
    assert usable_workers(0, 16) == 16
    assert usable_workers(0, 1) == 1
    assert usable_workers(0, 1000) == MAX_WORKERS
    assert usable_workers(3, 16) == 3  # asked for: as asked, whatever the CPUs
    assert usable_workers(0, len(os.sched_getaffinity(0))) == usable_cpus()


def test_worker_ids_come_from_router_id_else_router_name_else_router() -> None:
    assert base_router_id("edge-a", "name") == "edge-a"
    assert base_router_id("", "name") == "name"
    assert base_router_id("", "") == "router"


def test_a_workers_flags_name_it_and_its_sockets() -> None:
    fds = {"ssh": [5], "https": [6, 7], "http": [], "one_port": [8]}
    assert worker_flags(2, "edge", fds, None) == [
        "--worker-index", "2", "--router-id", "edge.2", "--listen-fds", "ssh=5",
        "--listen-fds", "https=6", "--listen-fds", "https=7", "--listen-fds", "one_port=8",
    ]  # fmt: skip


def test_the_operators_cluster_ports_shift_per_worker_and_port_0_stays_0() -> None:
    link = ClusterLink("10.0.0.1:7000", "[2001:db8::1]:7100", "ca.crt", "e.crt", "e.key")
    flags = worker_flags(3, "edge", {}, link)
    assert flags[4:] == [
        "--cluster-listen", "10.0.0.1:7002", "--cluster-advertise", "[2001:db8::1]:7102",
        "--cluster-ca-file", "ca.crt", "--cluster-cert-file", "e.crt", "--cluster-key-file",
        "e.key",
    ]  # fmt: skip
    assert worker_cluster_address("127.0.0.1:0", 4, "cluster_listen") == "127.0.0.1:0"
    own = ClusterLink("127.0.0.1:0", "", "ca.crt", "e.crt", "e.key")
    assert "--cluster-advertise" not in worker_flags(1, "edge", {}, own)


def test_restarts_back_off_from_1_s_doubling_to_30_s_and_reset_after_60_s_alive() -> None:
    backoff = RestartBackoff()
    assert [backoff.delay_after(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, BACKOFF_MAX_S]
    assert backoff.delay_after(59.9) == 30  # not healthy for long enough
    assert backoff.delay_after(60.0) == 1  # it was: start afresh
    assert backoff.delay_after(1.0) == 2


def test_an_exit_reads_as_a_status_or_a_signal() -> None:
    assert describe_exit(0) == "exit 0"
    assert describe_exit(3) == "exit 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-200) == "signal 200"


def test_workers_other_than_1_need_a_registry() -> None:
    for count in ("0", "2"):
        with pytest.raises(ConfigError, match=r"^workers: \d+ workers need a registry"):
            load_config(["--workers", count], environ={})
    assert load_config(["--workers", "0", *REDIS], environ={}).workers == 0
    assert load_config([], environ={}).workers == 1
    with pytest.raises(ConfigError, match=r"--workers: 257 is out of range: 0\.\.256"):
        load_config(["--workers", "257", *REDIS], environ={})


@pytest.mark.parametrize(
    ("fds", "problem"),
    [
        (["ssh=2"], r"'ssh=2' is not KIND=FD"),
        (["smtp=5"], r"'smtp=5' is not KIND=FD"),
        (["ssh=5"], r"https sockets are given exactly when https_listen is"),
        (["ssh=5", "https=6", "http=7", "one_port=8"], r"one_port sockets are given exactly"),
    ],
)
def test_listen_fds_must_fit_the_listen_addresses(fds: list[str], problem: str) -> None:
    flags = [arg for fd in fds for arg in ("--listen-fds", fd)]
    with pytest.raises(ConfigError, match=f"^listen_fds: {problem}"):
        load_config(flags, environ={})


def test_listen_fds_by_kind() -> None:
    flags = ["--listen-fds", "ssh=5", "--listen-fds", "https=6", "--listen-fds", "http=7"]
    config = load_config([*flags, "--listen-fds", "https=9"], environ={})
    assert config.inherited_sockets() == {
        "ssh": [5], "https": [6, 9], "http": [7], "one_port": []
    }  # fmt: skip


def test_the_workers_cluster_ca_is_made_once_and_reused(tmp_path: Path) -> None:
    link = own_cluster_link(tmp_path, "edge")
    assert link.listen == "127.0.0.1:0" and link.advertise == ""
    assert Path(link.ca_file) == tmp_path / "cluster" / "ca.crt"
    files = [Path(link.ca_file), Path(link.cert_file), Path(link.key_file)]
    before = [path.read_bytes() for path in files]
    assert own_cluster_link(tmp_path, "edge") == link  # a restart: nothing replaced
    assert [path.read_bytes() for path in files] == before
    other = own_cluster_link(tmp_path, "edge-b")  # another base id: same CA, its own cert
    assert other.ca_file == link.ca_file and other.cert_file.endswith("edge-b.crt")
    assert Path(link.ca_file).read_bytes() == before[0]


def test_a_broken_cluster_ca_is_one_config_error(tmp_path: Path) -> None:
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^workers' cluster CA in .*cluster: "):
        own_cluster_link(tmp_path, "edge")


def test_the_supervisor_never_loads_asyncssh() -> None:
    probe = (
        "import sys, router.cli, router.workers.supervisor\n"
        "print(sorted(m for m in ('asyncssh', 'router.server', 'redis') if m in sys.modules))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"
