"""OpenAI's Realtime transcription sessions at `/v1/realtime?intent=transcription`.

A second protocol adapter over the same engine as `/v1/stream`: one `StreamingSession` per
connection, with the same admission, keys, limits and drain. The client appends base64
audio; the session's finals go out as transcription deltas and each turn's text as
`completed` (see `realtime_protocol.Turns`). A bad event gets an `error` event, and the
session goes on.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import Future
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from ..audio import SAMPLE_RATE
from ..engine.manager import ModelInUseError
from ..registry import ModelNotFoundError
from ..streaming import StreamEvent, StreamingSession, StreamOptions
from .admission import client_id
from .handshake import EVICTED, admit, close_with_error, first_message, refused_while_draining
from .realtime_input import UPDATES, Control, EventReader, Failed, Item
from .realtime_protocol import (
    MIN_COMMIT_S,
    Dialect,
    RealtimeConfig,
    RealtimeError,
    Turns,
    server_event,
)
from .service import Service, get_service
from .session_loop import Audio, SessionLoop
from .stream_protocol import ProtocolError

router = APIRouter()


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    await RealtimeHandler(ws, get_service(ws)).run()


class RealtimeHandler(SessionLoop):
    """One Realtime connection: a config, a session opened with the first audio (and again
    after an update that follows audio), and the turns of its events. An adapter over the
    session loop `/v1/stream` runs too (session_loop.py)."""

    def __init__(self, ws: WebSocket, service: Service) -> None:
        super().__init__(ws, service)
        self.session_id = ""
        self.dialect: Dialect = "beta" if "realtime=v1" in ws.headers.get("openai-beta", "") \
            else "ga"
        self.config = RealtimeConfig()
        self.session: StreamingSession | None = None
        self.turns = Turns(server_vad=True, utterances=self.settings.utterances)
        self.offset_s = 0.0  # audio heard by the sessions before this one
        self.dropped_s = 0.0  # audio no session heard (none could open)
        self.uncommitted_s = 0.0  # audio since the last turn ended
        self.reader = EventReader(self.config, self.settings.max_ws_message_bytes)
        self._decode_wait: tuple[Future, asyncio.Future] | None = None
        self._refused: RealtimeError | None = None  # why this config's session cannot open

    async def run(self) -> None:
        if await refused_while_draining(self.ws, self.service):
            return
        await self.ws.accept(subprotocol=_realtime_subprotocol(self.ws.headers))
        try:
            admit(self.ws, self.service)
            intent = self.ws.query_params.get("intent", "transcription")
            if intent != "transcription":
                raise ProtocolError("unsupported_intent", f"intent {intent!r} is not served "
                                    "here; only transcription sessions (intent=transcription)")
            # `created` comes at once, as OpenAI's does; the session starts with the first
            # event, which must come within `config_timeout_s`.
            key = uuid.uuid4().hex[:12]
            self.session_id = f"sess_{key}"
            await self._send(server_event(self._kind("created"), session=self._session_object()))
            first = await first_message(self.ws, self.service,
                                        lambda: self._close_with_error(EVICTED))
            with self.service.sessions.open(client_id(self.ws), key) as (_, finish):
                try:
                    await self.loop(finish, [self.reader(first)])
                finally:
                    if self.session is not None:
                        self.session.close()
        except ProtocolError as exc:
            await self._close_with_error(exc)
        except WebSocketDisconnect:
            pass  # the client vanished; its session was closed above

    # -- the loop -----------------------------------------------------------------------------

    def second_decode(self) -> asyncio.Future | None:
        """A turn's utterance decode that finishes is sent at once: its `completed` must not
        wait for more audio."""
        return self._utterance_decode()

    async def on_second_decode(self) -> None:
        if self.session is not None and self.session.utterances_due:
            await self._forward(await run_in_threadpool(self.session.decode_utterances))

    def _utterance_decode(self) -> asyncio.Future | None:
        """The running utterance decode, to wait on. One wrapper per decode, never cancelled:
        cancelling it would cancel the decode itself, a job in another session's batch."""
        running = self.session.pending_utterance if self.session else None
        if running is None:
            self._decode_wait = None
        elif self._decode_wait is None or self._decode_wait[0] is not running:
            self._decode_wait = (running, asyncio.wrap_future(running))
        return self._decode_wait[1] if self._decode_wait else None

    async def handle(self, items: list[Item], reader: asyncio.Task) -> str | None:
        """In order; runs of appended audio are pushed as one chunk, as `/v1/stream` does.
        Only the loop ends a Realtime session (a drain, idle, the time limit)."""
        audio: list[Audio] = []
        for item in [*items, None]:
            if isinstance(item, Audio):
                audio.append(item)
                continue
            if audio:
                await self._push(audio, reader)
                audio = []
            if isinstance(item, Failed):
                await self._send(item.error.event(item.event_id))
            elif isinstance(item, Control):
                try:
                    await self._control(item.event)
                except RealtimeError as exc:
                    await self._send(exc.event(item.event.get("event_id")))
        return None

    async def _push(self, audio: list[Audio], reader: asyncio.Task) -> None:
        samples = np.concatenate([item.samples for item in audio])
        if self.session is None:
            if self._refused is not None and self._refused.code != "server_busy":
                self.dropped_s += len(samples) / SAMPLE_RATE
                return  # said once; the audio is dropped until a session.update fixes it
            try:
                await self._open()
            except RealtimeError as exc:
                told, self._refused = self._refused, exc
                if told is None:  # a busy server is retried with the next audio, said once
                    await self._send(exc.event())
                self.dropped_s += len(samples) / SAMPLE_RATE
                return
            self._refused = None
        session = self.session
        self.uncommitted_s += len(samples) / SAMPLE_RATE
        await self._forward(await self.push_audio(
            session, self.session_id.removeprefix("sess_"), audio, reader))
        if session.utterances_due:
            await self._forward(await run_in_threadpool(session.decode_utterances))

    async def _control(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in UPDATES:
            config, dialect = self.config.updated(event)
            if config.model is not None:
                self._model(config)  # refused now, not at the first audio
            await self._close_session()  # the new settings apply from the next audio
            self.config, self.dialect, self._refused = config, dialect, None
            self.reader.configure(config)
            self.turns.server_vad = config.turn_detection is not None
            await self._send(server_event(self._kind("updated"), session=self._session_object()))
        elif kind == "input_audio_buffer.commit":
            if self.uncommitted_s < MIN_COMMIT_S and not self.turns.open:
                raise RealtimeError("input_audio_buffer_commit_empty", "buffer too small: "
                                    f"expected at least {MIN_COMMIT_S * 1000:.0f} ms of audio, "
                                    f"got {self.uncommitted_s * 1000:.0f} ms")
            events = await run_in_threadpool(self.session.end_turn) if self.session else []
            at = self.session.stats["audio_s"] if self.session else 0.0
            await self._send_all(self.turns.commit(events, at))
            self.uncommitted_s = 0.0
        elif kind == "input_audio_buffer.clear":
            self.turns.clear()
            if self.session is not None:
                await self._forward(await run_in_threadpool(self.session.discard))
            self.uncommitted_s = 0.0
            await self._send(server_event("input_audio_buffer.cleared"))

    async def _open(self) -> None:
        config = self.config
        name = self._model(config)
        options = StreamOptions.from_settings(
            self.settings, language=config.language, static_prompt=config.prompt,
            hotwords=config.hotwords, vad=config.vad, turn_events=True,
            utterance_min_s=0.0)  # each turn's `completed` carries its own utterances
        try:
            self.session = await run_in_threadpool(
                StreamingSession.open, self.service.manager, name, options,
                on_decode=self.service.metrics.decode_seconds.labels("stream").observe)
        except ModelInUseError as exc:
            raise RealtimeError("server_busy", str(exc), kind="server_error") from None
        except ValueError as exc:  # e.g. a language the model cannot transcribe
            raise RealtimeError("invalid_value", str(exc),
                                "session.audio.input.transcription") from None
        self.turns = Turns(server_vad=config.turn_detection is not None,
                           utterances=options.utterances, offset_s=self.offset_s,
                           previous_item=self.turns.previous_item)
        self.service.sessions.watch(self.session_id.removeprefix("sess_"),
                                    self.session.lateness)

    def _model(self, config: RealtimeConfig) -> str:
        try:
            return self.service.model_name(config.model)
        except ModelNotFoundError as exc:
            raise RealtimeError("model_not_found", str(exc),
                                "session.audio.input.transcription.model") from None

    async def _close_session(self) -> None:
        """Finish the current session: its last words are heard, and its turns, the one in
        progress too, are committed and completed (on an update, a drain, a time limit)."""
        session, self.session = self.session, None
        if session is None:
            return
        try:
            events = self.turns.events(await run_in_threadpool(session.end_of_stream))
            if self.turns.open:
                events += self.turns.commit([], session.stats["audio_s"])
            await self._send_all(events)
        finally:
            self.offset_s += session.stats["audio_s"]
            session.close()

    async def finish(self, reason: str, code: int) -> None:
        await self._close_session()
        await self.ws.close(code, reason)

    async def drain(self, queued: list[Item]) -> None:
        await self.finish("server shutting down", 1001)

    async def send_error(self, error: ProtocolError) -> None:
        """The loop's own errors (`idle_timeout`, `session_too_long`) are the server's."""
        await self._send(RealtimeError(error.code, error.message, kind="server_error").event())

    async def items(self, message: dict[str, Any]) -> list[Item]:
        return [self.reader(message)]

    # -- reading ------------------------------------------------------------------------------

    def ahead_s(self) -> float:
        """Audio received (queued or pushed) that no session has heard yet."""
        heard = self.session.heard / SAMPLE_RATE if self.session is not None else 0.0
        return self.reader.received_s - self.dropped_s - self.offset_s - heard

    # -- writing ------------------------------------------------------------------------------

    def _kind(self, what: str) -> str:
        return f"session.{what}" if self.dialect == "ga" else f"transcription_session.{what}"

    def _session_object(self) -> dict[str, Any]:
        model = self.config.model or self.settings.default_model
        return self.config.session(self.dialect, self.session_id, model)

    async def _forward(self, events: list[StreamEvent]) -> None:
        ended = self.turns.previous_item
        await self._send_all(self.turns.events(events))
        if self.turns.previous_item != ended:  # the VAD ended a turn: a commit starts anew
            self.uncommitted_s = 0.0

    async def _send_all(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            await self._send(event)

    async def _send(self, event: dict[str, Any]) -> None:
        await self.ws.send_json(event)

    async def _close_with_error(self, error: ProtocolError) -> None:
        await close_with_error(self.ws, error, lambda e: self._send(
            RealtimeError(e.code, e.message, kind="invalid_request_error").event()))


def _realtime_subprotocol(headers: Any) -> str | None:
    """Browsers cannot set headers, so OpenAI's clients offer `realtime` (with the key in an
    `openai-insecure-api-key.<key>` subprotocol): accept it when offered."""
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    return "realtime" if "realtime" in offered else None

