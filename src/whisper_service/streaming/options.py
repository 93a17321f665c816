"""One session's settings: the tunables from `Settings`, and what its client chose."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Settings, get_settings
from ..transcript import Task
from ..vad import VadOptions


@dataclass(frozen=True)
class StreamOptions:
    """One session's settings, made by `from_settings`: the tunables' defaults and bounds
    live in `Settings`, the rest is what a client chose. Beam search on short windows fixes
    words greedy decoding gets wrong (bench/streaming.py measures both)."""

    min_chunk_s: float
    max_buffer_s: float
    beam_size: int
    max_context_tokens: int
    utterances: bool
    utterance_beam_size: int
    language: str | None = None
    task: Task = "transcribe"
    static_prompt: str = ""
    vad: VadOptions = field(default_factory=VadOptions)
    hotwords: str = ""  # go before static_prompt in the never-trimmed part of the context
    turn_events: bool = False  # also emit speech_start / speech_end (the Realtime adapter)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, min_chunk_s: float | None = None,
                      max_buffer_s: float | None = None, beam_size: int | None = None,
                      max_context_tokens: int | None = None, utterances: bool | None = None,
                      **per_stream: Any) -> StreamOptions:
        """The settings (default: the process's), with the tunables given here overriding
        them, validated as settings are; plus one client's language, task, prompt and VAD."""
        settings = settings or get_settings()
        changed = {k: v for k, v in (("min_chunk_s", min_chunk_s), ("max_buffer_s", max_buffer_s),
                                     ("stream_beam_size", beam_size),
                                     ("max_context_tokens", max_context_tokens),
                                     ("utterances", utterances)) if v is not None}
        s = settings.override(**changed) if changed else settings
        return cls(s.min_chunk_s, s.max_buffer_s, s.stream_beam_size, s.max_context_tokens,
                   s.utterances, s.utterance_beam_size, **per_stream)
