"""FastAPI app: WebSocket streaming, OpenAI-compatible HTTP API, the live page, health, metrics.

Every session and request shares the ModelManager's one instance per model. A client's mistake
or disappearance ends only that client's session; nothing it owned outlives it.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .audio import SAMPLE_RATE, AudioError, decode_file
from .config import Settings, get_settings
from .formats import MEDIA_TYPES, render
from .metrics import Metrics
from .models import LoadedModel, ModelInUseError, ModelManager
from .protocol import ProtocolError, Resampler, StreamConfig, parse_config, parse_json
from .registry import BUNDLED, ModelNotFoundError
from .streaming import StreamEvent, StreamingSession
from .transcribe import Decoder, DecodeRequest, TranscribeOptions
from .vad import get_vad_model

STATIC = Path(__file__).parent / "static"
OPENAI_ALIASES = ("whisper-1",)  # clients written for OpenAI send this name


class AudioForm(BaseModel):
    """The form fields of OpenAI's audio endpoints (translations ignore the granularities)."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    timestamp_granularities: list[str] = Field(default_factory=list,
                                               alias="timestamp_granularities[]")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def create_app(settings: Settings | None = None, manager: ModelManager | None = None) -> FastAPI:
    settings = settings or get_settings()
    manager = manager or ModelManager.from_settings(settings, concurrent=True)
    metrics = Metrics(manager)
    sessions: dict[str, asyncio.Event] = {}  # session id -> "finish now" signal

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Load the default model and the shared VAD before taking traffic, so no client waits
        # for a load (or pays onnxruntime's start-up in its own memory figures).
        app.state.default_model = await run_in_threadpool(manager.acquire, settings.default_model)
        try:
            await run_in_threadpool(get_vad_model)
            await _warm_up(app.state.default_model, manager.num_workers)
            yield
        finally:
            await app.state.drain()
            manager.release(app.state.default_model)

    app = FastAPI(title="Whisper Service", version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.manager, app.state.metrics = settings, manager, metrics
    app.state.sessions = sessions

    async def drain(timeout: float = 10.0) -> None:
        """Ask every open session to finalize and send its last finals, then wait for them."""
        for finish in list(sessions.values()):
            finish.set()
        deadline = time.monotonic() + timeout
        while sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    app.state.drain = drain

    def model_name(requested: str | None) -> str:
        if not requested or requested in OPENAI_ALIASES:
            return settings.default_model
        return requested

    def authorized(headers: Any, query: Any) -> bool:
        if not settings.api_key:
            return True
        auth = headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key")
        given = given or query.get("api_key") or ""
        return hmac.compare_digest(given.encode(), settings.api_key.encode())

    @app.middleware("http")
    async def api_key_guard(request: Request, call_next):
        public = request.url.path in ("/health", "/") or request.url.path.startswith("/static/")
        if not public and not authorized(request.headers, request.query_params):
            metrics.rejected.labels("unauthorized").inc()
            return _error(401, "unauthorized", "missing or invalid API key")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    # -- pages, health, metrics -----------------------------------------------------------

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        loaded = manager.key(settings.default_model) in manager.pipelines
        return JSONResponse({"ready": loaded, "default_model": settings.default_model,
                             "decode_workers": manager.num_workers},
                            status_code=200 if loaded else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        loaded = {k.name: m for k, m in manager.pipelines.items()}
        names = list(dict.fromkeys([settings.default_model, *BUNDLED, *loaded]))
        return {"object": "list", "data": [
            {"id": name, "object": "model", "owned_by": "whisper-service",
             "loaded": name in loaded,
             "languages": ("multilingual" if loaded[name].multilingual else "English-only")
             if name in loaded else ("English-only" if name.endswith(".en") else "multilingual")}
            for name in names]}

    # -- OpenAI-compatible file transcription ---------------------------------------------

    async def transcribe_upload(request: Request, file: UploadFile, form: AudioForm,
                                task: str) -> Response:
        length = int(request.headers.get("content-length") or 0)
        if length > settings.max_upload_bytes + 64 * 1024:
            raise ApiError(413, "file_too_large",
                           f"upload exceeds {settings.max_upload_bytes} bytes")
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, "file_too_large",
                           f"upload exceeds {settings.max_upload_bytes} bytes")
        response_format, granularities = form.response_format, form.timestamp_granularities
        if response_format not in MEDIA_TYPES:
            raise ApiError(400, "invalid_response_format",
                           "response_format must be json, text, srt, vtt or verbose_json")
        lang = None if form.language in (None, "", "auto") else form.language
        try:
            options = TranscribeOptions(
                language=lang, task=task, initial_prompt=form.prompt or None,
                temperature=form.temperature or (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                word_timestamps="word" in granularities)
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        name = model_name(form.model)
        try:
            audio = await run_in_threadpool(decode_file, io.BytesIO(data), file.filename or "file")
            loaded = await run_in_threadpool(manager.acquire, name)
        except AudioError as exc:
            raise ApiError(400, "invalid_audio", str(exc)) from None
        except ModelNotFoundError as exc:
            raise ApiError(404, "model_not_found", str(exc)) from None
        except ModelInUseError as exc:
            raise ApiError(503, "server_busy", str(exc)) from None
        try:
            decoder = Decoder(loaded)
            decoder.check(options)
            started = time.perf_counter()
            transcript = await run_in_threadpool(decoder.decode, DecodeRequest(audio, options))
            metrics.decode_seconds.labels("file").observe(time.perf_counter() - started)
            metrics.audio_seconds.labels("file").inc(transcript.duration)
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        finally:
            manager.release(loaded)
        body = render(transcript, response_format, task)  # type: ignore[arg-type]
        return Response(body, media_type=MEDIA_TYPES[response_format])

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request, file: Annotated[UploadFile, File()],
                             form: Annotated[AudioForm, Form()]) -> Response:
        return await transcribe_upload(request, file, form, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request, file: Annotated[UploadFile, File()],
                           form: Annotated[AudioForm, Form()]) -> Response:
        return await transcribe_upload(request, file, form, "translate")

    # -- WebSocket streaming -----------------------------------------------------------------

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if not authorized(ws.headers, ws.query_params):
            metrics.rejected.labels("unauthorized").inc()
            await _close(ws, 1008, ProtocolError("unauthorized", "missing or invalid API key"))
            return
        if len(sessions) >= settings.max_sessions:
            metrics.rejected.labels("busy").inc()
            await _close(ws, 1013, ProtocolError(
                "server_busy", f"server busy: {settings.max_sessions} streaming sessions open; "
                "retry later"))
            return
        session_id = uuid.uuid4().hex[:12]
        finish = asyncio.Event()
        sessions[session_id] = finish
        metrics.active_sessions.inc()
        metrics.sessions.inc()
        try:
            await _serve_stream(ws, session_id, finish)
        finally:
            sessions.pop(session_id, None)
            metrics.active_sessions.dec()

    async def _serve_stream(ws: WebSocket, session_id: str, finish: asyncio.Event) -> None:
        session: StreamingSession | None = None
        try:
            config = await _read_config(ws)
            name = model_name(config.model)
            options = config.stream_options(settings.min_chunk_s, settings.max_buffer_s,
                                            settings.stream_beam_size, settings.max_context_tokens)
            try:
                session = await run_in_threadpool(
                    StreamingSession.open, manager, name, options,
                    on_decode=metrics.decode_seconds.labels("stream").observe)
            except ModelNotFoundError as exc:
                raise ProtocolError("model_not_found", str(exc)) from None
            except ModelInUseError as exc:
                raise ProtocolError("server_busy", str(exc), 1013) from None
            except ValueError as exc:
                raise ProtocolError("invalid_config", str(exc)) from None
            await ws.send_json({"type": "ready", "session_id": session_id, "config": {
                **config.model_dump(), "model": name, "min_chunk_s": options.min_chunk_s}})
            await _pump(ws, session, config, finish)
        except ProtocolError as exc:
            await _close(ws, exc.close_code, exc)
        except WebSocketDisconnect:
            pass  # the client vanished; the finally below frees everything it had
        finally:
            if session is not None:
                session.close()

    async def _read_config(ws: WebSocket) -> StreamConfig:
        message = await _receive(ws, settings.idle_timeout_s)
        if message.get("bytes") is not None:
            raise ProtocolError("config_required",
                                "send the JSON config message before any audio")
        text = message.get("text") or ""
        return parse_config(parse_json(text))

    async def _pump(ws: WebSocket, session: StreamingSession, config: StreamConfig,
                    finish: asyncio.Event) -> None:
        """Move audio from the socket to the session and events back, until the end."""
        resample = Resampler(config.sample_rate, config.encoding)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        started = time.monotonic()
        reader = asyncio.create_task(_read_frames(ws, queue, resample))
        finisher = asyncio.create_task(finish.wait())
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, finisher, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if reader in done and queue.empty():
                        reader.result()  # re-raise disconnects and protocol errors
                    if finisher in done:
                        await _finish(ws, session, config, "server shutting down", 1001)
                        return
                    continue
                items = [getter.result()]
                while not queue.empty():  # everything that queued up during the last decode
                    items.append(queue.get_nowait())
                audio = [i for i in items if not isinstance(i, (str, ProtocolError))]
                if audio:
                    samples = np.concatenate(audio)
                    metrics.audio_seconds.labels("stream").inc(len(samples) / SAMPLE_RATE)
                    events = await run_in_threadpool(session.push, samples)
                    await _send_events(ws, events, config)
                for item in items:
                    if isinstance(item, ProtocolError):
                        await ws.send_json(item.to_dict())
                    elif isinstance(item, str):  # "end", or why the reader stopped
                        reason = "end of stream" if item == "end" else item
                        await _finish(ws, session, config, reason, 1000)
                        return
                if time.monotonic() - started > settings.max_session_s:
                    await ws.send_json(ProtocolError(
                        "session_too_long",
                        f"session exceeded {settings.max_session_s:.0f} s").to_dict())
                    await _finish(ws, session, config, "maximum session duration", 1000)
                    return
        finally:
            for task in (reader, finisher):
                task.cancel()
            await asyncio.gather(reader, finisher, return_exceptions=True)

    async def _read_frames(ws: WebSocket, queue: asyncio.Queue[Any], resample: Resampler) -> None:
        while True:
            try:
                message = await _receive(ws, settings.idle_timeout_s)
            except ProtocolError as exc:
                await queue.put(exc)
                await queue.put("idle timeout")
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if len(data) > settings.max_ws_message_bytes:
                    raise ProtocolError("message_too_large", f"audio frame of {len(data)} "
                                        f"bytes exceeds {settings.max_ws_message_bytes}", 1009)
                try:
                    await queue.put(resample(data))
                except ProtocolError as exc:
                    await queue.put(exc)
                continue
            try:
                kind = parse_json(text or "")["type"]
                if kind == "end":
                    await queue.put("end")
                    return
                raise ProtocolError("unknown_message_type", f"unknown message type {kind!r}; "
                                    "expected binary audio or {\"type\": \"end\"}")
            except ProtocolError as exc:
                await queue.put(exc)

    async def _receive(ws: WebSocket, timeout: float) -> dict[str, Any]:
        try:
            message = await asyncio.wait_for(ws.receive(), timeout)
        except TimeoutError:
            raise ProtocolError("idle_timeout", f"no message for {timeout:.0f} s") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _send_events(ws: WebSocket, events: list[StreamEvent], config: StreamConfig) -> None:
        for event in events:
            await ws.send_json(event.to_dict(words=config.word_timestamps))

    async def _finish(ws: WebSocket, session: StreamingSession, config: StreamConfig,
                      reason: str, code: int) -> None:
        events = await run_in_threadpool(session.end_of_stream)
        await _send_events(ws, events, config)
        await ws.send_json({"type": "done", "audio_seconds": round(session.stats["audio_s"], 3),
                            "segments": session.stats["finals"], "reason": reason})
        await ws.close(code, reason)

    return app


async def _warm_up(loaded: LoadedModel, workers: int) -> None:
    """One decode per worker at once, so every worker has started and holds its encoder
    buffers before the first client arrives, rather than during someone's stream."""
    options = TranscribeOptions(beam_size=5, word_timestamps=True, vad_filter=False,
                                temperature=0.0)  # beam 5, as file decodes use
    request = DecodeRequest(np.zeros(SAMPLE_RATE, np.float32), options, window=True)
    decoder = Decoder(loaded)
    await asyncio.gather(*(run_in_threadpool(decoder.decode, request) for _ in range(workers)))


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "code": code}}, status_code=status)


async def _close(ws: WebSocket, code: int, error: ProtocolError) -> None:
    if ws.client_state == WebSocketState.CONNECTED:
        try:
            await ws.send_text(json.dumps(error.to_dict()))
            await ws.close(code, error.message[:120])
        except (WebSocketDisconnect, RuntimeError):
            pass
