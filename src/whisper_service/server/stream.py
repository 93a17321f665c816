"""The WebSocket stream at `/v1/stream` (docs/protocol.md): one `StreamHandler` per client,
an adapter over the session loop both protocols share (session_loop.py).

Its messages become typed items (audio, `end`, a mistake to report); the audio that queued up
during the last decode is pushed to the session in one go, and the session's events go back.
A client's mistake or disappearance ends only its own session.
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

from ..audio import OPUS_ENCODINGS, SAMPLE_RATE, AudioError, Resampler, pcm_to_float
from ..engine.manager import ModelInUseError
from ..opus import BrokenAudio, OpusStream
from ..registry import ModelNotFoundError
from ..streaming import StreamEvent, StreamingSession
from .admission import client_id
from .errors import ProtocolError
from .handshake import EVICTED, admit, close_with_error, first_message, refused_while_draining
from .service import Service, get_service
from .session_loop import Audio, LastItem, SessionLoop
from .stream_protocol import StreamConfig, parse_config, parse_json

router = APIRouter()


# -- what the reader queues for the handler ------------------------------------------------

@dataclass(frozen=True)
class End(LastItem):
    """The client sent `{"type": "end"}`."""


@dataclass(frozen=True)
class ClientError:
    """A recoverable mistake (a bad frame, an unknown message): reported, the stream goes on."""

    error: ProtocolError


Item = Audio | End | ClientError


class State(enum.Enum):
    AWAITING_CONFIG = "awaiting config"
    STREAMING = "streaming"
    FINISHING = "finishing"
    CLOSED = "closed"


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    await StreamHandler(ws, get_service(ws)).run()


class StreamHandler(SessionLoop):
    """One client's stream: awaiting config -> streaming -> finishing -> closed."""

    def __init__(self, ws: WebSocket, service: Service) -> None:
        super().__init__(ws, service)
        self.state = State.AWAITING_CONFIG
        self.session: StreamingSession | None = None
        self.config: StreamConfig | None = None
        self.session_id = ""
        self.received_s = 0.0  # audio read from the socket, pushed or still queued
        self.resample: Resampler | None = None  # the client's PCM to 16 kHz
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
                    await self.loop(finish)
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
        self.resample = Resampler(config.sample_rate)
        if config.encoding in OPUS_ENCODINGS:
            self.opus = OpusStream(config.encoding)
        await self.ws.send_json({"type": "ready", "session_id": session_id, "config": {
            **config.model_dump(), "model": name, "min_chunk_s": options.min_chunk_s,
            "idle_chunk_s": options.idle_step_s}})
        self.state = State.STREAMING

    # -- streaming ------------------------------------------------------------------------------

    async def handle(self, items: list[Item], reader: asyncio.Task) -> str | None:
        """Push the items' audio as one chunk, report errors; the reason to finish, if any."""
        audio = [item for item in items if isinstance(item, Audio)]
        if audio:
            await self._send_events(await self.push_audio(self.session, self.session_id, audio,
                                                          reader))
            if self.session.utterances_due:  # after the finals that closed them, not before
                await self._send_events(await run_in_threadpool(self.session.decode_utterances))
        for item in items:
            if isinstance(item, ClientError):
                await self.send_error(item.error)
            elif isinstance(item, End):
                return "end of stream"
        return None

    async def items(self, message: dict[str, Any]) -> list[Item]:
        """Binary audio, `end`, or a mistake to report."""
        data = message.get("bytes")
        if data is not None:
            items = await self._audio(data, self.resample)
            self.received_s += sum(len(i.samples) for i in items if isinstance(i, Audio)) \
                / SAMPLE_RATE
            return items
        try:
            kind = parse_json(message.get("text") or "")["type"]
        except ProtocolError as exc:
            return [ClientError(exc)]
        if kind == "end":
            return [End()]
        return [ClientError(ProtocolError(
            "unknown_message_type", f"unknown message type {kind!r}; "
            "expected binary audio or {\"type\": \"end\"}"))]

    def ahead_s(self) -> float:
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

    # -- finishing ------------------------------------------------------------------------------

    async def drain(self, queued: list[Item]) -> None:
        """The server is shutting down: the audio that had arrived is heard first."""
        tail = [item.samples for item in queued if isinstance(item, Audio)]
        await self.finish("server shutting down", 1001, np.concatenate(tail) if tail else None)

    async def finish(self, reason: str, code: int, tail: np.ndarray | None = None) -> None:
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
            await self.send_error(ProtocolError("invalid_audio", str(exc)))
        parts = [a for a in (tail, self.opus.take()) if a is not None and len(a)]
        return np.concatenate(parts) if parts else None

    async def _send_events(self, events: list[StreamEvent]) -> None:
        for event in events:
            await self.ws.send_json(event.to_dict(words=self.config.word_timestamps))

    async def send_error(self, error: ProtocolError) -> None:
        await self.ws.send_json(error.to_dict())

    async def _close_with_error(self, error: ProtocolError) -> None:
        await close_with_error(self.ws, error, self.send_error)
