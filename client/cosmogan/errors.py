"""The client's exceptions: each carries the server's own message."""

from __future__ import annotations

from typing import Any

import httpx


class CosmoganError(Exception):
    """Base class of everything the client raises on purpose."""


class ApiError(CosmoganError):
    """The service answered with an error status; `message` is its `detail`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        problems: list[dict[str, Any]] | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.problems = problems or []
        self.response = response
        super().__init__(self._text())

    def _text(self) -> str:
        lines = [f"{self.status}: {self.message}"]
        for p in self.problems[:10]:
            # `row` is the row's position in the catalog, counted from 0 (as in `df.iloc`)
            parts = [] if p.get("row") is None else [f"row index {p['row']}"]
            parts += [] if p.get("column") is None else [f"column {p['column']}"]
            where = " ".join(parts)
            lines.append(f"  {where}: {p.get('message')}" if where else f"  {p.get('message')}")
        return "\n".join(lines)


class AuthenticationError(ApiError):
    """401 or 403: no API key, or the wrong one (pass `api_key=` or set COSMOGAN_API_KEY)."""


class NotFoundError(ApiError):
    """404: an unknown model, version, job or dataset."""


class ConflictError(ApiError):
    """409: the resource is in a state that does not allow the call (e.g. a job not done)."""


class InvalidRequestError(ApiError):
    """400, 413, 415 or 422: the request itself is wrong; `problems` names rows and columns."""


class ServiceBusyError(ApiError):
    """429, 503 or 504 that outlasted the retries; `retry_after` is the server's hint."""

    @property
    def retry_after(self) -> float | None:
        if self.response is None:
            return None
        return parse_retry_after(self.response.headers.get("retry-after"))


class JobFailed(CosmoganError):
    """A job ended failed or cancelled while the caller waited for it to succeed."""

    def __init__(self, job_id: str, state: str, error: str | None) -> None:
        self.job_id, self.state, self.error = job_id, state, error
        super().__init__(f"job {job_id} {state}" + (f": {error}" if error else ""))


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    422: InvalidRequestError,
    429: ServiceBusyError,
    503: ServiceBusyError,
    504: ServiceBusyError,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_from(response: httpx.Response) -> ApiError:
    """The exception for an error response, with the server's `detail` and `problems`."""
    message, problems = response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI's own 422 shape
            problems = [
                {
                    "column": ".".join(map(str, d.get("loc", [])[1:])) or None,
                    "message": d.get("msg"),
                }
                for d in detail
                if isinstance(d, dict)
            ]
            message = "invalid request"
        elif detail:
            message = str(detail)
        problems = body.get("problems") or problems
    elif response.text:
        message = response.text[:500]
    cls = _BY_STATUS.get(response.status_code, ApiError)
    return cls(response.status_code, message, problems=problems, response=response)
