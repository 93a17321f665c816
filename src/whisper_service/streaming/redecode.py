"""One live decode: the session buffer decoded again, with what is committed forced first."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future

import numpy as np

from ..context import RollingContext
from ..engine.decoder import Decoder
from ..transcript import DecodeRequest, TranscribeOptions, Transcript, Word
from .guards import loop_start, trusted_words, words_after
from .options import StreamOptions
from .pacing import Pacing

RECENT_WORDS = 18  # enough for the loop guard to see a 6-word phrase three times


class SessionCancelled(RuntimeError):
    """The session was cancelled (its client left) while it worked: its work is dropped."""


class Redecoder:
    """A session's way to the shared model.

    `decode` returns only the words the model wrote after the forced prefix, without
    invented text and never a loop; what it learns on the way stays here: the stream's
    language, the last decode's segment ends (safe places to cut the buffer) and the
    latest committed words, which a loop may repeat. Each request carries the deadline of
    its newest audio (`Pacing.due`), the order the batch scheduler serves in, and a
    cancelled session's request is withdrawn.
    """

    def __init__(self, decoder: Decoder, context: RollingContext, options: StreamOptions,
                 pacing: Pacing, on_decode: Callable[[float], None] | None = None) -> None:
        self.decoder, self.context, self.options, self.pacing = decoder, context, options, pacing
        self._on_decode = on_decode
        self.language = options.language  # fixed, or detected once with confidence
        self.detected: str | None = None  # the last decode's guess
        self.boundaries: list[float] = []  # segment ends of the last decode: safe cut points
        self.recent: list[str] = []  # the last committed words, for the loop guard
        self.cancelled = False
        self.short_step = False  # the last step came after `idle_chunk_s`, under `min_chunk_s`
        self._inflight: Future[Transcript] | None = None
        self.decodes, self.decode_s, self.loops = 0, 0.0, 0
        decoder.check(self.options_for(None))

    def options_for(self, prompt: tuple[int, ...] | None, prefix: str | None = None,
                    beam_size: int | None = None) -> TranscribeOptions:
        """A live decode's options; an utterance's (`beam_size` given) keeps its beam when
        the model is busy, a step's takes `busy_beam_size` then."""
        return TranscribeOptions(
            language=self.language, task=self.options.task,
            beam_size=beam_size or self.options.beam_size,
            busy_beam_size=None if beam_size else self.options.busy_beam_size,
            word_timestamps=True,
            vad_filter=False, initial_prompt=prompt, prefix=prefix,
            condition_on_previous_text=False,
            temperature=0.0)  # fallback re-decodes cost more than the loop guard saves

    @property
    def pad_s(self) -> float | None:
        """The window padding for this session's decodes (None: the model's `window_pad_s`).
        A static prompt (names, terms) is followed closely only on Whisper's full 30 s
        window (test_context_improves_consistency_across_segments)."""
        return 30.0 if self.context.static_prompt else None

    def submit(self, audio: np.ndarray, options: TranscribeOptions, end_sample: int,
               pad_s: float | None = None) -> Future[Transcript]:
        """Queue a decode of `audio`, due when the sample `end_sample` is, its window padded
        to a multiple of `pad_s` (default: `self.pad_s`)."""
        return self.decoder.submit(DecodeRequest(audio, options, window=True,
                                                 pad_s=pad_s or self.pad_s,
                                                 deadline=self.pacing.due(end_sample)))

    def decode(self, audio: np.ndarray, offset: float, end_sample: int,
               prefix: str) -> list[Word]:
        """The words after `prefix` in `audio` (at stream time `offset`), guarded."""
        options = self.options_for(self.context.tokens(), prefix or None)
        started = time.perf_counter()
        result = self.wait(self.submit(audio, options, end_sample))
        elapsed = time.perf_counter() - started
        self.decodes += 1
        self.decode_s += elapsed
        self.timed(elapsed)
        if self.language is None and self.decoder.loaded.multilingual \
                and result.language_probability >= 0.5:
            self.language = result.language
        self.detected = result.language
        words, self.boundaries = trusted_words(result, prefix, offset)
        new = words_after(prefix, words)
        # A loop may repeat what is already committed, so the latest committed words count.
        recent = self.recent if loop_start(self.recent) is None else []
        cut = loop_start(recent + [w.word for w in new])
        if cut is not None:  # never commit a loop, and don't prompt with what may have caused it
            new = new[:max(0, cut - len(recent))]
            self.loops += 1
            self.context.reset()
        return new

    def committed(self, words: list[Word]) -> None:
        """Words became final: the loop guard compares what comes next with them."""
        self.recent = (self.recent + [w.word for w in words])[-RECENT_WORDS:]

    def timed(self, elapsed: float) -> None:
        if self._on_decode:
            self._on_decode(elapsed)

    def wait(self, future: Future[Transcript]) -> Transcript:
        """The result of this session's decode, unless the session is cancelled meanwhile."""
        self._inflight = future
        try:
            if self.cancelled:
                future.cancel()
            return future.result()
        except CancelledError:
            raise SessionCancelled("the session was cancelled") from None
        finally:
            self._inflight = None

    def cancel(self) -> None:
        """Withdraw the decode this session waits for (a running one finishes)."""
        self.cancelled = True
        future = self._inflight
        if future is not None:
            future.cancel()

    def step_s(self) -> float:
        """New audio a step waits for: `idle_chunk_s` while the model is idle (finals come
        sooner on spare compute), else `min_chunk_s`, stretched as the model falls behind
        (`Decoder.step_factor`)."""
        options = self.options
        idle = self.decoder.idle()
        self.short_step = idle and options.idle_step_s < options.min_chunk_s
        if idle:
            return options.idle_step_s
        return options.min_chunk_s * self.decoder.step_factor()

    def busy(self) -> bool:
        return self.decoder.busy()
