"""The compose file and Dockerfile agree with the CLI (no Docker engine is needed to check)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from launcher.cli import _parser
from launcher.supervisor import _parse_queues

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_redis_api_and_gpu_worker(compose):
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert "--appendonly" in services["redis"]["command"]
    for name in ("api", "worker"):
        dep = services[name]["depends_on"]["redis"]
        assert dep["condition"] == "service_healthy"
        assert "cosmogan-home:/data" in services[name]["volumes"]
        assert services[name]["environment"]["COSMOGAN_HOME"] == "/data"
        assert services[name]["environment"]["COSMOGAN_MODE"] == "production"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_compose_commands_parse_with_the_cli(compose):
    parser = _parser()
    for name in ("api", "worker"):
        command = compose["services"][name]["command"]
        assert command[0] == "cosmogan"
        args = parser.parse_args(command[1:])  # exits (SystemExit) on an unknown flag
        assert args.func.__name__ == f"_cmd_{name}"


def test_dockerfile_installs_dependencies_before_code_and_drops_root():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    steps = [ln for ln in lines if ln and not ln.startswith("#")]
    first_code_copy = next(i for i, ln in enumerate(steps) if ln.startswith("COPY app"))
    deps_install = next(i for i, ln in enumerate(steps) if "pip install ." in ln)
    assert deps_install < first_code_copy
    assert any(ln.startswith("USER ") and "root" not in ln for ln in steps)
    cmd = next(ln for ln in steps if ln.startswith("CMD"))
    argv = yaml.safe_load(cmd.removeprefix("CMD "))
    args = _parser().parse_args(argv[1:])
    assert args.func.__name__ == "_cmd_api"
    assert shlex.join(argv).startswith("cosmogan api")


def test_compose_redis_needs_a_password_that_the_services_use(compose):
    redis = compose["services"]["redis"]
    assert "--requirepass" in redis["command"]
    password = redis["command"][redis["command"].index("--requirepass") + 1]
    assert password.startswith("${COSMOGAN_REDIS_PASSWORD")
    assert redis["restart"] == "unless-stopped"
    for name in ("api", "worker"):
        url = compose["services"][name]["environment"]["COSMOGAN_REDIS_URL"]
        assert url.startswith("redis://:${COSMOGAN_REDIS_PASSWORD")
        assert url.endswith("@redis:6379/0")


def defaults(value: str) -> str:
    """`value` as compose reads it with no variable set: `${VAR:-default}` becomes `default`."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def cpu_override() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.cpu.yml").read_text())


def test_bases_are_replaceable_and_default_to_the_published_images(compose):
    steps = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    steps = [ln for ln in steps if ln and not ln.startswith("#")]
    assert steps[:2] == ["ARG BASE_IMAGE=python:3.11-slim", "FROM ${BASE_IMAGE}"]
    services = compose["services"]
    assert defaults(services["redis"]["image"]) == "redis:7-alpine"
    for name in ("api", "worker"):
        build = services[name]["build"]
        assert build["context"] == "."
        assert defaults(build["args"]["BASE_IMAGE"]) == "python:3.11-slim"
        assert defaults(services[name]["image"]) == "cosmogan:latest"
    assert [defaults(p) for p in services["api"]["ports"]] == ["8000:8000"]


def test_redis_keeps_its_append_only_file_on_its_volume_on_any_image(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"  # on PATH in redis:7-alpine and in Debian's package
    assert command[command.index("--dir") + 1] == "/data"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]


def test_worker_queues_default_to_queues_the_worker_takes(compose):
    command = compose["services"]["worker"]["command"]
    queues = defaults(command[command.index("--queues") + 1])
    assert {"training", "inference"} <= set(_parse_queues(queues))


def test_cpu_override_runs_the_same_worker_without_the_gpu(compose, cpu_override):
    services = cpu_override["services"]
    assert services["worker"] == {"profiles": ["gpu"]}  # the GPU worker is left out
    gpu_worker = compose["services"]["worker"]
    assert "deploy" not in services["cpu-worker"]
    assert services["cpu-worker"] == {k: v for k, v in gpu_worker.items() if k != "deploy"}


def test_ci_runs_the_docker_test():
    makefile = (ROOT / "Makefile").read_text()
    assert "\ntest-docker:" in makefile and ".ci/test-docker" in makefile
    assert "make test-docker" in (ROOT / ".ci" / "run").read_text()
