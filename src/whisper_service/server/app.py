"""The app factory: wires the shared service, lifespan, middleware and routers together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..config import Settings, get_settings
from ..engine.decoder import warm_up
from ..engine.manager import ModelManager
from ..registry import ModelNotFoundError
from ..vad import get_vad_model
from . import health, openai, realtime, stream, tickets
from .admission import UPLOAD_ENVELOPE_BYTES, RateLimitMiddleware, UploadGuard
from .auth import ApiKeyMiddleware
from .errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    model_not_found_handler,
    validation_error_handler,
)
from .health import STATIC
from .logs import install_log_filters
from .service import Service


def create_app(settings: Settings | None = None, manager: ModelManager | None = None) -> FastAPI:
    """The server on a ModelManager of its own, or on a shared one (tests share theirs)."""
    settings = settings or get_settings()
    install_log_filters()  # keys and tickets in query strings never reach uvicorn's logs
    service = Service(settings, manager or ModelManager.from_settings(settings, concurrent=True))
    app = FastAPI(title="Whisper Service", version="0.1.0", lifespan=_lifespan)
    app.state.service = service
    if service.rate_limit.enabled:  # inside the key check: only known clients spend tokens
        app.add_middleware(RateLimitMiddleware, limiter=service.rate_limit,
                           prefixes=("/v1/audio/", "/v1/stream/ticket"),
                           on_reject=service.metrics.rejected.labels("rate_limited").inc)
    app.add_middleware(UploadGuard, prefixes=("/v1/audio/",),
                       max_bytes=settings.max_upload_bytes + UPLOAD_ENVELOPE_BYTES,
                       timeout_s=settings.upload_timeout_s,
                       on_reject=lambda reason: service.metrics.rejected.labels(reason).inc())
    app.add_middleware(ApiKeyMiddleware, api_key=service.api_key,
                       on_reject=service.metrics.rejected.labels("unauthorized").inc)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(ModelNotFoundError, model_not_found_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (health, openai, stream, realtime, tickets):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the default model and the shared VAD before taking traffic, so no client waits
    for a load (or pays onnxruntime's start-up in its own memory figures). On the way out,
    open sessions finish first."""
    service: Service = app.state.service
    service.sessions.resume()
    manager = service.manager
    default = await run_in_threadpool(manager.acquire, service.settings.default_model)
    try:
        await run_in_threadpool(get_vad_model)
        await run_in_threadpool(warm_up, default, manager.num_workers)
        yield
    finally:
        await service.sessions.drain()
        manager.release(default)
