"""Registered model versions: list them, pick the active one, annotate and delete them."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from app.deps import ApiKey, RegistryDep
from app.errors import ApiError
from app.openapi import AUTH, BASE, authed_json_example, example
from app.schemas import NAME_PATTERN, ActivateRequest, VersionPatch
from models.registry import DEFAULT_WEIGHTS_DIR, Registry, VersionInUse
from models.results import results_table

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[
    str, PathParam(pattern=NAME_PATTERN, description="e.g. nebula, balrog", examples=["nebula"])
]
Version = Annotated[
    str, PathParam(pattern=NAME_PATTERN, description="A registered version.", examples=["default"])
]
ACTIVATE_DOC = (
    "Requests without an explicit `version` are answered by this version from now on; a "
    "version that fails to load leaves the previous one serving."
    + authed_json_example("POST", "/models/nebula/activate", '{"version": "default"}')
)
NOTE_DOC = (
    "The note is shown beside the version in `GET /models` and on the web page; an empty "
    "note removes it."
    + authed_json_example(
        "PATCH", "/models/nebula/versions/default", '{"note": "shipped CPU recipe"}'
    )
)


@router.get(
    "",
    summary="Every model, its versions with their metrics, and the active one",
    description='`{"models": {name: {"active": version, "family": "image" | "emulator", '
    '"versions": [...]}}}`. A model name is what `GET /generate?model=` and `POST /emulate` '
    "call; the network `kind` (and the `preset` that trained it) belong to each version. Each "
    "version has its `created` time, `source` (`shipped` or `training`), `job_id`, `metrics`, "
    "`note` and `results`: one row per figure with the model's value, the Gaussian "
    "baseline's, the floor, their ratio and a verdict against the baseline (lower is better)."
    + example(f"curl {BASE}/models"),
)
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return {"models": await asyncio.to_thread(_describe, registry)}


def _describe(registry: Registry) -> dict[str, Any]:
    """The registry's description, each version with its `results` table (a shipped
    version's floor and verdicts come from the sidecar file beside its weights)."""
    models = registry.describe()
    for name, m in models.items():
        sidecar = DEFAULT_WEIGHTS_DIR / f"{name}.json"
        extra = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        for v in m["versions"]:
            shipped = v.get("source") == "shipped"
            v["results"] = results_table(v.get("metrics"), shipped=extra if shipped else None)
    return models


@router.post(
    "/{name}/activate",
    dependencies=[ApiKey],
    summary="Serve another version; workers load it, then swap it in atomically",
    description=ACTIVATE_DOC,
)
async def activate(name: ModelName, body: ActivateRequest, registry: RegistryDep) -> dict[str, Any]:
    mv = await asyncio.to_thread(registry.activate, name, body.version)  # 404 if unknown
    return {"name": mv.name, "active": mv.version, "meta": mv.meta}


@router.patch(
    "/{name}/versions/{version}",
    dependencies=[ApiKey],
    summary="Set a version's note (a tag, what it is for)",
    description=NOTE_DOC,
)
async def patch_version(
    name: ModelName, version: Version, body: VersionPatch, registry: RegistryDep
) -> dict[str, Any]:
    mv = await asyncio.to_thread(registry.set_note, name, version, body.note)  # 404 if unknown
    return {"name": mv.name, "version": mv.version, "meta": mv.meta}


@router.delete(
    "/{name}/versions/{version}",
    dependencies=[ApiKey],
    responses={409: {"description": "The version is the active one."}},
    summary="Delete a version and its weights (not the active one)",
    description="`409` for the active version: activate another first. The shipped "
    "`default` version is registered again at the next start of the service."
    + example(f"curl -X DELETE {BASE}/models/nebula/versions/$VERSION {AUTH}"),
)
async def delete_version(
    name: ModelName, version: Version, registry: RegistryDep
) -> dict[str, Any]:
    try:
        await asyncio.to_thread(registry.delete, name, version)  # 404 if unknown
    except VersionInUse as exc:
        raise ApiError(409, str(exc)) from exc
    return {"name": name, "deleted": version}
