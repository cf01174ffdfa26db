"""The web page at `/`, its settings, and the API docs served from local assets (no CDN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.deps import SettingsDep
from models import columns
from models.kinds import family_of
from models.registry import DEFAULT_MODEL
from training.presets import PRESETS, config_to_dict

router = APIRouter(tags=["page"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
VENDOR = "/static/vendor"
FAVICON = "/static/favicon.svg"
DOCS_PAGE = {"openapi_url": "/openapi.json", "title": "cosmogan API"}


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    # no-cache: the page is tiny and a stale copy after an upgrade would call old routes
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        **DOCS_PAGE,
        swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        oauth2_redirect_url=None,
        # validatorUrl: null keeps Swagger UI from calling its online validator
        swagger_ui_parameters={"validatorUrl": None, "tryItOutEnabled": True},
    )


@router.get("/redoc", include_in_schema=False)
def redoc() -> HTMLResponse:
    return get_redoc_html(
        **DOCS_PAGE,
        redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )


UI_CONFIG_EXAMPLE = {
    "max_generate_n": 64,
    "max_emulate_rows": 10000,
    "max_emulate_samples": 16,
    "presets": {"balrog": {"family": "emulator", "defaults": {"epochs": 200, "lr": 0.0001}}},
    "emulator_inputs": list(columns.INPUTS),
    "true_mag_aliases": {"bdf_mag_dered_calib_r": "true_mag_r"},
    "default_models": {"image": "nebula", "emulator": "balrog"},
}


@router.get(
    "/ui/config",
    summary="Request limits, presets with their defaults, and emulator columns (for the page)",
    responses={200: {"content": {"application/json": {"example": UI_CONFIG_EXAMPLE}}}},
)
def ui_config(settings: SettingsDep) -> dict[str, Any]:
    """What the web page needs to build its forms: the server's limits for `GET /generate`
    and `POST /emulate`, each training preset with its model family and default settings
    (every key is a valid `overrides` key of `POST /train`), the emulator's input columns,
    the catalog aliases that name a true magnitude, and the model name each family trains
    into and serves by default.

    Example:

    ```bash
    curl http://127.0.0.1:8000/ui/config
    ```
    """
    from models.columns import ALIASES

    return {
        "max_generate_n": settings.max_generate_n,
        "max_emulate_rows": settings.max_emulate_rows,
        "max_emulate_samples": settings.max_emulate_samples,
        "presets": {
            name: {"family": family_of(cfg.kind), "defaults": config_to_dict(cfg)}
            for name, cfg in PRESETS.items()
        },
        "emulator_inputs": list(columns.INPUTS),
        "true_mag_aliases": {a: c for a, (c, _) in ALIASES.items() if c in columns.TRUE_MAG},
        "default_models": dict(DEFAULT_MODEL),
    }


def install(app: FastAPI) -> None:
    """The page, its static files and the offline docs (the app is built with docs_url=None)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
