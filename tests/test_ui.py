"""The page, its static files and the API docs, served without any network access."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.routes.ui import STATIC_DIR
from training.presets import PRESETS


@pytest.fixture
def app_env() -> dict[str, str]:
    return {"COSMOGAN_MAX_GENERATE_N": "24"}


def local_assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


def test_the_page_and_every_asset_it_names_are_served(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assets = [a for a in local_assets(r.text) if a.startswith("/static/")]
    assert "/static/app.js" in assets and "/static/vendor/chart.js/chart.umd.min.js" in assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert not [a for a in local_assets(r.text) if a.startswith(("http:", "https:", "//"))]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_load_their_scripts_from_the_service(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assets = local_assets(r.text)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text


def test_vendored_libraries_carry_their_licences() -> None:
    vendor = STATIC_DIR / "vendor"
    for lib in ("chart.js", "swagger-ui", "redoc"):
        names = {p.name for p in (vendor / lib).iterdir()}
        assert names & {"LICENSE", "LICENSE.md"}, lib
    # no file reaches out to a CDN at run time
    for js in (p for p in vendor.rglob("*.js") if p.is_file()):
        text = js.read_text(errors="replace")
        assert "cdn.redoc.ly" not in text and "cdn.jsdelivr.net" not in text, js


def test_ui_config_reports_the_server_limits_and_presets(client: TestClient) -> None:
    cfg = client.get("/ui/config").json()
    assert cfg["max_generate_n"] == 24
    assert set(cfg["presets"]) == set(PRESETS)
    assert cfg["presets"]["balrog"]["family"] == "emulator"
    assert cfg["presets"]["nebula"]["defaults"]["latent_dim"] == PRESETS["nebula"].latent_dim
    assert cfg["true_mag_aliases"]["bdf_mag_dered_calib_r"] == "true_mag_r"


def test_openapi_documents_what_the_server_does(client: TestClient) -> None:
    from app.schemas import ActivateRequest, EmulateRequest, TrainRequest

    spec = client.get("/openapi.json").json()
    preset = spec["components"]["schemas"]["TrainRequest"]["properties"]["preset"]
    assert preset["enum"] == sorted(PRESETS)
    n = next(p for p in spec["paths"]["/generate"]["get"]["parameters"] if p["name"] == "n")
    assert n["schema"]["maximum"] == 24  # COSMOGAN_MAX_GENERATE_N of this server
    sample = spec["paths"]["/train/{job_id}/samples/{name}"]["get"]["responses"]["200"]
    assert list(sample["content"]) == ["image/png"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("description"), (method, path)
            assert "Example" in op["description"], (method, path)
    # the body examples Swagger UI pre-fills are valid requests
    for model in (TrainRequest, EmulateRequest, ActivateRequest):
        examples = model.model_json_schema()["examples"]
        assert examples and all(model.model_validate(e) for e in examples)
