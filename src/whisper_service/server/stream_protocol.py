"""The WebSocket protocol's messages, validated in one place (see docs/protocol.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..audio import SAMPLE_RATE, Encoding
from ..registry import parse_language
from ..streaming import StreamOptions
from ..transcript import MAX_HOTWORDS_CHARS
from ..vad import VadOptions

if TYPE_CHECKING:
    from ..config import Settings

MIN_RATE, MAX_RATE = 8000, 48000


class ProtocolError(Exception):
    """A client mistake, sent as an `error` message with a stable code. Raised, it ends the
    session with `close_code`; queued (recoverable), the session carries on."""

    def __init__(self, code: str, message: str, close_code: int = 1008) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code

    def to_dict(self) -> dict[str, str]:
        return {"type": "error", "code": self.code, "message": self.message}


class StreamConfig(BaseModel):
    """The first message of a stream."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["config"] = "config"
    model: str | None = None
    language: str = "auto"
    task: Literal["transcribe", "translate"] = "transcribe"
    sample_rate: int = SAMPLE_RATE
    encoding: Encoding = "pcm_s16le"
    static_prompt: str = Field("", max_length=2000)
    # Folded into the static prompt, before it (faster-whisper's own hotwords would be dropped
    # from every decode that forces a prefix, which is most of a stream's).
    hotwords: str = Field("", max_length=MAX_HOTWORDS_CHARS)
    word_timestamps: bool = False
    utterances: bool | None = None  # None: the server's setting
    vad: VadOptions = Field(default_factory=VadOptions)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        parse_language(value)
        return value

    @field_validator("sample_rate")
    @classmethod
    def _rate(cls, value: int) -> int:
        if not MIN_RATE <= value <= MAX_RATE:
            raise ValueError(f"sample_rate {value} is not supported; use {MIN_RATE} to {MAX_RATE} "
                             "Hz (16000 avoids resampling)")
        return value

    def stream_options(self, settings: Settings) -> StreamOptions:
        """The server's settings with this client's choices."""
        return StreamOptions.from_settings(settings, language=parse_language(self.language),
                                           task=self.task, static_prompt=self.static_prompt,
                                           hotwords=self.hotwords, utterances=self.utterances,
                                           vad=self.vad)


def parse_json(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON: {exc.msg}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("invalid_message", "a JSON message must be an object with a 'type'")
    return message


def parse_config(message: dict[str, Any]) -> StreamConfig:
    if message["type"] != "config":
        raise ProtocolError("config_required",
                            f"the first message must be a config, got {message['type']!r}")
    try:
        return StreamConfig.model_validate(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        code = "unsupported_sample_rate" if where == "sample_rate" else "invalid_config"
        reason = first["msg"].removeprefix("Value error, ")
        raise ProtocolError(code, f"{where}: {reason}") from None
