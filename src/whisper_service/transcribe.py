"""The one narrow call into a model: `decode(request) -> Transcript`.

File transcription, the HTTP API and streaming sessions all go through here, so a future
scheduler that batches many sessions' requests only has to replace `Decoder`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .audio import SAMPLE_RATE
from .models import LoadedModel
from .registry import check_language

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class Transcript:
    language: str
    language_probability: float
    duration: float
    segments: tuple[Segment, ...] = field(default=())

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()


@dataclass(frozen=True)
class TranscribeOptions:
    """Settings passed straight through to faster-whisper; None language means detect."""

    language: str | None = None
    task: Task = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    vad_filter: bool = True
    initial_prompt: str | None = None
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    condition_on_previous_text: bool = True

    def __post_init__(self) -> None:
        check_language(self.language)
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"unsupported task {self.task!r}; use transcribe or translate")
        if self.beam_size < 1:
            raise ValueError("beam size must be at least 1")


@dataclass(frozen=True)
class DecodeRequest:
    audio: np.ndarray
    options: TranscribeOptions


class Decoder:
    """Runs requests on one shared model; holds no per-session state."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def check(self, options: TranscribeOptions) -> None:
        """Reject settings the model cannot honour, before any audio is spent on them."""
        if not self.loaded.multilingual:
            name = self.loaded.key.name
            if options.language not in (None, "en"):
                raise ValueError(f"model {name} is English-only; language "
                                 f"{options.language!r} needs a multilingual model such as base")
            if options.task == "translate":
                raise ValueError(f"model {name} is English-only and cannot translate; use base")

    def decode(self, request: DecodeRequest,
               on_progress: Callable[[float], None] | None = None) -> Transcript:
        """Decode a window of 16 kHz audio. `on_progress` gets audio seconds done so far."""
        self.check(request.options)
        opts = request.options
        language = opts.language
        if language is None and not self.loaded.multilingual:
            language = "en"  # faster-whisper would do the same, without detection work
        segments, info = self.loaded.model.transcribe(
            request.audio,
            language=language,
            task=opts.task,
            beam_size=opts.beam_size,
            word_timestamps=opts.word_timestamps,
            vad_filter=opts.vad_filter,
            initial_prompt=opts.initial_prompt,
            temperature=opts.temperature,
            condition_on_previous_text=opts.condition_on_previous_text,
        )
        out = []
        for seg in segments:
            words = tuple(Word(w.start, w.end, w.word, w.probability) for w in seg.words or ())
            out.append(Segment(seg.id, seg.start, seg.end, seg.text, words, seg.avg_logprob,
                               seg.no_speech_prob, seg.compression_ratio, seg.temperature,
                               tuple(seg.tokens)))
            if on_progress:
                on_progress(seg.end)
        duration = len(request.audio) / SAMPLE_RATE
        if on_progress:
            on_progress(duration)
        return Transcript(info.language, info.language_probability, duration, tuple(out))
