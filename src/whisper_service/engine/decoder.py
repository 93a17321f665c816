"""The one narrow call into a model: `Decoder.decode(request) -> Transcript`.

File transcription, the HTTP API and streaming sessions all go through here. Window decodes
(streaming) go to the model's batch scheduler when it has one; file decodes run
faster-whisper's own `transcribe`, window by window, in the model's decode slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audio import SAMPLE_RATE
from ..timeline import ordered
from ..transcript import DecodeRequest, Segment, TranscribeOptions, Transcript, Word
from .windows import decode_windows, prepare_window, prompt_tokens

if TYPE_CHECKING:
    from .model import LoadedModel

# A file decode's hotwords, in tokens. faster-whisper puts them before up to 223 tokens of
# previous text, and a window writes only what is left of Whisper's 448 positions: 96 leave
# 126, a dense 30 s window's worth. Longer lists made both models skip speech on continuous
# reading (bench/hotwords.py).
MAX_HOTWORDS_TOKENS = 96
# The share of the workers' time above which the model counts as busy (`Decoder.busy`): one
# client keeps it well below, four above (bench/capacity.py's CPU column).
BUSY_UTILIZATION = 0.5


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
        if options.hotwords:
            count = len(prompt_tokens(self.loaded, options.hotwords))
            if count > MAX_HOTWORDS_TOKENS:
                raise ValueError(f"hotwords: {count} tokens, more than {MAX_HOTWORDS_TOKENS}; "
                                 "keep them to the names and terms that need spelling")

    def step_factor(self) -> float:
        """How much longer than `min_chunk_s` a session's step should be right now: 1 while
        the scheduler keeps up, growing with the windows queued behind the running batches
        (one more step per half a window waiting per worker). Sessions then re-decode less
        often, so an overloaded server degrades in latency, smoothly, instead of in backlog.
        The rate (half a window, not a full batch) is the one bench/capacity.py found best."""
        scheduler = self.loaded.scheduler
        return 1.0 + 2 * scheduler.depth / scheduler.workers if scheduler else 1.0

    def idle(self) -> bool:
        """Whether a stream's step may come sooner: nothing is queued and the workers were
        busy less than half the time lately. A decode running on one worker (an utterance's)
        leaves the other free."""
        scheduler = self.loaded.scheduler
        return scheduler is None or (scheduler.depth == 0
                                     and scheduler.utilization() < BUSY_UTILIZATION)

    def busy(self) -> bool:
        """Whether the model's compute is taken: a decode is running or waiting, or its
        workers were busy half the time over the last few seconds. Work that can be done
        cheaper or better (an utterance's second decode) is done cheaper then."""
        scheduler = self.loaded.scheduler
        return scheduler is not None and (scheduler.running > 0 or not self.idle())

    def decode(self, request: DecodeRequest,
               on_progress: Callable[[float], None] | None = None,
               on_segment: Callable[[Segment], None] | None = None) -> Transcript:
        """Decode 16 kHz audio. `on_progress` gets audio seconds done so far; file decodes give
        `on_segment` each segment as soon as its window is decoded (an upload streams them).

        Each Whisper window waits for one of the model's decode slots (`num_workers`), so many
        sessions share a few, and a long file takes turns with the streams window by window.
        Window decodes go through the model's batch scheduler when it has one: the features
        are computed here, on the caller's thread, and the scheduler runs them with other
        sessions' windows.
        """
        if request.window and self.loaded.scheduler is not None:
            return self.submit(request).result()
        self.check(request.options)
        if request.window:
            window = prepare_window(self.loaded, request)
            with self.loaded.slots:
                return decode_windows(self.loaded, [window])[0]
        return self._decode_file(request, on_progress, on_segment)

    def submit(self, request: DecodeRequest) -> Future[Transcript]:
        """A window decode that runs while the caller goes on: queued on the batch scheduler
        (the features are computed here). Without a scheduler it runs now, and the future is
        already done."""
        if request.window and self.loaded.scheduler is not None:
            self.check(request.options)
            return self.loaded.scheduler.submit(prepare_window(self.loaded, request),
                                                deadline=request.deadline,
                                                background=request.background)
        future: Future[Transcript] = Future()
        try:
            future.set_result(self.decode(request))
        except Exception as exc:  # the caller hears of it when it reads the result
            future.set_exception(exc)
        return future

    def submit_all(self, requests: Sequence[DecodeRequest]) -> list[Future[Transcript]]:
        """Window decodes queued together (due at the first one's deadline, in the
        background if it is), so the first batch does not leave with the first window alone:
        a file's windows, side by side."""
        if self.loaded.scheduler is None or not requests:
            return [self.submit(request) for request in requests]
        for request in requests:
            self.check(request.options)
        return self.loaded.scheduler.submit_all(
            [prepare_window(self.loaded, request) for request in requests],
            deadline=requests[0].deadline, background=requests[0].background)

    def _decode_file(self, request: DecodeRequest,
                     on_progress: Callable[[float], None] | None,
                     on_segment: Callable[[Segment], None] | None = None) -> Transcript:
        opts = request.options
        language = opts.language
        if language is None and not self.loaded.multilingual:
            language = "en"  # faster-whisper would do the same, without detection work
        with self.loaded.slots:  # features, VAD and language detection run here
            segments, info = self.loaded.model.transcribe(
                request.audio,
                language=language,
                task=opts.task,
                beam_size=opts.beam_size,
                word_timestamps=opts.word_timestamps,
                vad_filter=opts.vad_filter,
                initial_prompt=opts.initial_prompt,
                prefix=opts.prefix,
                temperature=opts.temperature,
                condition_on_previous_text=opts.condition_on_previous_text,
                hotwords=opts.hotwords or None,
            )
        duration = len(request.audio) / SAMPLE_RATE
        out = []
        for seg in ordered(self._segments(segments), duration):
            out.append(seg)
            if on_segment:  # outside the slot: a slow consumer holds no decode worker
                on_segment(seg)
            if on_progress:
                on_progress(seg.end)
        if on_progress:
            on_progress(duration)
        return Transcript(info.language, info.language_probability, duration, tuple(out))


    def _segments(self, segments: Iterator[Any]) -> Iterator[Segment]:
        """faster-whisper's lazy segments as ours; each window is decoded in a slot."""
        while True:
            with self.loaded.slots:  # the lazy generator decodes the next window here
                seg = next(segments, None)
            if seg is None:
                return
            words = tuple(Word(w.start, w.end, w.word, w.probability) for w in seg.words or ())
            yield Segment(seg.id, seg.start, seg.end, seg.text, words, seg.avg_logprob,
                          seg.no_speech_prob, seg.compression_ratio, seg.temperature,
                          tuple(seg.tokens))


# What warm-up's windows carry in place of speech. The prompt stands for a stream's rolling
# context after about 25 s of speech (100 tokens), the forced prefix for the words a window
# generates (20 tokens): a decode's working memory grows with its tokens.
WARM_UP_SENTENCE = "the quick brown fox jumps over the lazy dog"  # 10 tokens
WARM_UP_PROMPT_REPEATS = 10
WARM_UP_PREFIX_REPEATS = 2


def warm_up(loaded: LoadedModel, workers: int) -> None:
    """A full batch per decode worker at once, so that every worker has started and holds
    the working memory of a full batch of common (10 s) windows before the first client
    arrives, rather than during someone's stream; memory.tune_heap keeps it for the decodes
    that follow. The windows queue at once, so each worker takes a full batch. Greedy, as
    streams' windows are in a batch (`stream_busy_beam_size`): at the utterances' beam 2 a
    batch needed so much more that glibc handed most of it back at the first client, who
    then paid it again.

    The windows carry a prompt and a forced prefix, as a stream's do: a decode's working
    memory grows with its tokens. With empty windows the clients paid that growth instead;
    with a full-length prompt the idle server held much more for nothing
    (`bench/memory.py --only-clients`; docs/benchmarks.md has the figures).
    """
    text = " ".join([WARM_UP_SENTENCE] * WARM_UP_PROMPT_REPEATS)
    options = TranscribeOptions(beam_size=1, word_timestamps=True, vad_filter=False,
                                temperature=0.0, initial_prompt=text,
                                prefix=" ".join([WARM_UP_SENTENCE] * WARM_UP_PREFIX_REPEATS))
    request = DecodeRequest(np.zeros(SAMPLE_RATE, np.float32), options, window=True)
    if loaded.scheduler is None:
        for _ in range(workers):
            Decoder(loaded).decode(request)
        return
    window = prepare_window(loaded, request)
    for future in loaded.scheduler.submit_all([window] * (workers * loaded.scheduler.max_batch)):
        future.result()
