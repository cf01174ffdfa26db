"""Shared test setup: small thread pools (2-core machines), an isolated COSMOGAN_HOME, the API
against a dead Redis, and one analytic emulator catalog for the session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

API_KEY = "unit-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@contextlib.contextmanager
def cosmogan_home(path: Path) -> Iterator[Path]:
    """COSMOGAN_HOME set to `path`, the settings read again, both undone after: for
    module-scoped fixtures, which cannot take the function-scoped `monkeypatch`."""
    from models.settings import get_settings

    mp = pytest.MonkeyPatch()
    mp.setenv("COSMOGAN_HOME", str(path))
    get_settings.cache_clear()
    try:
        yield path
    finally:
        mp.undo()
        get_settings.cache_clear()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh COSMOGAN_HOME for one test; the settings cache is cleared around it."""
    from models.settings import get_settings

    monkeypatch.setenv("COSMOGAN_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.fixture
def app_env() -> dict[str, str]:
    """Settings (`COSMOGAN_*` variables) of a module's `client` app; a module overrides it."""
    return {}


@pytest.fixture
def client(home: Path, monkeypatch: pytest.MonkeyPatch, app_env: dict[str, str]) -> Iterator:
    """The API app with the key `API_KEY`, against a Redis that is not there.

    Nothing listens on port 1: any route that needed the broker would fail loudly.
    """
    from fastapi.testclient import TestClient

    from models.settings import get_settings

    monkeypatch.setenv("COSMOGAN_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("COSMOGAN_API_KEY", API_KEY)
    for name, value in app_env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    (home / "data").mkdir(parents=True, exist_ok=True)
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6,000-row analytic mini-Balrog catalog (built once; tests only read it)."""
    from tests.catalogs import make_analytic_catalog

    return make_analytic_catalog(tmp_path_factory.mktemp("catalog") / "analytic.parquet", 6000)
