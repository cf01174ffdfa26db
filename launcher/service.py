"""One private service (Redis, a worker per queue, the API) started and stopped as one."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from launcher.supervisor import (
    STOP_TIMEOUT_S,
    Child,
    Supervisor,
    api_command,
    api_env,
    api_workers,
    ensure_default_models,
    free_port,
    redis_command,
    spawn,
    start_workers,
    wait_for_redis,
    warn_if_exposed,
    worker_command,
    worker_env,
)
from models.settings import Settings, get_settings
from worker.policy import QUEUES

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
LEFTOVER_TIMEOUT_S = 10.0


@dataclass
class Service:
    """A started service: its address, environment and children (by name)."""

    home: Path
    base_url: str
    redis_url: str
    env: dict[str, str]
    supervisor: Supervisor
    logs: Path | None = None
    _files: list[IO[bytes]] = field(default_factory=list, repr=False)
    _watching: threading.Event = field(default_factory=threading.Event, repr=False)
    _watcher: threading.Thread | None = field(default=None, repr=False)

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        """The children by name: redis (when embedded), worker[<queue>], api."""
        return {c.name: c.proc for c in self.supervisor.children}

    def log_path(self, name: str) -> Path:
        """Where child `name` writes (with a `log_dir`)."""
        assert self.logs is not None, "started without a log_dir"
        return self.logs / f"{name}.log"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env['COSMOGAN_API_KEY']}"}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 60.0), **kw)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        with self.client() as client:
            wait_ready(client, self.procs, self.logs, timeout_s)

    def watch(self) -> None:
        """Restart children that die (as `serve` does), from a thread, until `stop()`."""
        self._watcher = threading.Thread(
            target=self.supervisor.watch, args=(self._watching,), name="service-watch", daemon=True
        )
        self._watcher.start()

    def kill_redis(self) -> None:
        """`kill -9` of the embedded Redis: no shutdown save, only what the AOF already has;
        it stays down (not restarted) until `start_redis`."""
        redis = self._child("redis")
        redis.restart_on_exit = False
        os.kill(redis.proc.pid, signal.SIGKILL)
        redis.proc.wait(10)

    def start_redis(self) -> None:
        """The embedded Redis again, on the same port and data folder (it reloads its AOF)."""
        redis = self._child("redis")
        redis.proc = spawn(redis.cmd, redis.env, redis.output)
        redis.restart_on_exit = True
        wait_for_redis(self.redis_url, proc=redis.proc)

    def add_worker(self, queue: str, processes: int = 1) -> str:
        """One more Celery worker of `queue`, as another machine on the same Redis and home
        would run it (`processes`: its data processes); returns its name, `worker[<queue>-N]`."""
        n = 1 + sum(c.name.startswith(f"worker[{queue}") for c in self.supervisor.children)
        name = f"worker[{queue}-{n}]"
        cmd = worker_command(queue, 1, None, processes, node=f"{queue}-{n}")
        out = self.log_path(name).open("ab") if self.logs is not None else None
        if out is not None:
            self._files.append(out)
        self.supervisor.start(name, cmd, worker_env(queue, self.env), signal.SIGTERM, out)
        return name

    def wait_worker(self, name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until worker `name` (from `add_worker`) answers a Celery ping: it has started and
        consumes its queue, so work sent from now on may go to it."""
        from celery import Celery

        queue_n = name.removeprefix("worker[").removesuffix("]")
        node = f"{queue_n}.{os.getpid()}@{socket.gethostname()}"
        app = Celery(broker=self.redis_url)
        deadline = time.monotonic() + timeout_s
        try:
            while not app.control.ping(destination=[node], timeout=1.0):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited with code {self.procs[name].returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} ({node}) did not answer in {timeout_s:.0f}s")
        finally:
            app.close()

    def _child(self, name: str) -> Child:
        return next(c for c in self.supervisor.children if c.name == name)

    def stop(self, check: bool = True, grace_s: float = LEFTOVER_TIMEOUT_S) -> None:
        """Stop every child (API, workers, Redis); with `check`, raise if any process of
        theirs (pool processes, uvicorn's workers included) is still alive `grace_s` later."""
        self._watching.set()  # no restart may race the stop
        if self._watcher is not None:
            self._watcher.join()
        family = _family({c.proc.pid for c in self.supervisor.children})
        try:
            self.supervisor.stop_all()
            deadline = time.monotonic() + grace_s
            while _alive(family) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = _alive(family)
            for pgid in set(family.values()):  # never leave strays, even when the check fails
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        finally:
            for f in self._files:
                f.close()
        if check and left:
            raise RuntimeError(f"processes left after shutdown: {left}")

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_service(
    home: Path,
    *,
    settings: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    api_port: int | None = None,
    redis_url: str | None = None,
    api_processes: int | None = 1,
    concurrency: int = 1,
    log_dir: Path | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    watch: bool = False,
) -> Service:
    """Redis (embedded unless `redis_url`), one Celery worker per queue and the API on `home`,
    as `cosmogan serve` runs them; returns once started (call `wait_ready` to wait for
    /readyz). `settings` are more COSMOGAN_* variables over `env` (default: this process's);
    children write to `log_dir/<name>.log`, or to this process's output. With `watch`, a
    thread restarts children that die (`serve` runs `supervisor.wait()` instead)."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    child_env = {**(os.environ if env is None else env), **(settings or {})}
    child_env["COSMOGAN_HOME"] = str(home)
    child_env.pop("COSMOGAN_REDIS_URL", None)
    config = _settings(child_env)
    ensure_default_models(config.registry_dir)  # a fresh home serves without training
    api_port = api_port or free_port()
    sup = Supervisor(stop_timeout_s=stop_timeout_s)
    service = Service(home, f"http://{host}:{api_port}", "", child_env, sup, log_dir)

    def output(name: str) -> IO[bytes] | None:
        if log_dir is None:
            return None
        log_dir.mkdir(parents=True, exist_ok=True)
        service._files.append(service.log_path(name).open("ab"))
        return service._files[-1]

    try:
        if redis_url is None:
            data_dir = home / "redis"
            data_dir.mkdir(parents=True, exist_ok=True)
            rport = free_port()
            password = config.redis_password and config.redis_password.get_secret_value()
            redis = sup.start(
                "redis", redis_command(rport, data_dir, password), child_env, output=output("redis")
            )
            auth = f":{quote(password, safe='')}@" if password else ""
            redis_url = f"redis://{auth}127.0.0.1:{rport}/0"
            wait_for_redis(redis_url, proc=redis.proc)
            log.info(
                "embedded Redis on 127.0.0.1:%d%s (data in %s)",
                rport,
                " with a password" if password else "",
                data_dir,
            )
        else:
            wait_for_redis(redis_url)
        child_env["COSMOGAN_REDIS_URL"] = service.redis_url = redis_url
        start_workers(
            sup,
            list(QUEUES),
            concurrency,
            child_env,
            config.batch_max_size,
            output,
            config.data_processes,
        )
        cmd = api_command(host, api_port, api_workers(api_processes), config.trusted_proxies)
        sup.start("api", cmd, api_env(child_env, home, api_port), output=output("api"))
    except BaseException:
        service.stop(check=False)
        raise
    if watch:
        service.watch()
    return service


def wait_ready(
    client: httpx.Client,
    procs: Mapping[str, subprocess.Popen],
    logs: Path | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    """Until GET /readyz answers 200; fails at once when one of `procs` exits."""
    deadline = time.monotonic() + timeout_s
    last = None
    where = f"; logs in {logs}" if logs else ""
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with code {p.returncode}{where}")
        with contextlib.suppress(httpx.TransportError):
            last = client.get("/readyz")
            if last.status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"service not ready: {last and last.text}{where}")


def _settings(env: Mapping[str, str]) -> Settings:
    """The settings the children will read from `env` (every field is a plain scalar); a
    field `env` lacks takes its default, not this process's variable."""
    fields = Settings.model_fields.items()
    return Settings(**{name: env.get(f"COSMOGAN_{name.upper()}", f.default) for name, f in fields})


def _family(pids: set[int]) -> dict[int, int]:
    """`pids` and their descendants, each with its process group."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True)
    rows = [tuple(map(int, line.split())) for line in ps.stdout.splitlines()]
    family: dict[int, int] = {}
    todo = set(pids)
    while todo:
        family.update({pid: pgid for pid, ppid, pgid in rows if pid in todo})
        todo = {pid for pid, ppid, _ in rows if ppid in todo and pid not in family}
    return family


def _alive(family: dict[int, int]) -> list[str]:
    """`ps` lines of live processes (zombies excluded) of `family` or its process groups."""
    groups = set(family.values())
    ps = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True
    )
    lines = []
    for line in ps.stdout.splitlines():
        pid, pgid, stat, *_ = line.split(None, 3)
        if (int(pid) in family or int(pgid) in groups) and not stat.startswith("Z"):
            lines.append(line.strip())
    return lines


def serve(
    host: str | None = None,
    port: int | None = None,
    concurrency: int = 1,
    api_processes: int | None = None,
) -> int:
    """`cosmogan serve`: Redis (embedded unless COSMOGAN_REDIS_URL is set), both workers and
    the API, restarted when they die, until Ctrl-C/SIGTERM."""
    settings = get_settings()
    host = host or settings.host
    port = port or settings.port
    service = start_service(
        settings.home,
        host=host,
        api_port=port,
        redis_url=settings.redis_url or None,
        api_processes=api_processes,
        concurrency=concurrency,
    )
    warn_if_exposed(host)
    log.info("cosmogan is serving on http://%s:%d (Ctrl-C stops it)", host, port)
    return service.supervisor.wait()
