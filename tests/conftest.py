"""Shared test setup: small thread pools (2-core machines), an isolated COSMOGAN_HOME."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh COSMOGAN_HOME for one test; the settings cache is cleared around it."""
    from models.settings import get_settings

    monkeypatch.setenv("COSMOGAN_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()
