"""`GET /models`, `POST /models/{name}/activate`: registered versions and the active one."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from app.deps import ApiKey, RegistryDep
from app.schemas import NAME_PATTERN, ActivateRequest

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="e.g. nebula, balrog")]


@router.get("", summary="Every model, its versions with their metrics, and the active one")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return {"models": await asyncio.to_thread(registry.describe)}


@router.post(
    "/{name}/activate",
    dependencies=[ApiKey],
    summary="Serve another version; workers load it, then swap it in atomically",
)
async def activate(name: ModelName, body: ActivateRequest, registry: RegistryDep) -> dict[str, Any]:
    mv = await asyncio.to_thread(registry.activate, name, body.version)  # 404 if unknown
    return {"name": mv.name, "active": mv.version, "meta": mv.meta}
