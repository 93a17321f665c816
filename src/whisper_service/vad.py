"""Streaming voice activity detection with Silero VAD v6 on onnxruntime (no torch).

One ONNX session (``SileroVAD``) is shared by the whole process; each stream owns a
``VADIterator`` holding only its recurrent state, a <512-sample remainder and counters.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import onnxruntime
from faster_whisper.utils import get_assets_path
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as validated_dataclass

from .audio import SAMPLE_RATE

SILERO_WINDOW = 512  # samples: Silero scores fixed windows of 32 ms at 16 kHz
CONTEXT_SAMPLES = 64  # Tail of the previous window the v5/v6 model expects in front of each window.
MODEL_PATH = os.path.join(get_assets_path(), "silero_vad_v6.onnx")


class VadState(NamedTuple):
    """LSTM state carried between windows of one stream."""

    h: np.ndarray
    c: np.ndarray


class SileroVAD:
    """Stateless wrapper around the Silero ONNX session; safe to share across streams/threads."""

    def __init__(self, path: str = MODEL_PATH) -> None:
        opts = onnxruntime.SessionOptions()
        # Many concurrent streams share this session; per-call parallelism only adds overhead.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"], sess_options=opts
        )

    @staticmethod
    def initial_state() -> VadState:
        return VadState(np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))

    def score(self, windows: np.ndarray, state: VadState) -> tuple[np.ndarray, VadState]:
        """Probabilities for consecutive (n, 576) windows; the state runs through them in order."""
        probs, h, c = self.session.run(
            None, {"input": np.ascontiguousarray(windows, np.float32), "h": state.h, "c": state.c}
        )
        return np.asarray(probs, np.float32).reshape(-1), VadState(h, c)


_model: SileroVAD | None = None
_model_lock = threading.Lock()


def get_vad_model() -> SileroVAD:
    """The process-wide model, created on first use (the lock guarantees a single instance)."""
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                _model = SileroVAD()
    return _model


@validated_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class VadOptions:
    """Silero VAD thresholds, validated on creation (the stream protocol's `vad` object is
    this type); ``neg_threshold=None`` means ``max(threshold - 0.15, 0.01)``."""

    threshold: float = Field(0.5, gt=0, lt=1)
    neg_threshold: float | None = Field(None, gt=0, lt=1)
    min_silence_duration_ms: int = Field(500, ge=0, le=10000)
    speech_pad_ms: int = Field(100, ge=0, le=2000)
    min_speech_duration_ms: int = Field(250, ge=0, le=10000)

    def __post_init__(self) -> None:
        if self.neg_threshold is not None and self.neg_threshold > self.threshold:
            raise ValueError(f"neg_threshold must be at most threshold={self.threshold}; "
                             f"got {self.neg_threshold}")

    @property
    def effective_neg_threshold(self) -> float:
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class VadEvent:
    """Speech start/end at an absolute sample index of the stream."""

    kind: Literal["start", "end"]
    sample: int


class VADIterator:
    """Streaming Silero VAD (classic ``VADIterator`` semantics) for one 16 kHz stream.

    Feed chunks of any size; only whole 512-sample windows are scored, so the events do
    not depend on how the audio was chunked. A region starts on a window with
    ``prob >= threshold`` (start = window start - pad) and ends once the probability has
    stayed below ``neg_threshold`` for ``min_silence_duration_ms`` (end = end of the first
    silent window + pad).

    ``min_speech_duration_ms`` is honoured without lookahead: "start" is held back until
    the region has lasted that long (the reported sample is still the true padded start,
    so it lies in the past); a region that ends sooner produces no events at all.
    """

    def __init__(
        self,
        model: SileroVAD | None = None,
        options: VadOptions | None = None,
    ) -> None:
        options = options or VadOptions()
        self.model = model if model is not None else get_vad_model()
        self.options = options
        ms = SAMPLE_RATE // 1000
        self._pad = options.speech_pad_ms * ms
        self._min_silence = options.min_silence_duration_ms * ms
        self._min_speech = options.min_speech_duration_ms * ms
        self._neg_threshold = options.effective_neg_threshold
        self.reset()

    def reset(self) -> None:
        """Forget everything: model state, speech state, buffered samples and the sample counter."""
        self._state = SileroVAD.initial_state()
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._buffer = np.zeros(0, np.float32)
        self._received = 0  # Samples fed so far (incl. the unscored remainder).
        self._scored = 0  # End sample of the last scored window.
        self._onset: int | None = None  # Start of the current region (emitted or still pending).
        self._triggered = False
        self._temp_end: int | None = None
        self._last_end = 0
        self.last_probability: float | None = None

    @property
    def triggered(self) -> bool:
        """True while in speech whose "start" has been emitted."""
        return self._triggered

    @property
    def current_sample(self) -> int:
        """Number of samples fed since creation/reset."""
        return self._received

    def __call__(self, chunk: np.ndarray) -> list[VadEvent]:
        """Feed 16 kHz float32 audio and return the events it completed. The audio must be
        clean already (`audio.as_float32`: no NaN, within [-1, 1]); sessions make it so."""
        samples = np.asarray(chunk, dtype=np.float32)
        if samples.size == 0:
            return []
        self._received += samples.size
        audio = np.concatenate([self._buffer, samples]) if self._buffer.size else samples
        n = audio.size // SILERO_WINDOW
        self._buffer = audio[n * SILERO_WINDOW :].copy()
        if n == 0:
            return []
        frames = audio[: n * SILERO_WINDOW].reshape(n, SILERO_WINDOW)
        contexts = np.vstack([self._context[None], frames[:-1, -CONTEXT_SAMPLES:]])
        self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
        probs, self._state = self.model.score(np.hstack([contexts, frames]), self._state)
        events = []
        for prob in probs:
            event = self._step(float(prob))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[VadEvent]:
        """Close an emitted speech region at the current stream position (end of stream)."""
        emitted = self._triggered
        end = self._received
        self._onset, self._triggered, self._temp_end = None, False, None
        if not emitted:
            return []
        self._last_end = end
        return [VadEvent("end", end)]

    def _step(self, prob: float) -> VadEvent | None:
        """Advance one scored window; returns at most one event."""
        window_start = self._scored
        self._scored += SILERO_WINDOW
        self.last_probability = prob
        if prob >= self.options.threshold:
            self._temp_end = None
            if self._onset is None:
                self._onset = window_start
        elif prob < self._neg_threshold and self._onset is not None:
            if self._temp_end is None:
                self._temp_end = self._scored
            if self._scored - self._temp_end >= self._min_silence:
                return self._close_region(self._temp_end)
        if (
            self._onset is not None
            and not self._triggered
            and self._temp_end is None
            and self._scored - self._onset >= self._min_speech
        ):
            self._triggered = True
            return VadEvent("start", max(self._last_end, self._onset - self._pad))
        return None

    def _close_region(self, temp_end: int) -> VadEvent | None:
        """End the region; a region whose start was held back (too short) vanishes silently."""
        emitted = self._triggered
        self._onset, self._triggered, self._temp_end = None, False, None
        if not emitted:
            return None
        self._last_end = min(temp_end + self._pad, self._scored)
        return VadEvent("end", self._last_end)
