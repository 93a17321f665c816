"""OpenAI-compatible routes: `/v1/audio/transcriptions`, `/v1/audio/translations`, `/v1/models`.

Clients written for OpenAI's SDKs work by changing the base URL; errors use OpenAI's body.
`stream=true` on transcriptions answers with Server-Sent Events (sse.py).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..audio import AudioError, AudioTooLong, iter_audio
from ..batched import decode_file
from ..config import Settings
from ..engine.decoder import Decoder
from ..engine.manager import ModelInUseError
from ..engine.model import LoadedModel
from ..engine.windows import prompt_tokens
from ..formats import MEDIA_TYPES, render
from ..registry import ModelNotFoundError, parse_language
from ..transcript import MAX_HOTWORDS_CHARS, Segment, Task, TranscribeOptions, Transcript
from .admission import UPLOAD_ENVELOPE_BYTES
from .errors import ApiError
from .service import Service, get_service
from .sse import STREAMED_FORMATS, ClientGone, TranscriptStream

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")
ServiceDep = Annotated[Service, Depends(get_service)]


class AudioForm(BaseModel):
    """The form fields of OpenAI's audio endpoints, and `hotwords` (faster-whisper's).
    Translations ignore the granularities and `stream`: they answer whole, as OpenAI's
    whisper-1 ignores `stream`."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)  # OpenAI's range
    timestamp_granularities: list[str] = Field(default_factory=list,
                                               alias="timestamp_granularities[]")
    hotwords: str | None = Field(None, max_length=MAX_HOTWORDS_CHARS)
    stream: bool = False

    def options(self, task: Task) -> TranscribeOptions:
        if self.response_format not in MEDIA_TYPES:
            raise ApiError(400, "invalid_response_format",
                           "response_format must be json, text, srt, vtt or verbose_json")
        if self.stream and task == "transcribe" \
                and self.response_format not in STREAMED_FORMATS:
            raise ApiError(400, "invalid_request", f"stream: response_format "
                           f"{self.response_format} can't be streamed; use json or text")
        try:
            return TranscribeOptions(
                language=parse_language(self.language), task=task,
                initial_prompt=self.prompt or None,
                temperature=self.temperature or (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                word_timestamps="word" in self.timestamp_granularities,
                hotwords=self.hotwords or None)
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None


@router.post("/audio/transcriptions")
async def transcriptions(request: Request, file: Annotated[UploadFile, File()],
                         form: Annotated[AudioForm, Form()], service: ServiceDep) -> Response:
    if form.stream:
        return await _stream_upload(service, request, file, form)
    async with _file_turn(service):
        return await _transcribe_upload(service, request, file, form, "transcribe")


@router.post("/audio/translations")
async def translations(request: Request, file: Annotated[UploadFile, File()],
                       form: Annotated[AudioForm, Form()], service: ServiceDep) -> Response:
    async with _file_turn(service):
        return await _transcribe_upload(service, request, file, form, "translate")


@asynccontextmanager
async def _file_turn(service: Service) -> AsyncIterator[None]:
    """A file job's turn (FileAdmission), refused while draining: before it queues, and again
    when its turn comes (it may have waited past a SIGTERM)."""
    _refuse_while_draining(service)
    async with service.files.turn():
        _refuse_while_draining(service)
        yield


def _refuse_while_draining(service: Service) -> None:
    """After SIGTERM, new files go to another replica (nginx retries a 503 there when told
    `proxy_next_upstream http_503 non_idempotent`). The ones already running go on until the
    drain ends (`drain_timeout_s`, then SHUTDOWN_GRACE_S)."""
    if service.sessions.draining:
        raise ApiError(503, "shutting_down", "server shutting down; send the file again",
                       {"Retry-After": "1"})


@router.get("/models")
async def list_models(service: ServiceDep) -> dict[str, Any]:
    loaded = {k.name: m for k, m in service.manager.loaded.items()}
    names = service.allowed_models  # exactly what clients may request
    return {"object": "list", "data": [
        {"id": name, "object": "model", "owned_by": "whisper-service",
         "loaded": name in loaded,
         "languages": ("multilingual" if loaded[name].multilingual else "English-only")
         if name in loaded else ("English-only" if name.endswith(".en") else "multilingual")}
        for name in names]}


async def _transcribe_upload(service: Service, request: Request, file: UploadFile,
                             form: AudioForm, task: Task) -> Response:
    data = await _read_upload(request, file, service.settings.max_upload_bytes)
    options = form.options(task)
    model = service.model_name(form.model)  # refused before any audio is decoded
    chunks = await _decode_audio(data, file.filename or "file", service.settings)
    transcript = await _decode(service, model, chunks, options, request)
    body = render(transcript, form.response_format, task)  # type: ignore[arg-type]
    return Response(body, media_type=MEDIA_TYPES[form.response_format])


async def _stream_upload(service: Service, request: Request, file: UploadFile,
                         form: AudioForm) -> Response:
    """`stream=true`: everything refused before the first byte is refused as above, with its
    status. Then the response owns the file-job turn and the model reference, and gives them
    back when the stream ends, whether it finished, failed or the client left."""
    async with AsyncExitStack() as held:
        await held.enter_async_context(_file_turn(service))
        data = await _read_upload(request, file, service.settings.max_upload_bytes)
        options = form.options("transcribe")
        model = service.model_name(form.model)
        chunks = await _decode_audio(data, file.filename or "file", service.settings)
        loaded = await _acquire(service, model)
        held.callback(service.manager.release, loaded)
        decoder = Decoder(loaded)
        try:
            decoder.check(options)
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        text_tokens = len(prompt_tokens(loaded, options.initial_prompt)) + len(
            prompt_tokens(loaded, options.hotwords))  # for `usage`
        return TranscriptStream(
            lambda on_segment, check: _transcribe(service, decoder, chunks, options, check,
                                                  on_segment),
            _refusal, text_tokens, service.metrics.rejected.labels("client_gone").inc,
            held.pop_all().aclose)


async def _read_upload(request: Request, file: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refused early by its declared length, and again by what came."""
    length = int(request.headers.get("content-length") or 0)
    if length > limit + UPLOAD_ENVELOPE_BYTES:
        raise ApiError(413, "file_too_large", f"upload exceeds {limit} bytes")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "file_too_large", f"upload exceeds {limit} bytes")
    return data


async def _decode_audio(data: bytes, name: str, settings: Settings) -> Iterator[np.ndarray]:
    """The upload's audio, `file_chunk_s` at a time, decoded as transcription asks for it (the
    whole file as float32 never exists). The first chunk is decoded here, in a worker thread,
    so a file that is not audio, or declares itself too long, is refused before any model
    work."""
    chunks = iter_audio(io.BytesIO(data), settings.file_chunk_s, settings.max_audio_s, name)
    try:
        first = await run_in_threadpool(next, chunks)  # iter_audio yields a chunk or raises
    except AudioError as exc:
        raise _audio_refused(exc) from None
    return itertools.chain([first], chunks)


def _audio_refused(exc: AudioError) -> ApiError:
    if isinstance(exc, AudioTooLong):
        return ApiError(413, "audio_too_long", str(exc))
    return ApiError(400, "invalid_audio", str(exc))


def _refusal(exc: Exception) -> ApiError:
    """What an error met while transcribing tells the client (a stream, after its first
    byte, sends it as an event)."""
    if isinstance(exc, AudioError):  # decoding the later chunks
        return _audio_refused(exc)
    if isinstance(exc, ValueError):
        return ApiError(400, "invalid_request", str(exc))
    log.error("transcription failed", exc_info=exc)
    return ApiError(500, "server_error", "the transcription failed")


async def _acquire(service: Service, name: str) -> LoadedModel:
    try:
        return await run_in_threadpool(service.manager.acquire, name)
    except ModelNotFoundError as exc:
        raise ApiError(404, "model_not_found", str(exc)) from None
    except ModelInUseError as exc:
        raise ApiError(503, "server_busy", str(exc)) from None


def _transcribe(service: Service, decoder: Decoder, chunks: Iterable[np.ndarray],
                options: TranscribeOptions, on_progress: Callable[[float], None],
                on_segment: Callable[[Segment], None] | None = None) -> Transcript:
    """The whole file, in a worker thread, with its metrics."""
    started = time.perf_counter()
    transcript = decode_file(decoder, chunks, options, service.settings.file_decoding,
                             on_progress, on_segment)
    service.metrics.decode_seconds.labels("file").observe(time.perf_counter() - started)
    service.metrics.audio_seconds.labels("file").inc(transcript.duration)
    return transcript


async def _decode(service: Service, name: str, chunks: Iterable[np.ndarray],
                  options: TranscribeOptions, request: Request) -> Transcript:
    """Transcribe the chunks in a worker thread, one at a time; audio past the limit is only
    found there when the container did not declare its length. A client that disconnects
    stops the work at the next window (a 3 h file would otherwise hold a file-job slot and a
    decode worker for minutes, for nobody)."""
    loaded = await _acquire(service, name)
    try:
        decoder = Decoder(loaded)
        decoder.check(options)
        gone = threading.Event()

        def check(_: float) -> None:  # called after every window, in the worker thread
            if gone.is_set():
                raise ClientGone()

        watcher = asyncio.create_task(_watch_disconnect(request, gone))
        try:
            return await run_in_threadpool(_transcribe, service, decoder, chunks, options,
                                           check)
        finally:
            gone.set()  # also when this request is cancelled: the worker stops too
            watcher.cancel()
    except ClientGone:
        service.metrics.rejected.labels("client_gone").inc()
        raise ApiError(499, "client_closed_request", "the client disconnected") from None
    except ValueError as exc:  # AudioError included
        raise _refusal(exc) from None
    finally:
        service.manager.release(loaded)


async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.5)
    gone.set()
