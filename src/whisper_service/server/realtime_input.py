"""What a Realtime client sends, read off the socket: each event becomes an item in order.

Appended audio is decoded as it is read (PCM16, or G.711 through PyAV's codec, then
resampled to 16 kHz), so the session loop queues samples and counts what is ahead; a bad
event becomes `Failed`, answered with an `error` event, and the session goes on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from ..audio import SAMPLE_RATE, AudioError, Resampler, pcm_to_float
from .realtime_protocol import RealtimeConfig, RealtimeError, audio_bytes
from .session_loop import Audio

UPDATES = ("session.update", "transcription_session.update")


@dataclass(frozen=True)
class Control:
    """commit, clear or an update, in order with the audio around it."""

    event: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """A bad client event: answered with an `error` event."""

    error: RealtimeError
    event_id: str | None = None


Item = Audio | Control | Failed


class EventReader:
    """One connection's client events to items, in the audio format its config names."""

    def __init__(self, config: RealtimeConfig, max_message_bytes: int) -> None:
        self.limit = max_message_bytes * 4 // 3 + 1024  # base64 and the envelope
        self.received_s = 0.0  # audio read from the socket
        self.configure(config)

    def configure(self, config: RealtimeConfig) -> None:
        """A new config: audio after it is read in its format."""
        self.config = config
        self._resampler = Resampler(config.rate)
        self._g711: av.CodecContext | None = None

    def __call__(self, message: dict[str, Any]) -> Item:
        text = message.get("text")
        if text is None:
            return Failed(RealtimeError("invalid_event", "binary messages are not part of this "
                                        "protocol; send input_audio_buffer.append events"))
        if len(text) > self.limit:
            return Failed(RealtimeError("message_too_large", f"event of {len(text)} bytes "
                                        f"exceeds {self.limit}"))
        try:
            event = json.loads(text)
        except ValueError as exc:
            return Failed(RealtimeError("invalid_json", f"event is not valid JSON: {exc}"))
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return Failed(RealtimeError("invalid_event", "an event must be an object with a "
                                        "'type'"))
        kind, event_id = event["type"], event.get("event_id")
        if kind == "input_audio_buffer.append":
            try:
                samples = self._decode(audio_bytes(event))
            except RealtimeError as exc:
                return Failed(exc, event_id)
            except AudioError as exc:
                return Failed(RealtimeError("invalid_audio", str(exc), "audio"), event_id)
            self.received_s += len(samples) / SAMPLE_RATE
            return Audio(samples, time.monotonic())
        if kind in (*UPDATES, "input_audio_buffer.commit", "input_audio_buffer.clear"):
            return Control(event)
        return Failed(RealtimeError("unsupported_event", f"event type {kind!r} is not served "
                                    "here: transcription sessions take session.update (or "
                                    "transcription_session.update) and input_audio_buffer."
                                    "append, commit and clear", "type"), event_id)

    def _decode(self, data: bytes) -> np.ndarray:
        """PCM16 (little-endian) or G.711 bytes to 16 kHz float32."""
        if self.config.format == "pcm16":
            return self._resampler(pcm_to_float(data, "pcm_s16le"))
        if self._g711 is None:
            codec = "pcm_mulaw" if self.config.format == "g711_ulaw" else "pcm_alaw"
            self._g711 = av.CodecContext.create(codec, "r")
            self._g711.sample_rate, self._g711.layout = self.config.rate, "mono"
        frames = self._g711.decode(av.Packet(data)) if data else []
        pcm = [f.to_ndarray().reshape(-1) for f in frames]
        samples = np.concatenate(pcm).astype(np.float32) / 32768.0 if pcm \
            else np.zeros(0, np.float32)
        return self._resampler(samples)
