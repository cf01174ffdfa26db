"""Production refuses weak API keys; development on a public address warns."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from models.settings import Settings


@pytest.mark.parametrize("key", ["dev", "changeme", "CHANGEME", "short-key-12345", "a" * 40])
def test_production_refuses_weak_keys(key: str) -> None:
    with pytest.raises(ValidationError, match="COSMOGAN_API_KEY"):
        Settings(mode="production", api_key=key)


def test_production_accepts_a_random_key_and_development_keeps_dev() -> None:
    assert Settings(mode="production", api_key="Zq3x9v2Lk8Pw4Rt6").api_key == "Zq3x9v2Lk8Pw4Rt6"
    assert Settings(mode="development").api_key == "dev"


def test_development_on_a_public_address_warns(caplog: pytest.LogCaptureFixture) -> None:
    from launcher.supervisor import warn_if_exposed

    dev = Settings(mode="development")
    assert dev.exposure_warning("127.0.0.1") is None and dev.exposure_warning("::1") is None
    assert "well-known placeholder" in dev.exposure_warning("0.0.0.0")
    strong = Settings(mode="development", api_key="Zq3x9v2Lk8Pw4Rt6")
    assert "reachable beyond this machine" in strong.exposure_warning("192.168.1.4")
    assert (
        Settings(mode="production", api_key="Zq3x9v2Lk8Pw4Rt6").exposure_warning("0.0.0.0") is None
    )
    with caplog.at_level(logging.WARNING):
        warn_if_exposed("0.0.0.0")
    assert "NON-LOOPBACK" in caplog.text
