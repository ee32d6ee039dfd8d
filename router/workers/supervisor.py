"""The supervisor of ``workers = N``: one process that starts N routers and keeps them up.

It never serves a request and never loads asyncssh. In order:

1. checks what it can once (the worker ids, the operator's TLS files),
   prepares the state dir (host key, development CA: ``prepare_state``, so N
   workers do not race to create them) and, for the router-to-router link,
   the workers' cluster CA (``cluster_files``);
2. binds every listening address once (``sockets``), so port 0 means one
   port that all workers serve;
3. starts worker n = 1..N as ``python -m router`` with its own command line
   plus ``--worker-index n --router-id BASE.n --listen-fds ...`` (see
   ``plan``), the sockets passed with ``pass_fds``;
4. restarts a worker that dies, after ``plan.RestartBackoff``'s delay;
5. passes SIGTERM/SIGINT on and waits: each worker does a router's graceful
   shutdown (leases released at once, requests drained); a second signal, or
   ``shutdown_grace_s + _STOP_MARGIN_S`` without an end, kills the rest with
   SIGKILL. SIGHUP is a reload (``router.reload``): the supervisor reads the
   configuration again to name, in one line, the options that need a restart,
   and passes SIGHUP on to every worker, which reloads in place (same process,
   no tunnel dropped); a worker that ends of it (one still starting, before its
   handler is in place) starts again at once. SIGUSR1 (a router's live counts)
   is passed on too.
6. serves ``metrics_listen`` for the whole router (``router.workers.ops``:
   each worker's figures, merged) and speaks for it to systemd
   (``Type=notify``, ``NotifyAccess=main``): READY=1 once the sockets are bound
   and the workers started, STOPPING=1 on the stop signal, WATCHDOG=1 while its
   loop runs; the workers do not get ``NOTIFY_SOCKET``.

Why subprocesses and not ``multiprocessing``: each worker is exactly the
router an operator would start by hand (``ps`` shows its command line, its
config comes through the usual layers, a restart loads the code and files
afresh), the supervisor stays free of asyncssh and of pickled state, and a
worker's exit status means what a router's does (2: its configuration).

Resource handling: the supervisor owns the listening sockets (closed when it
ends) and its workers (each ended before ``run_supervisor`` returns; a worker
whose supervisor is gone ends itself, see ``router.workers.worker``).
Error handling: a configuration fault, its own or one a worker reports with
exit status 2, is a ``ConfigError`` (one line, exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import keys
from hostmux.config.layered import ConfigError
from hostmux.log import describe, fields
from hostmux.systemd import Notifier, without_notify
from router.config import RouterConfig, load_config
from router.reload import needs_restart
from router.state import file_certificates, prepare_state
from router.workers.cluster_files import own_cluster_link
from router.workers.plan import (
    ClusterLink,
    RestartBackoff,
    base_router_id,
    describe_exit,
    usable_cpus,
    usable_workers,
    worker_flags,
    worker_router_id,
)
from router.workers.sockets import BoundListeners, bind_listeners

if TYPE_CHECKING:
    from hostmux.ops_server import OpsServer

log = logging.getLogger("hostmux.router")

# Beyond shutdown_grace_s, what a worker's shutdown may take: the registry release
# (at most 3 s), cancelling what the grace left (5 s), closing SSH connections.
_STOP_MARGIN_S = 15.0
# A worker's exit status for a configuration fault (hostmux.process): restarting
# the same configuration would fail the same way, so the supervisor stops.
_CONFIG_FAULT = 2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A stop signal this soon after the first is the same request delivered twice, not an
# impatient operator: timeout(1) signals its child and then the child's process group.
_SAME_REQUEST_S = 1.0


async def run_supervisor(config: RouterConfig, argv: Sequence[str]) -> None:
    """Run ``config.workers`` routers until SIGTERM/SIGINT; ``argv`` is the supervisor's own
    command line (without the program), which every worker gets before its own flags."""
    count = usable_workers(config.workers, usable_cpus())
    base = base_router_id(config.router_id, config.router_name)
    try:
        keys.check_router_id(worker_router_id(base, count))
    except keys.KeysError as exc:
        raise ConfigError(f"router_id (the workers' base id {base!r}): {exc}") from None
    file_certificates(config)  # the operator's certificate files, checked once
    prepare_state(config)
    cluster = _cluster_link(config, base)
    bound = bind_listeners(config)
    try:
        await Supervisor(config, argv, count, base, bound, cluster).run()
    finally:
        bound.close()


def _cluster_link(config: RouterConfig, base: str) -> ClusterLink | None:
    """The workers' router-to-router options: the operator's, else the supervisor's own CA.

    None while the router has no cluster link (the ``cluster_*`` options); then
    workers serve only the tunnels they hold, as separate routers do.
    """
    option: Any = config  # read by name: the link's options are the forwarding code's
    listen = getattr(option, "cluster_listen", None)
    if listen is None:
        return None
    if not listen:
        return own_cluster_link(config.state_dir, base)
    return ClusterLink(
        listen=listen, advertise=option.cluster_advertise or "",
        ca_file=str(option.cluster_ca_file), cert_file=str(option.cluster_cert_file),
        key_file=str(option.cluster_key_file),
    )  # fmt: skip


class Supervisor:
    """Keeps N worker processes running until asked to stop (see the module's rules)."""

    def __init__(
        self,
        config: RouterConfig,
        argv: Sequence[str],
        count: int,
        base: str,
        bound: BoundListeners,
        cluster: ClusterLink | None,
    ) -> None:
        self._config = config
        self._argv = list(argv)
        self._count = count
        self._base = base
        self._bound = bound
        self._cluster = cluster
        self._workers: dict[int, asyncio.subprocess.Process] = {}
        self._hup_sent: set[int] = set()  # workers whose current process was sent SIGHUP
        self._stopping = asyncio.Event()
        self._stop_asked_at: float | None = None  # loop time of the first stop signal
        self._fault: str | None = None
        self._notifier = Notifier()
        self._child_env = without_notify(os.environ)

    def __repr__(self) -> str:
        pids = {n: p.pid for n, p in sorted(self._workers.items())}
        return f"<Supervisor {self._base} workers={self._count} running={pids}>"

    async def run(self) -> None:
        addresses = self._bound.addresses()
        ops = await self._start_ops() if self._config.metrics_listen else None
        try:
            await self._run(addresses, ops.address if ops is not None else None)
        finally:
            if ops is not None:
                await ops.close()

    async def _start_ops(self) -> OpsServer:
        # Imported here: prometheus-client is loaded only when metrics are served.
        from hostmux.ops_server import Endpoints, start_ops_server
        from router.workers.ops import SupervisorOps

        ops = SupervisorOps(self._config.state_dir, self._count)
        return start_ops_server(self._config.metrics_listen, Endpoints(ops.metrics, ops.readiness))

    async def _run(self, addresses: dict[str, list[str]], metrics: str | None) -> None:
        log.info(
            fields(
                "supervisor_ready", workers=self._count, router=self._base, pid=os.getpid(),
                ssh=",".join(addresses["ssh"]), https=",".join(addresses["https"]) or None,
                http=",".join(addresses["http"]) or None,
                one_port=",".join(addresses["one_port"]) or None, metrics=metrics,
            )
        )  # fmt: skip
        with self._signals():
            async with asyncio.TaskGroup() as tg:
                slots = [tg.create_task(self._keep_running(n)) for n in range(1, self._count + 1)]
                watchdog = tg.create_task(self._notifier.keep_watchdog())
                self._notifier.ready(f"{self._count} workers")
                await self._stopping.wait()
                watchdog.cancel()
                deadline_s = self._config.shutdown_grace_s + _STOP_MARGIN_S
                _, late = await asyncio.wait(slots, timeout=deadline_s)
                if late:
                    log.warning(fields("workers_kill", reason="deadline", after_s=deadline_s))
                    self._kill_all()
        if self._fault is not None:
            raise ConfigError(self._fault)
        log.info(fields("supervisor_stopped", workers=self._count))

    async def _keep_running(self, n: int) -> None:
        """Worker ``n``'s slot: start it, wait for its end, start it again after the back-off."""
        loop = asyncio.get_running_loop()
        backoff = RestartBackoff()
        while not self._stopping.is_set():
            try:
                process = await self._start(n)
            except OSError as exc:  # no process could be made (EAGAIN, ENOMEM, EMFILE...)
                delay = backoff.delay_after(0.0)
                log.error(
                    fields("worker_start_failed", worker_index=n, reason=describe(exc),
                           retry_in_s=delay)
                )  # fmt: skip
                await self._wait_unless_stopping(delay)
                continue
            started = loop.time()
            returncode = await process.wait()
            del self._workers[n]
            hup_sent = n in self._hup_sent
            self._hup_sent.discard(n)
            status, lived_s = describe_exit(returncode), round(loop.time() - started, 1)
            if self._stopping.is_set():
                log.info(fields("worker_stopped", worker_index=n, pid=process.pid, status=status))
                return
            if returncode == _CONFIG_FAULT:
                self._fault = f"worker {n} refused the configuration (exit 2; its line says why)"
                log.error(fields("worker_refused_config", worker_index=n, pid=process.pid))
                self._stop(signal.SIGTERM)
                return
            sighup = hup_sent and returncode == -signal.SIGHUP
            delay = 0.0 if sighup else backoff.delay_after(lived_s)
            log.warning(
                fields(
                    "worker_exited", worker_index=n, pid=process.pid, status=status,
                    lived_s=lived_s, restart_in_s=delay,
                )
            )  # fmt: skip
            await self._wait_unless_stopping(delay)

    async def _wait_unless_stopping(self, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._stopping.wait()

    async def _start(self, n: int) -> asyncio.subprocess.Process:
        flags = worker_flags(n, self._base, self._bound.fds(), self._cluster)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", *self._argv, *flags,
            stdin=subprocess.DEVNULL, pass_fds=self._bound.all_fds(), env=self._child_env,
        )  # fmt: skip
        self._workers[n] = process
        log.info(
            fields(
                "worker_started", worker_index=n, pid=process.pid,
                router=worker_router_id(self._base, n),
            )
        )  # fmt: skip
        if self._stopping.is_set():  # the stop signal came while it was being started
            process.send_signal(signal.SIGTERM)
        return process

    def _stop(self, signum: int) -> None:
        """First stop signal: pass it on to every worker; a second (later than
        ``_SAME_REQUEST_S``): kill them."""
        now = asyncio.get_running_loop().time()
        if self._stop_asked_at is not None:
            if now - self._stop_asked_at >= _SAME_REQUEST_S:
                reason = f"second {signal.Signals(signum).name}"
                log.warning(fields("workers_kill", reason=reason))
                self._kill_all()
            return
        log.info(fields("supervisor_stopping", signal=signal.Signals(signum).name))
        self._notifier.stopping()
        self._stop_asked_at = now
        self._stopping.set()
        self._send_all(signum)

    def _pass_hup(self) -> None:
        try:
            restart = needs_restart(self._config, load_config(self._argv))
        except ConfigError as exc:  # each worker says so too, and keeps its configuration
            log.error(fields("reload_failed", reason=str(exc), action="kept the running config"))
        else:
            if restart:
                log.warning(fields("reload_needs_restart", options=",".join(restart)))
        log.info(fields("sighup_passed_on", workers=len(self._workers)))
        self._hup_sent.update(self._workers)
        self._send_all(signal.SIGHUP)

    def _kill_all(self) -> None:
        self._send_all(signal.SIGKILL)

    def _send_all(self, signum: int) -> None:
        for process in self._workers.values():
            with contextlib.suppress(ProcessLookupError):  # it ended; its slot will see
                process.send_signal(signum)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self._stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._pass_hup)
        # A router's live counts (event=stats): each worker logs its own.
        loop.add_signal_handler(signal.SIGUSR1, self._send_all, signal.SIGUSR1)
        try:
            yield
        finally:
            for signum in (*_STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
