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
    live in `Settings`, the rest is what a client chose. A step's window is decoded at
    `beam_size` while the model is idle, and at `busy_beam_size` while windows wait or share
    a batch: beam search on short windows fixes words greedy decoding gets wrong on real
    speech, and costs compute only when it is spare (bench/accuracy.py, bench/capacity.py)."""

    min_chunk_s: float
    idle_chunk_s: float
    max_buffer_s: float
    beam_size: int
    busy_beam_size: int
    unsure_probability: float
    max_context_tokens: int
    utterances: bool
    utterance_beam_size: int
    utterance_busy_beam_size: int
    utterance_min_s: float
    language: str | None = None
    task: Task = "transcribe"
    static_prompt: str = ""
    vad: VadOptions = field(default_factory=VadOptions)
    hotwords: str = ""  # go before static_prompt in the never-trimmed part of the context
    turn_events: bool = False  # also emit speech_start / speech_end (the Realtime adapter)

    @property
    def idle_step_s(self) -> float:
        """The step while the model is idle: `idle_chunk_s`, never longer than the busy one."""
        return min(self.idle_chunk_s, self.min_chunk_s)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **given: Any) -> StreamOptions:
        """The settings (default: the process's), with the tunables given here (by their
        names in `TUNABLES`) overriding them, validated as settings are; plus one client's
        language, task, prompt and VAD."""
        settings = settings or get_settings()
        changed = {TUNABLES[k]: given.pop(k) for k in list(given)
                   if k in TUNABLES and given[k] is not None}
        given = {k: v for k, v in given.items() if k not in TUNABLES}
        s = settings.override(**changed) if changed else settings
        return cls(**{k: getattr(s, name) for k, name in TUNABLES.items()}, **given)


# StreamOptions' fields that come from `Settings`, and the setting each one is.
TUNABLES = {"min_chunk_s": "min_chunk_s", "idle_chunk_s": "idle_chunk_s",
            "max_buffer_s": "max_buffer_s",
            "beam_size": "stream_beam_size", "busy_beam_size": "stream_busy_beam_size",
            "unsure_probability": "stream_unsure_probability",
            "max_context_tokens": "max_context_tokens",
            "utterances": "utterances", "utterance_beam_size": "utterance_beam_size",
            "utterance_busy_beam_size": "utterance_busy_beam_size",
            "utterance_min_s": "utterance_min_s"}
