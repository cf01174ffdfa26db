"""cosmogan: a Python client of the cosmogan service (nebula images, Balrog emulation, training)."""

from cosmogan._common import Event, RetryPolicy
from cosmogan.aio import AsyncClient, AsyncJob
from cosmogan.client import Client, Job
from cosmogan.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    CosmoganError,
    InvalidRequestError,
    JobFailed,
    NotFoundError,
    ServiceBusyError,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncJob",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "CosmoganError",
    "Event",
    "InvalidRequestError",
    "Job",
    "JobFailed",
    "NotFoundError",
    "RetryPolicy",
    "ServiceBusyError",
]
