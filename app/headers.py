"""Security headers on every response: a Content-Security-Policy, no framing, no sniffing."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import Any

# The page runs only its own scripts (app.js and the vendored Chart.js) and talks only to
# this origin; it asks for the API key, so nothing else may run in it or frame it.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# API answers (JSON, images, tables) are never documents that load anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
COMMON = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def inline_script_hashes(html: str) -> list[str]:
    """CSP source expressions ('sha256-…') allowing exactly the inline scripts of `html`."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _SCRIPT.findall(html)
    ]


def docs_csp(hashes: Iterable[str]) -> str:
    """Swagger UI and ReDoc: their vendored bundles, their one inline start-up script each
    (by hash), the inline styles they inject, ReDoc's blob: worker and data: images."""
    return (
        f"default-src 'self'; script-src 'self' {' '.join(hashes)}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
        "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


class SecurityHeadersMiddleware:
    """Adds the headers to every HTTP response (a route's own value wins). HTML pages get
    `page_csp`, or their entry in `csp_by_path`; everything else gets `API_CSP`."""

    def __init__(
        self, app: Any, csp_by_path: dict[str, str] | None = None, page_csp: str = PAGE_CSP
    ) -> None:
        self.app, self.csp_by_path, self.page_csp = app, csp_by_path or {}, page_csp

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                ctype = dict(headers).get(b"content-type", b"")
                csp = self.csp_by_path.get(path) or (
                    self.page_csp if ctype.startswith(b"text/html") else API_CSP
                )
                for name, value in (("Content-Security-Policy", csp), *COMMON.items()):
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
