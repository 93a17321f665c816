"""The WebSocket protocol's messages, validated in one place (see docs/protocol.md)."""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .audio import SAMPLE_RATE, AudioError, Encoding, pcm_to_float
from .registry import check_language
from .streaming import StreamOptions
from .vad import VadOptions

MIN_RATE, MAX_RATE = 8000, 48000


class ProtocolError(Exception):
    """A client mistake, sent as an `error` message with a stable code. Raised, it ends the
    session with `close_code`; queued (recoverable), the session carries on."""

    def __init__(self, code: str, message: str, close_code: int = 1008) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code

    def to_dict(self) -> dict[str, str]:
        return {"type": "error", "code": self.code, "message": self.message}


class VadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.5, gt=0, lt=1)
    min_silence_duration_ms: int = Field(500, ge=0, le=10000)
    speech_pad_ms: int = Field(100, ge=0, le=2000)
    min_speech_duration_ms: int = Field(250, ge=0, le=10000)


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
    word_timestamps: bool = False
    vad: VadConfig = Field(default_factory=VadConfig)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        check_language(None if value == "auto" else value)
        return value

    @field_validator("sample_rate")
    @classmethod
    def _rate(cls, value: int) -> int:
        if not MIN_RATE <= value <= MAX_RATE:
            raise ValueError(f"sample_rate {value} is not supported; use {MIN_RATE} to {MAX_RATE} "
                             "Hz (16000 avoids resampling)")
        return value

    def stream_options(self, min_chunk_s: float, max_buffer_s: float, beam_size: int,
                       max_context_tokens: int) -> StreamOptions:
        return StreamOptions(
            language=None if self.language == "auto" else self.language, task=self.task,
            min_chunk_s=min_chunk_s, max_buffer_s=max_buffer_s, beam_size=beam_size,
            static_prompt=self.static_prompt, max_context_tokens=max_context_tokens,
            vad=VadOptions(**self.vad.model_dump()))


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


class Resampler:
    """Client PCM frames to 16 kHz float32; stateful, so frame edges leave no clicks."""

    def __init__(self, rate: int, encoding: Encoding) -> None:
        self.rate, self.encoding = rate, encoding
        self._av = None
        if rate != SAMPLE_RATE:
            import av

            self._av = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, data: bytes) -> np.ndarray:
        try:
            samples = pcm_to_float(data, self.encoding)
        except AudioError as exc:
            raise ProtocolError("invalid_audio", str(exc)) from None
        if self._av is None or not len(samples):
            return samples
        import av

        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._av.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
