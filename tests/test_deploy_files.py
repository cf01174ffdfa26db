"""The compose file and Dockerfile agree with the CLI (no Docker engine is needed to check)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from launcher.cli import _parser

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
