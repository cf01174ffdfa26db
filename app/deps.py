"""Request dependencies as `Annotated` aliases: settings, stores, the result waiter, auth."""

from __future__ import annotations

import hmac
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.limits import holds_api_key
from app.results import ResultWaiter
from models.registry import Registry
from models.settings import Settings, get_settings
from worker.jobs import JobStore

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_registry(settings: SettingsDep) -> Registry:
    return Registry(settings.registry_dir)


def get_jobs(request: Request) -> JobStore:
    return request.app.state.jobs


def get_waiter(request: Request) -> ResultWaiter:
    return request.app.state.waiter


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


RegistryDep = Annotated[Registry, Depends(get_registry)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
WaiterDep = Annotated[ResultWaiter, Depends(get_waiter)]
CeleryDep = Annotated[Celery, Depends(get_celery)]

_bearer = HTTPBearer(auto_error=False, description="The API key (COSMOGAN_API_KEY).")


def require_api_key(
    settings: SettingsDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Mutating routes: `Authorization: Bearer <key>`, compared in constant time."""
    if creds is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = (settings.api_key or "").encode()
    if not hmac.compare_digest(creds.credentials.encode(), expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid API key")


ApiKey = Depends(require_api_key)


def has_api_key(request: Request, settings: SettingsDep) -> bool:
    """Read routes open to anyone: whether the caller sent the valid key (it sees more).
    Read from the header directly, so these routes do not claim to need a key."""
    return holds_api_key(request, settings.api_key)


Authenticated = Annotated[bool, Depends(has_api_key)]
