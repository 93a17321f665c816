"""OpenAI's Realtime transcription protocol (docs/protocol.md): its messages, validated in one
place, and `Turns`, which turns a streaming session's events into Realtime server events.

Both dialects are spoken: the GA one (`session.update` with `"type": "transcription"`,
`session.created`) and the beta one (`transcription_session.update`,
`transcription_session.created`), which clients select with `OpenAI-Beta: realtime=v1`.
The two differ only in the session object; the audio-buffer and transcription events are
the same.

Nothing here touches audio or a model: the events come from `StreamingSession`
(`final`, `utterance`, `speech_start`, `speech_end`), so `Turns` is tested with made-up ones.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..registry import parse_language
from ..streaming import StreamEvent
from ..transcript import MAX_HOTWORDS_CHARS
from ..vad import VadOptions

Dialect = Literal["ga", "beta"]
AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]
OPENAI_RATE = 24000  # OpenAI's PCM is 24 kHz; G.711 is 8 kHz
G711_RATE = 8000
# OpenAI refuses a commit of less than 100 ms of audio with this code.
MIN_COMMIT_S = 0.1
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


class RealtimeError(Exception):
    """A client mistake, sent as an `error` event in OpenAI's shape; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind

    def event(self, event_id: str | None = None) -> dict[str, Any]:
        return server_event("error", error={"type": self.kind, "code": self.code,
                                            "message": self.message, "param": self.param,
                                            "event_id": event_id})


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": f"event_{uuid.uuid4().hex[:20]}", **fields}


# -- the session's configuration ---------------------------------------------------------------

class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TurnDetection(_Lenient):
    """`server_vad` maps onto the session's Silero VAD; `semantic_vad` is served as server VAD
    with its defaults (there is no turn-end model here)."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = Field(0.5, gt=0, lt=1)
    prefix_padding_ms: int = Field(300, ge=0, le=2000)
    silence_duration_ms: int = Field(500, ge=0, le=10000)


class Transcription(_Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str = Field("", max_length=2000)
    keywords: list[str] = Field(default_factory=list)  # our hotwords


@dataclass(frozen=True)
class RealtimeConfig:
    """One Realtime session's settings, in our terms."""

    format: AudioFormat = "pcm16"
    rate: int = OPENAI_RATE
    model: str | None = None
    language: str | None = None  # None: detect
    prompt: str = ""
    keywords: tuple[str, ...] = ()
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)

    @property
    def hotwords(self) -> str:
        return ", ".join(k.strip() for k in self.keywords if k.strip())

    @property
    def vad(self) -> VadOptions:
        """Our VAD for the turn detection (manual turns keep the defaults: the VAD still
        decides which audio is speech worth decoding)."""
        turns = self.turn_detection
        if turns is None or turns.type == "semantic_vad":
            return VadOptions()
        return VadOptions(threshold=turns.threshold,
                          min_silence_duration_ms=turns.silence_duration_ms,
                          speech_pad_ms=turns.prefix_padding_ms)

    def updated(self, event: dict[str, Any]) -> tuple[RealtimeConfig, Dialect]:
        """This config changed by a `session.update` or `transcription_session.update`."""
        session = event.get("session")
        if not isinstance(session, dict):
            raise RealtimeError("invalid_value", "the event needs a 'session' object", "session")
        if event["type"] == "session.update":
            return self._updated_ga(session), "ga"
        return self._updated_beta(session), "beta"

    def _updated_ga(self, session: dict[str, Any]) -> RealtimeConfig:
        if session.get("type", "transcription") != "transcription":
            raise RealtimeError("unsupported_session_type", "only transcription sessions are "
                                "served here (no audio output, responses or tools); use "
                                "intent=transcription and session type 'transcription'",
                                "session.type")
        audio = _object(session, "audio", "session")
        given = _object(audio, "input", "session.audio")
        config = self
        if "format" in given:
            fmt = _object(given, "format", "session.audio.input")
            kind = fmt.get("type", "audio/pcm")
            if kind not in GA_FORMATS:
                raise RealtimeError("invalid_value", f"unsupported audio format {kind!r}; use "
                                    "audio/pcm, audio/pcmu or audio/pcma",
                                    "session.audio.input.format.type")
            config = config._with_format(GA_FORMATS[kind], fmt.get("rate"))
        return config._with_input(given, "session.audio.input", "transcription")

    def _updated_beta(self, session: dict[str, Any]) -> RealtimeConfig:
        config = self
        if "input_audio_format" in session:
            kind = session["input_audio_format"]
            if kind not in ("pcm16", "g711_ulaw", "g711_alaw"):
                raise RealtimeError("invalid_value", f"unsupported input_audio_format {kind!r}; "
                                    "use pcm16, g711_ulaw or g711_alaw",
                                    "session.input_audio_format")
            config = config._with_format(kind, None)
        return config._with_input(session, "session", "input_audio_transcription")

    def _with_format(self, kind: AudioFormat, rate: Any) -> RealtimeConfig:
        default = OPENAI_RATE if kind == "pcm16" else G711_RATE
        if rate is not None and (kind != "pcm16" or not isinstance(rate, int)
                                 or not 8000 <= rate <= 48000):
            raise RealtimeError("invalid_value", f"unsupported rate {rate!r}: PCM from 8000 to "
                                "48000 Hz (OpenAI's is 24000), G.711 at 8000",
                                "session.audio.input.format.rate")
        return replace(self, format=kind, rate=rate or default)

    def _with_input(self, given: dict[str, Any], where: str,
                    transcription_key: str) -> RealtimeConfig:
        """The transcription and turn-detection settings under `given` (at `where`)."""
        config = self
        if given.get(transcription_key) is not None:
            at = f"{where}.{transcription_key}"
            wanted = _validated(Transcription, given[transcription_key], at)
            try:
                language = parse_language(wanted.language)
            except ValueError as exc:
                raise RealtimeError("invalid_value", str(exc), f"{at}.language") from None
            config = replace(config, model=wanted.model, language=language,
                             prompt=wanted.prompt, keywords=tuple(wanted.keywords))
            if len(config.hotwords) > MAX_HOTWORDS_CHARS:
                raise RealtimeError("invalid_value", f"keywords: at most {MAX_HOTWORDS_CHARS} "
                                    "characters in all", f"{at}.keywords")
        if "turn_detection" in given:
            turns = given["turn_detection"]
            config = replace(config, turn_detection=None if turns is None else _validated(
                TurnDetection, turns, f"{where}.turn_detection"))
        return config

    def session(self, dialect: Dialect, session_id: str, model: str) -> dict[str, Any]:
        """The session object as each dialect describes it."""
        transcription = {"model": model, "language": self.language, "prompt": self.prompt,
                         "keywords": list(self.keywords)}
        turns = None if self.turn_detection is None else self.turn_detection.model_dump()
        if dialect == "beta":
            return {"id": session_id, "object": "realtime.transcription_session",
                    "input_audio_format": self.format, "input_audio_transcription": transcription,
                    "turn_detection": turns, "input_audio_noise_reduction": None,
                    "include": [], "modalities": ["text"]}
        fmt: dict[str, Any] = {"type": next(k for k, v in GA_FORMATS.items() if v == self.format)}
        if self.format == "pcm16":
            fmt["rate"] = self.rate
        return {"type": "transcription", "object": "realtime.transcription_session",
                "id": session_id, "audio": {"input": {
                    "format": fmt, "transcription": transcription, "turn_detection": turns,
                    "noise_reduction": None}}, "include": []}


def _validated(model: type[_Lenient], value: Any, where: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join([where, *map(str, first["loc"])])
        raise RealtimeError("invalid_value", f"{at}: {first['msg']}", at) from None


def _object(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise RealtimeError("invalid_value", f"{where}.{key} must be an object", f"{where}.{key}")
    return value


def audio_bytes(event: dict[str, Any]) -> bytes:
    """The bytes of an `input_audio_buffer.append`."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise RealtimeError("invalid_value", "'audio' must be a base64 string", "audio")
    try:
        return base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError("invalid_value", "'audio' is not valid base64", "audio") from None


# -- session events to Realtime events --------------------------------------------------------

@dataclass
class _Item:
    """One turn: the user audio between two commits (by the server's VAD or the client)."""

    id: str
    start: float
    finals: list[tuple[float, str]] = field(default_factory=list)  # (end, text)
    utterances: list[str] = field(default_factory=list)
    covered: float = float("-inf")  # end of the last final an utterance covered
    end: float | None = None
    dropped: bool = False  # cleared by the client: no `committed`, no `completed`

    def complete(self, utterances: bool) -> bool:
        if self.end is None:
            return False
        return not utterances or not self.finals or self.covered >= self.finals[-1][0]

    def transcript(self, utterances: bool) -> str:
        if utterances and self.utterances:
            return " ".join(self.utterances)
        return " ".join(text for _, text in self.finals)


class Turns:
    """A session's events as Realtime events, item by item.

    - Deltas are the session's finals, which never change, so they are append-only; partials
      are not sent. They arrive while the turn is still spoken, before its `committed`.
    - `completed` carries the turn's utterance text (its second, whole-utterance decode) when
      utterances are on, else its finals joined. So it comes once every utterance of the turn
      is decoded, and it may differ from the deltas where the second decode heard better.
    - With server VAD, a turn starts at `speech_start` (`speech_started`) and ends at
      `speech_end` (`speech_stopped`, then `committed`). Without turn detection, the client's
      commits end turns, and the VAD's events only gate decoding.
    """

    def __init__(self, server_vad: bool, utterances: bool, offset_s: float = 0.0,
                 previous_item: str | None = None) -> None:
        self.server_vad, self.utterances, self.offset_s = server_vad, utterances, offset_s
        self.previous_item = previous_item
        self._current: _Item | None = None
        self._waiting: list[_Item] = []  # ended, awaiting their utterance texts

    @property
    def open(self) -> bool:
        return self._current is not None

    def events(self, events: Iterable[StreamEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            at = event.start + self.offset_s
            if event.type == "speech_start" and self._current is None:
                out += self._begin(at, announce=self.server_vad)
            elif event.type == "speech_end" and self.server_vad and self._current is not None:
                out += self._end(event.end + self.offset_s, announce=True)
            elif event.type == "final" and event.text:
                out += self._final(event)
            elif event.type == "utterance":
                self._utterance(event)
                out += self._completions()
        return out

    def commit(self, events: Iterable[StreamEvent], at_s: float) -> list[dict[str, Any]]:
        """A client's commit: the events its end of turn produced, then the turn's end (an
        empty item if no speech was heard since the last one)."""
        before = self.previous_item
        out = self.events(events)
        if self.previous_item == before:  # the events did not end a turn themselves
            if self._current is None:
                out += self._begin(at_s + self.offset_s, announce=False)
            out += self._end(at_s + self.offset_s, announce=False)
        return out

    def clear(self) -> None:
        """The turn in progress is dropped (its deltas were sent, and stand)."""
        if self._current is not None:
            self._current.dropped = True
            self._current.end = self._current.start
            self._waiting.append(self._current)
            self._current = None

    def _begin(self, at: float, announce: bool) -> list[dict[str, Any]]:
        self._current = _Item(f"item_{uuid.uuid4().hex[:20]}", at)
        if not announce:
            return []
        return [server_event("input_audio_buffer.speech_started",
                             audio_start_ms=round(at * 1000), item_id=self._current.id)]

    def _final(self, event: StreamEvent) -> list[dict[str, Any]]:
        if self._current is None:
            self._begin(event.start + self.offset_s, announce=False)
        item = self._current
        delta = (" " if item.finals else "") + event.text
        item.finals.append((event.end, event.text))
        return [server_event("conversation.item.input_audio_transcription.delta",
                             item_id=item.id, content_index=0, delta=delta)]

    def _end(self, at: float, announce: bool) -> list[dict[str, Any]]:
        item, self._current = self._current, None
        item.end = max(at, item.start)
        out = []
        if announce:
            out.append(server_event("input_audio_buffer.speech_stopped",
                                    audio_end_ms=round(item.end * 1000), item_id=item.id))
        out.append(server_event("input_audio_buffer.committed", item_id=item.id,
                                previous_item_id=self.previous_item))
        self.previous_item = item.id
        self._waiting.append(item)
        return out + self._completions()

    def _utterance(self, event: StreamEvent) -> None:
        """An utterance covers finals of one item: the oldest with finals not yet covered."""
        for item in [*self._waiting, *([self._current] if self._current else [])]:
            if item.finals and item.covered < item.finals[-1][0]:
                item.utterances.append(event.text)
                item.covered = event.end
                return

    def _completions(self) -> list[dict[str, Any]]:
        out = []
        while self._waiting and self._waiting[0].complete(self.utterances):
            item = self._waiting.pop(0)
            if item.dropped:
                continue
            out.append(server_event(
                "conversation.item.input_audio_transcription.completed", item_id=item.id,
                content_index=0, transcript=item.transcript(self.utterances),
                usage={"type": "duration", "seconds": round(item.end - item.start, 3)}))
        return out
