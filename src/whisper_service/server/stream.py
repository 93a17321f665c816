"""The WebSocket stream at `/v1/stream` (docs/protocol.md): one `StreamHandler` per client.

A reader task turns the socket's messages into typed queue items; the handler's loop pushes
the audio that queued up during the last decode to the session in one go, and sends the
session's events back. A client's mistake or disappearance ends only its own session.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from ..audio import (
    OPUS_ENCODINGS,
    SAMPLE_RATE,
    AudioError,
    BrokenAudio,
    OpusStream,
    Resampler,
    pcm_to_float,
)
from ..models import ModelInUseError
from ..protocol import StreamConfig, parse_config, parse_json
from ..registry import ModelNotFoundError
from ..streaming import StreamEvent, StreamingSession
from .admission import client_id
from .errors import ProtocolError
from .feeding import push, wait_for_room
from .handshake import EVICTED, admit, close_with_error, first_message, refused_while_draining
from .service import Service, get_service

router = APIRouter()


# -- what the reader queues for the handler ------------------------------------------------

@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # 16 kHz mono float32
    arrived_at: float  # time.monotonic() when it came off the socket


@dataclass(frozen=True)
class End:
    """The client sent `{"type": "end"}`."""


@dataclass(frozen=True)
class ClientError:
    """A recoverable mistake (a bad frame, an unknown message): reported, the stream goes on."""

    error: ProtocolError


@dataclass(frozen=True)
class Idle:
    """Nothing arrived for `idle_timeout_s`: reported, then the stream is finished."""

    error: ProtocolError


Item = Audio | End | ClientError | Idle


def _take_all(queue: asyncio.Queue[Item]) -> list[Item]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


class State(enum.Enum):
    AWAITING_CONFIG = "awaiting config"
    STREAMING = "streaming"
    FINISHING = "finishing"
    CLOSED = "closed"


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    await StreamHandler(ws, get_service(ws)).run()


class StreamHandler:
    """One client's stream: awaiting config -> streaming -> finishing -> closed."""

    def __init__(self, ws: WebSocket, service: Service) -> None:
        self.ws, self.service, self.settings = ws, service, service.settings
        self.state = State.AWAITING_CONFIG
        self.session: StreamingSession | None = None
        self.config: StreamConfig | None = None
        self.session_id = ""
        self.received_s = 0.0  # audio read from the socket, pushed or still queued
        self.opus: OpusStream | None = None  # the decoder of `webm_opus` and `ogg_opus`

    async def run(self) -> None:
        if await refused_while_draining(self.ws, self.service):
            self.state = State.CLOSED
            return
        await self.ws.accept(subprotocol=self.service.api_key.subprotocol(self.ws.headers))
        try:
            admit(self.ws, self.service)
            first = await first_message(
                self.ws, self.service, lambda: self._close_with_error(EVICTED))
            self.config = self._configure(first)
            with self.service.sessions.open(client_id(self.ws)) as (session_id, finish):
                self.session_id = session_id
                try:
                    await self._open(session_id)
                    self.service.sessions.watch(session_id, self.session.lateness)
                    await self._stream(finish)
                finally:
                    if self.session is not None:
                        self.session.close()
        except ProtocolError as exc:
            await self._close_with_error(exc)
        except WebSocketDisconnect:
            pass  # the client vanished; everything it had is freed above
        self.state = State.CLOSED

    # -- awaiting config --------------------------------------------------------------------

    @staticmethod
    def _configure(message: dict[str, Any]) -> StreamConfig:
        """The first message, which must be a valid config (else a fatal ProtocolError)."""
        if message.get("bytes") is not None:
            raise ProtocolError("config_required", "send the JSON config message before any audio")
        return parse_config(parse_json(message.get("text") or ""))

    async def _open(self, session_id: str) -> None:
        """A session for the accepted config (it holds a session slot now), then `ready`."""
        config = self.config
        try:
            name = self.service.model_name(config.model)
            options = config.stream_options(self.settings)
            self.session = await run_in_threadpool(
                StreamingSession.open, self.service.manager, name, options,
                on_decode=self.service.metrics.decode_seconds.labels("stream").observe)
        except ModelNotFoundError as exc:
            raise ProtocolError("model_not_found", str(exc)) from None
        except ModelInUseError as exc:
            raise ProtocolError("server_busy", str(exc), 1013) from None
        except ValueError as exc:
            raise ProtocolError("invalid_config", str(exc)) from None
        await self.ws.send_json({"type": "ready", "session_id": session_id, "config": {
            **config.model_dump(), "model": name, "min_chunk_s": options.min_chunk_s}})
        self.state = State.STREAMING

    # -- streaming ------------------------------------------------------------------------------

    async def _stream(self, finish: asyncio.Event) -> None:
        """Move audio from the socket to the session and events back, until the end."""
        queue: asyncio.Queue[Item] = asyncio.Queue()
        started = time.monotonic()
        reader = asyncio.create_task(self._read(queue))
        finisher = asyncio.create_task(finish.wait())
        try:
            while True:
                items = await self._next_items(queue, reader, finisher)
                if items is None:  # drain: what already arrived is heard, then the end
                    reader.cancel()  # first, so nothing it decodes meanwhile is left behind
                    await asyncio.gather(reader, return_exceptions=True)
                    tail = [i.samples for i in _take_all(queue) if isinstance(i, Audio)]
                    return await self._finish("server shutting down", 1001,
                                              np.concatenate(tail) if tail else None)
                if reason := await self._handle(items, reader):
                    return await self._finish(reason, 1000)
                if time.monotonic() - started > self.settings.max_session_s:
                    limit = self.settings.max_session_s
                    await self._send_error(ProtocolError(
                        "session_too_long", f"session exceeded {limit:.0f} s"))
                    return await self._finish("maximum session duration", 1000)
        finally:
            for task in (reader, finisher):
                task.cancel()
            await asyncio.gather(reader, finisher, return_exceptions=True)

    async def _next_items(self, queue: asyncio.Queue[Item], reader: asyncio.Task,
                          finisher: asyncio.Task) -> list[Item] | None:
        """Everything queued since the last decode (at least one item), or None on drain.
        Re-raises the reader's disconnect or fatal protocol error once its queue is empty.
        A drain comes first: a client whose audio always waits would otherwise never see it."""
        while True:
            if finisher.done():
                return None
            getter = asyncio.create_task(queue.get())
            try:
                done, _ = await asyncio.wait({getter, finisher, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled with the handler, too: no task left pending on the queue
                if not getter.done():
                    getter.cancel()
            if getter in done:
                return [getter.result(), *_take_all(queue)]
            if reader in done and queue.empty():
                reader.result()
            if finisher in done:
                return None

    async def _handle(self, items: list[Item], reader: asyncio.Task) -> str | None:
        """Push the items' audio as one chunk, report errors; the reason to finish, if any."""
        audio = [item for item in items if isinstance(item, Audio)]
        if audio:
            for item in audio:
                self.session.pacing.arrived(len(item.samples), item.arrived_at)
            samples = np.concatenate([item.samples for item in audio])
            self.service.sessions.report_lag(self.session_id)
            self.service.metrics.audio_seconds.labels("stream").inc(len(samples) / SAMPLE_RATE)
            await self._send_events(await push(
                self.session, samples, reader,
                lambda: self.service.sessions.forget(self.session_id)))
            if self.session.utterances_due:  # after the finals that closed them, not before
                await self._send_events(await run_in_threadpool(self.session.decode_utterances))
        for item in items:
            if isinstance(item, ClientError):
                await self._send_error(item.error)
            elif isinstance(item, Idle):
                await self._send_error(item.error)
                return "idle timeout"
            elif isinstance(item, End):
                return "end of stream"
        return None

    async def _read(self, queue: asyncio.Queue[Item]) -> None:
        """The reader task: socket messages to queue items, until `end` or idle."""
        resample = Resampler(self.config.sample_rate)
        if self.config.encoding in OPUS_ENCODINGS:
            self.opus = OpusStream(self.config.encoding)
        while True:
            await wait_for_room(self._ahead_s, self.settings.max_ahead_s)
            try:
                message = await self._receive()
            except ProtocolError as exc:  # idle timeout
                return await queue.put(Idle(exc))
            data = message.get("bytes")
            if data is not None:
                for item in await self._audio(data, resample):
                    if isinstance(item, Audio):
                        self.received_s += len(item.samples) / SAMPLE_RATE
                    await queue.put(item)
                continue
            try:
                kind = parse_json(message.get("text") or "")["type"]
            except ProtocolError as exc:
                await queue.put(ClientError(exc))
                continue
            if kind == "end":
                return await queue.put(End())
            await queue.put(ClientError(ProtocolError(
                "unknown_message_type", f"unknown message type {kind!r}; "
                "expected binary audio or {\"type\": \"end\"}")))

    def _ahead_s(self) -> float:
        """Audio received (queued or pushed) that the session has not heard yet."""
        return self.received_s - self.session.heard / SAMPLE_RATE

    async def _audio(self, data: bytes, resample: Resampler) -> list[Item]:
        limit = self.settings.max_ws_message_bytes
        if len(data) > limit:  # fatal: raised in the reader, re-raised by the handler
            raise ProtocolError("message_too_large",
                                f"audio frame of {len(data)} bytes exceeds {limit}", 1009)
        if self.opus is not None:
            return await self._opus_audio(data)
        try:
            return [Audio(resample(pcm_to_float(data, self.config.encoding)), time.monotonic())]
        except AudioError as exc:
            return [ClientError(ProtocolError("invalid_audio", str(exc)))]

    async def _opus_audio(self, data: bytes) -> list[Item]:
        """A MediaRecorder chunk, decoded in a worker thread (off the event loop). A corrupt
        packet is reported and skipped; a stream that cannot go on ends the session (1007)."""
        error = None
        try:
            await run_in_threadpool(self.opus.feed, data)
        except BrokenAudio as exc:
            raise ProtocolError("invalid_audio", str(exc), 1007) from None
        except AudioError as exc:
            error = ClientError(ProtocolError("invalid_audio", str(exc)))
        samples = self.opus.take()
        audio = Audio(samples, time.monotonic()) if len(samples) else None
        return [item for item in (audio, error) if item]

    async def _receive(self) -> dict[str, Any]:
        timeout = self.settings.idle_timeout_s
        try:
            message = await asyncio.wait_for(self.ws.receive(), timeout)
        except TimeoutError:
            raise ProtocolError("idle_timeout", f"no message for {timeout:.0f} s") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    # -- finishing ------------------------------------------------------------------------------

    async def _finish(self, reason: str, code: int, tail: np.ndarray | None = None) -> None:
        """Last finals, then `done`, then close: nothing a client sent is lost."""
        self.state = State.FINISHING
        session = self.session
        if self.opus is not None:  # the decoder's last samples
            tail = await self._flush_opus(tail)
        await self._send_events(await run_in_threadpool(session.end_of_stream, tail))
        await self.ws.send_json({"type": "done",
                                 "audio_seconds": round(session.stats["audio_s"], 3),
                                 "segments": session.stats["finals"],
                                 "utterances": session.stats["utterances"],
                                 "text": session.transcript, "reason": reason})
        await self.ws.close(code, reason)

    async def _flush_opus(self, tail: np.ndarray | None) -> np.ndarray | None:
        try:
            await run_in_threadpool(self.opus.flush)
        except AudioError as exc:  # cut inside a page: reported, the rest is still heard
            await self._send_error(ProtocolError("invalid_audio", str(exc)))
        parts = [a for a in (tail, self.opus.take()) if a is not None and len(a)]
        return np.concatenate(parts) if parts else None

    async def _send_events(self, events: list[StreamEvent]) -> None:
        for event in events:
            await self.ws.send_json(event.to_dict(words=self.config.word_timestamps))

    async def _send_error(self, error: ProtocolError) -> None:
        await self.ws.send_json(error.to_dict())

    async def _close_with_error(self, error: ProtocolError) -> None:
        await close_with_error(self.ws, error, self._send_error)
