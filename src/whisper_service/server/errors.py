"""Errors a client gets back: HTTP `{"error": {...}}` bodies and WebSocket `error` messages."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from ..protocol import ProtocolError

__all__ = ["ApiError", "ProtocolError", "api_error_handler", "error_response"]


class ApiError(Exception):
    """An HTTP request the server refuses; becomes OpenAI's error body with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "code": code}}, status_code=status)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message)
