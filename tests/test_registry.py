"""Model versions: register, activate, notes and deletion, in the registry and over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.registry import Registry, RegistryError, VersionInUse
from tests.conftest import AUTH


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"not really weights")
    reg = Registry(tmp_path / "registry")
    for version in ("v1", "v2"):
        reg.register("nebula", version, weights, metrics={"psd": 0.4})
    reg.activate("nebula", "v1")
    return reg


def test_a_note_is_kept_in_the_version_meta_and_can_be_removed(registry: Registry) -> None:
    mv = registry.set_note("nebula", "v2", "  wider critic  ")
    assert mv.meta["note"] == "wider critic" and mv.meta["metrics"] == {"psd": 0.4}
    versions = registry.describe()["nebula"]["versions"]
    assert [v.get("note") for v in versions] == [None, "wider critic"]
    assert "note" not in registry.set_note("nebula", "v2", "").meta
    with pytest.raises(ValueError, match="at most 500"):
        registry.set_note("nebula", "v2", "x" * 501)
    with pytest.raises(RegistryError, match="no version"):
        registry.set_note("nebula", "v9", "x")


def test_delete_removes_a_version_but_never_the_active_one(registry: Registry) -> None:
    with pytest.raises(VersionInUse, match="active version"):
        registry.delete("nebula", "v1")
    registry.delete("nebula", "v2")
    assert [v.version for v in registry.versions("nebula")] == ["v1"]
    assert not (registry.root / "nebula" / "versions" / "v2").exists()
    with pytest.raises(RegistryError, match="no version 'v2'"):
        registry.get("nebula", "v2")
    with pytest.raises(RegistryError, match="no version"):
        registry.delete("nebula", "v2")
    with pytest.raises(RegistryError, match="invalid version"):
        registry.delete("nebula", "../v1")
    assert registry.get("nebula").version == "v1"  # the active one still serves


@pytest.fixture
def client(client: TestClient, tmp_path: Path) -> TestClient:
    """The shared app, with two versions of `balrog` registered (v1 active)."""
    from models.settings import get_settings

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    reg = Registry(get_settings().registry_dir)
    for version in ("v1", "v2"):
        reg.register("balrog", version, weights)
    reg.activate("balrog", "v1")
    return client


def test_note_and_delete_over_http(client: TestClient) -> None:
    assert client.patch("/models/balrog/versions/v2", json={"note": "x"}).status_code == 401
    assert client.delete("/models/balrog/versions/v2").status_code == 401

    r = client.patch("/models/balrog/versions/v2", json={"note": "candidate"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["meta"]["note"] == "candidate"
    listed = client.get("/models").json()["models"]["balrog"]["versions"]
    assert {v["version"]: v.get("note") for v in listed} == {"v1": None, "v2": "candidate"}
    r = client.patch("/models/balrog/versions/v2", json={"note": "x" * 501}, headers=AUTH)
    assert r.status_code == 422 and "note" in r.json()["detail"]
    assert (
        client.patch("/models/balrog/versions/v9", json={"note": "x"}, headers=AUTH).status_code
        == 404
    )

    r = client.delete("/models/balrog/versions/v1", headers=AUTH)
    assert r.status_code == 409 and "active" in r.json()["detail"]
    r = client.delete("/models/balrog/versions/v2", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"name": "balrog", "deleted": "v2"}
    assert [v["version"] for v in client.get("/models").json()["models"]["balrog"]["versions"]] == [
        "v1"
    ]
    assert client.delete("/models/balrog/versions/v2", headers=AUTH).status_code == 404
