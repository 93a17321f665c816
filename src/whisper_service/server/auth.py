"""The optional API key: one check for HTTP requests and WebSocket handshakes alike."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

# The page and its assets hold no data, and liveness probes carry no key.
PUBLIC_PATHS = ("/health", "/")
PUBLIC_PREFIXES = ("/static/",)


class ApiKey:
    """Compares a request's key with the configured one in constant time.

    Browsers cannot set headers on a WebSocket, so `?api_key=` is accepted besides
    `Authorization: Bearer` and `X-API-Key`."""

    def __init__(self, key: str | None) -> None:
        self.key = key

    def allows(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        if not self.key:
            return True
        auth = headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key")
        given = given or query.get("api_key") or ""
        return hmac.compare_digest(given.encode(), self.key.encode())


class ApiKeyMiddleware:
    """Refuses HTTP requests without the key (401). WebSockets pass through: the stream
    handler accepts them first, so it can say why in an `error` message before closing."""

    def __init__(self, app: ASGIApp, api_key: ApiKey, on_reject=None) -> None:
        self.app, self.api_key, self.on_reject = app, api_key, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._public(scope["path"]):
            request = HTTPConnection(scope)
            if not self.api_key.allows(request.headers, request.query_params):
                if self.on_reject:
                    self.on_reject()
                response = error_response(401, "unauthorized", "missing or invalid API key")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
