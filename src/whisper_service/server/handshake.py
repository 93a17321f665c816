"""What both WebSocket protocols (`/v1/stream`, `/v1/realtime`) do before their session opens
(refuse while draining; once accepted, check the key and the rate limit; then wait, in a
bounded waiting place, for the first message within `config_timeout_s`), and how both end a
socket on an error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from .admission import client_id
from .errors import ProtocolError, error_response
from .service import Service


async def refused_while_draining(ws: WebSocket, service: Service) -> bool:
    """While draining, refuse the handshake with HTTP 503 (where the server supports denial
    responses, as uvicorn does): a load balancer then retries the next replica (nginx:
    `proxy_next_upstream http_503`), and the client never sees this one. Without the
    extension, the socket is accepted and `Sessions.open` closes it with `shutting_down`."""
    if not service.sessions.draining or \
            "websocket.http.response" not in ws.scope.get("extensions", {}):
        return False
    service.metrics.rejected.labels("draining").inc()
    await ws.send_denial_response(error_response(
        503, "shutting_down", "server shutting down; connect again", {"Retry-After": "1"}))
    return True


def admit(ws: WebSocket, service: Service) -> None:
    """The key (header, subprotocol, `?ticket=`), then the rate limit: an open spends the
    client's token, unless it came with a ticket, whose issue spent it (`POST
    /v1/stream/ticket` is rate-limited like uploads). Raises ProtocolError."""
    if not service.api_key.allows_websocket(ws.headers, ws.query_params):
        service.metrics.rejected.labels("unauthorized").inc()
        raise ProtocolError("unauthorized", "missing or invalid API key or ticket")
    if "ticket" in ws.query_params:
        return
    wait = service.rate_limit.wait(ws)
    if wait:
        service.metrics.rejected.labels("rate_limited").inc()
        raise ProtocolError("rate_limited", service.rate_limit.explain(wait), 1013)


EVICTED = ProtocolError("config_timeout", "no config yet while too many sockets waited for "
                        "theirs: closed to make room; send the config right after opening",
                        1008)


async def first_message(ws: WebSocket, service: Service,
                        evict: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """The socket's first message, read while it holds a waiting place (`PendingSockets`),
    not a session slot. `evict` closes this socket (with `EVICTED`, in its protocol's
    shape) if the waiting places run out while it waits: its read then ends with the
    disconnect. Raises ProtocolError `config_timeout` (1008) when no message came within
    `config_timeout_s`, `too_many_pending` (1013) when this client has too many sockets
    waiting, and WebSocketDisconnect."""
    timeout = service.settings.config_timeout_s
    async with service.pending.waiting(client_id(ws), evict):
        try:
            message = await asyncio.wait_for(ws.receive(), timeout)
        except TimeoutError:
            service.metrics.rejected.labels("config_timeout").inc()
            raise ProtocolError("config_timeout", f"no config within {timeout:g} s of "
                                "opening", 1008) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


async def close_with_error(ws: WebSocket, error: ProtocolError,
                           send: Callable[[ProtocolError], Awaitable[None]]) -> None:
    """Tell the client (`send`, in the protocol's own error shape), then close with the
    error's code; a client that is already gone needs neither."""
    if ws.client_state == WebSocketState.CONNECTED:
        try:
            await send(error)
            await ws.close(error.close_code, error.message[:120])
        except (WebSocketDisconnect, RuntimeError):
            pass
