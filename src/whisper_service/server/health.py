"""The page, liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, Response

from .service import Service, get_service

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()
ServiceDep = Annotated[Service, Depends(get_service)]


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Needs no key, so probes carry none."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(service: ServiceDep) -> JSONResponse:
    """Readiness: 200 once the default model is loaded, so no client waits for a load; 503
    from the moment a SIGTERM starts the drain, so load balancers send new clients elsewhere
    while open streams finish here."""
    name = service.settings.default_model
    loaded = service.manager.key(name) in service.manager.loaded
    draining = service.sessions.draining
    ready = loaded and not draining
    return JSONResponse({"ready": ready, "draining": draining, "default_model": name,
                         "decode_workers": service.manager.num_workers},
                        status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def prometheus(service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")
