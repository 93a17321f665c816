"""`POST /v1/stream/ticket`: a single-use ticket for opening `/v1/stream` from a browser.

The request carries the key in a header (ApiKeyMiddleware has checked it by the time the route
runs); the ticket then goes in the WebSocket URL, where it is worthless once used or after
`ticket_ttl_s`, unlike the key itself. Tickets are signed, not stored: any replica with the
same keys accepts one (auth.Tickets).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .service import Service, get_service

router = APIRouter()
ServiceDep = Annotated[Service, Depends(get_service)]


@router.post("/v1/stream/ticket")
async def issue_ticket(service: ServiceDep) -> JSONResponse:
    tickets = service.api_key.tickets
    ttl = tickets.ttl_s
    return JSONResponse({"ticket": tickets.issue(),
                         "expires_in": int(ttl) if ttl.is_integer() else ttl},
                        headers={"Cache-Control": "no-store"})
