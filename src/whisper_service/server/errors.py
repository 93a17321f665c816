"""Errors a client gets back: HTTP `{"error": {...}}` bodies and WebSocket `error` messages."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .stream_protocol import ProtocolError

__all__ = ["ApiError", "ProtocolError", "api_error_handler", "error_response",
           "http_error_handler", "model_not_found_handler", "validation_error_handler"]


class ApiError(Exception):
    """An HTTP request the server refuses; becomes OpenAI's error body with `status`."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers  # such as Retry-After


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "code": code}}, status_code=status, headers=headers)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def model_not_found_handler(_: Request, exc: Exception) -> JSONResponse:
    """A model the server does not offer, wherever a route met it (404, OpenAI's code)."""
    return error_response(404, "model_not_found", str(exc))


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """A form or query the route's types refuse (a missing file, `temperature=warm`): 400 in
    OpenAI's shape rather than FastAPI's 422 `{"detail": [...]}`, naming the first field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
    message = first.get("msg", "invalid request")
    return error_response(400, "invalid_request", f"{field}: {message}" if field else message)


async def http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """The framework's own refusals (404, 405, a multipart body without a boundary) in
    OpenAI's shape, so every error a client sees parses the same way."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
