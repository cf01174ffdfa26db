"""Model versions: register, activate, notes and deletion, in the registry and over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.registry import FamilyMismatch, Registry, RegistryError, VersionInUse
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


# --------------------------------------------------------------------------------------------
# names: what a user calls; kinds: attributes of versions


def _legacy_version(root: Path, name: str, version: str, weights: Path) -> None:
    """A version as registries wrote them before names and kinds were separate."""
    vdir = root / name / "versions" / version
    vdir.mkdir(parents=True)
    (vdir / "model.pt").write_bytes(weights.read_bytes())
    meta = {
        "version": version,
        "created": 1.0,
        "job_id": version,
        "metrics": {},
        "source": "training",
    }
    (vdir / "meta.json").write_text(json.dumps(meta))
    (root / name / "active.json").write_text(json.dumps({"version": version}))


def test_versions_carry_their_kind_and_names_their_family(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    reg = Registry(tmp_path / "registry")
    reg.register("my-emulator", "a", weights, kind="cflow", preset="balrog-flow")
    reg.register("my-emulator", "b", weights, kind="cwgan-gp", preset="balrog")
    _legacy_version(reg.root, "balrog-flow", "old", weights)
    _legacy_version(reg.root, "nebula-dcgan", "old", weights)
    models = reg.describe()
    assert models["my-emulator"]["family"] == "emulator"
    assert [v["kind"] for v in models["my-emulator"]["versions"]] == ["cflow", "cwgan-gp"]
    # versions registered under a preset's name before: listed, with the preset's kind
    assert (
        models["balrog-flow"]["family"] == "emulator" and models["balrog-flow"]["active"] == "old"
    )
    assert models["balrog-flow"]["versions"][0]["kind"] == "cflow"
    assert models["nebula-dcgan"]["versions"][0]["kind"] == "dcgan-64"
    assert reg.get("balrog-flow").version == "old"
    # a name serves one family
    with pytest.raises(FamilyMismatch, match="'my-emulator' is an emulator"):
        reg.register("my-emulator", "c", weights, kind="wgan-gp-128")
    assert reg.family("nobody") is None


def test_a_training_job_registers_under_the_name_it_was_given_or_its_familys(tmp_path) -> None:
    from worker.training_job import _register

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    root = tmp_path / "registry"
    flow = {"preset": "balrog-flow", "config": {"kind": "cflow"}}
    assert _register(flow, "j1", {"model": weights}, root) == "balrog@j1"
    ref = _register({**flow, "target": "mine", "activate": True}, "j2", {"model": weights}, root)
    assert ref == "mine@j2"
    dcgan = {"preset": "nebula-dcgan", "config": {"kind": "dcgan-64"}}
    assert _register(dcgan, "j3", {"model": weights}, root) == "nebula@j3"
    reg = Registry(root)
    assert reg.active_version("mine") == "j2" and reg.active_version("balrog") is None
    assert reg.get("balrog", "j1").meta["kind"] == "cflow"
    assert reg.get("nebula", "j3").meta["preset"] == "nebula-dcgan"
    # a record from before `target` existed registers under its family's name too
    assert _register({"preset": "balrog"}, "j4", {"model": weights}, root) == "balrog@j4"
    assert reg.get("balrog", "j4").kind == "cwgan-gp"


def test_post_train_names_the_model_and_refuses_the_other_familys(client) -> None:
    r = client.post(
        "/train", json={"preset": "balrog-flow", "model": "nebula", "overrides": {"dry_run": True}},
        headers=AUTH,
    )  # fmt: skip
    assert r.status_code == 422 and "is an image generator" in r.json()["detail"]
    r = client.post("/train", json={"preset": "balrog", "model": "bad/name"}, headers=AUTH)
    assert r.status_code == 422
