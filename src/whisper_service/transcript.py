"""What a decode is asked for and gives back: the options and the request, and a transcript
of segments, each with its words and times.

Plain frozen data with no model behind it, so formats, timelines, streaming, utterances and
the protocols use it without reaching into the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .audio import SAMPLE_RATE
from .registry import check_language

Task = Literal["transcribe", "translate"]
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's window: the most one window decode takes
# Longest hotwords text a client may send (HTTP form and stream config), checked before any
# model is at hand; a stream's hotwords then count against its prompt's `max_context_tokens`.
MAX_HOTWORDS_CHARS = 500


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
    """Decode settings; None language means detect. File decodes pass them all to
    faster-whisper's `transcribe`; window decodes (streaming) use the decoding ones."""

    language: str | None = None
    task: Task = "transcribe"
    beam_size: int = 5
    # The beam when the model is busy (a batch of two or more, or windows waiting): a live
    # stream's windows can afford beam search only while nobody waits. None: `beam_size`.
    busy_beam_size: int | None = None
    word_timestamps: bool = False
    vad_filter: bool = True
    initial_prompt: str | tuple[int, ...] | None = None  # text, or its tokens
    prefix: str | None = None  # forced start of the text: what a stream already committed
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    condition_on_previous_text: bool = True
    # Names and terms to spell right. File decodes pass them to faster-whisper, which puts them
    # before the previous text of every window's prompt (except where a prefix is forced);
    # window decodes ignore them: a stream folds them into its static prompt instead.
    hotwords: str | None = None
    # Text tokens only, no timestamp tokens (a window decode, with `word_timestamps` for the
    # times): Whisper then writes all the speech of a window in one pass. With timestamps a
    # window decoded once skips sentences after a pause, which `transcribe` recovers only
    # by seeking back and decoding the rest again (bench/transcribe.py).
    without_timestamps: bool = False

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The temperatures to try, in order: one, or the fallback's."""
        t = self.temperature
        return t if isinstance(t, tuple) else (t,)

    def __post_init__(self) -> None:
        check_language(self.language)
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"unsupported task {self.task!r}; use transcribe or translate")
        if self.beam_size < 1 or (self.busy_beam_size is not None and self.busy_beam_size < 1):
            raise ValueError("beam size must be at least 1")


@dataclass(frozen=True)
class DecodeRequest:
    """`window`: decode the audio (at most 30 s) as one Whisper window, as streaming wants.
    `pad_s`: pad that window to a multiple of this (default: the model's `window_pad_s`).
    `deadline`: when the result is due (`time.monotonic()`; default: now). The batch
    scheduler serves the earliest due first, so a stream sent ahead of real time waits for
    the ones that are live (see pacing.py). `background`: work nobody waits for live (a file's
    window), which leaves a decode worker to the live streams while there are any."""

    audio: np.ndarray
    options: TranscribeOptions
    window: bool = False
    pad_s: float | None = None
    deadline: float | None = None
    background: bool = False

    def __post_init__(self) -> None:
        if self.window and len(self.audio) > WINDOW_SAMPLES:
            raise ValueError("a window decode takes at most 30 s of audio")

