"""Utterance transcripts: each utterance decoded once more, whole, after its finals.

Finals are committed from short windows and never change, so a word committed early stays
wrong ("ill disposed" came out as "old supposed", twice). Once an utterance ends (VAD
silence, the end of the stream, or a buffer cut deep into a long utterance), the session
decodes its audio again as one window, with the context from before it and no forced prefix,
and sends an `utterance` message that supersedes the finals of that span for display. Its
text, not the finals', then becomes the rolling context.

`UtteranceRecorder` keeps what that second decode needs: the utterance's audio (at most
`UTTERANCE_MAX_S` plus the session's buffer) and the finals it covers. `SecondPass` submits
each closed utterance's decode, and turns the results, in order, into `utterance` events,
the transcript and the rolling context.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np

from ..audio import SAMPLE_RATE
from ..timeline import clamp_words
from ..transcript import WINDOW_SAMPLES, TranscribeOptions, Transcript, Word
from .events import StreamEvent
from .guards import loop_start, repetitive, trusted_words
from .redecode import Redecoder

# Whisper decodes at most 30 s in one window, so a longer utterance is closed at a buffer cut:
# at the first one after a sentence end once it spans LONG_UTTERANCE_S, at any past
# UTTERANCE_MAX_S.
LONG_UTTERANCE_S = 20.0
UTTERANCE_MAX_S = 28.0
SENTENCE_END = (".", "?", "!")
# An utterance shorter than `StreamOptions.utterance_min_s` goes on through a pause, unless
# the pause lasts this long: its text then comes this long after the speaker stopped.
HOLD_PAUSE_S = 2.0
# The second decode's window while the model is idle: Whisper's own 30 s, whatever the
# utterance's length. The steps' shorter padding reads real speech worse (bench/accuracy.py),
# but costs less compute and working memory: utterances take it while the model is busy.
UTTERANCE_PAD_S = 30.0
# The most committed text the second decode is prompted with (a static prompt comes whole): a
# window of several phrases needs less context than a step does, and base copied a longer
# prompt into its text or stopped early after it (bench/second_pass.py).
UTTERANCE_PROMPT_TOKENS = 80
# A second decode whose words stop this long before its utterance's end, where finals hold
# words, goes on with the rest: once, as the model stopping early twice is rare.
GO_ON_S = 1.5


@dataclass(frozen=True)
class Final:
    """One `final` message's span and words, as an utterance needs them."""

    start: float
    end: float
    words: tuple[Word, ...]


@dataclass(frozen=True)
class Utterance:
    """A closed utterance waiting for its second decode."""

    audio: np.ndarray
    offset: float  # stream time of audio[0]
    finals: tuple[Final, ...]
    prompt: tuple[int, ...] | None  # the rolling context from before the utterance
    context: tuple[int, int]  # positions of its words in the rolling context

    @property
    def start(self) -> float:
        return self.finals[0].start

    @property
    def end(self) -> float:
        return self.finals[-1].end

    @property
    def words(self) -> list[Word]:
        return [w for final in self.finals for w in final.words]


GAP_S = 1.0  # a stretch this long that the second decode left without words, but finals hold


def fill_gaps(words: list[Word], finals: list[Word]) -> list[Word]:
    """The second decode's words, with the finals' words wherever it wrote nothing for GAP_S
    or more: on a long window Whisper sometimes skips a sentence (tiny.en left out the first
    of a 25 s utterance of en_long), and those words were heard once already."""
    if not words:
        return list(finals)
    out: list[Word] = []
    edges = [(float("-inf"), None)] + [(w.start, w) for w in words]
    for (_, before), (start, word) in zip(edges, edges[1:]):
        gap_from = before.end if before is not None else finals[0].start if finals else start
        if start - gap_from >= GAP_S:
            out += [f for f in finals if f.start >= gap_from - 0.2 and f.end <= start + 0.2
                    and (before is None or f.start >= before.end - 0.2)]
        out.append(word)
    if finals and finals[-1].end - words[-1].end >= GAP_S:
        out += [f for f in finals if f.start >= words[-1].end - 0.2]
    return out


def word_count(words: list[Word] | tuple[Word, ...]) -> int:
    """Words as the rolling context counts them (it splits the joined text on spaces)."""
    return len("".join(w.word for w in words).split())


class UtteranceRecorder:
    """The audio and finals of the utterance in progress."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._start = 0  # absolute sample of the first chunk
        self._end = 0  # absolute sample after the last chunk
        self._finals: list[Final] = []
        self.context_start = 0  # rolling-context position of its first word

    def begin(self, audio: np.ndarray, audio_start: int, context_position: int) -> None:
        """A new utterance whose audio starts with `audio` (at sample `audio_start`)."""
        self._chunks = [audio.copy()]
        self._start, self._end = audio_start, audio_start + len(audio)
        self._finals = []
        self.context_start = context_position

    def extend(self, audio: np.ndarray, audio_start: int) -> None:
        """Record what `audio` (the session buffer, from `audio_start`) holds past our end."""
        new = audio[max(0, self._end - audio_start):]
        if len(new):
            self._chunks.append(new.copy())
            self._end = audio_start + len(audio)

    def committed(self, final: Final) -> None:
        self._finals.append(final)

    def span_s(self, until: float) -> float:
        return until - self._start / SAMPLE_RATE

    def due(self, cut: float) -> bool:
        """Whether a long utterance should close at the finals that ended before `cut`."""
        finals = [f for f in self._finals if f.end <= cut + 0.01]
        if not finals:
            return False
        span = self.span_s(finals[-1].end)
        last = finals[-1].words[-1].word.rstrip() if finals[-1].words else ""
        return span >= UTTERANCE_MAX_S or (span >= LONG_UTTERANCE_S and last.endswith(SENTENCE_END))

    def close(self, until: float, prompt: tuple[int, ...] | None, *,
              audio_end: int | None = None, context_stop: int | None = None) -> Utterance | None:
        """The finals that ended by `until` (seconds) and their audio, up to `audio_end` (a
        sample; default: the last final's end); the rest stays for the next utterance.
        `context_stop` defaults to the end of the closed finals' words."""
        finals = [f for f in self._finals if f.end <= until + 0.01]
        if not finals:
            return None
        stop = int(round(finals[-1].end * SAMPLE_RATE)) if audio_end is None else audio_end
        stop = min(stop, self._end)
        audio = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        cut = max(0, stop - self._start)
        if context_stop is None:
            context_stop = self.context_start + sum(word_count(f.words) for f in finals)
        utterance = Utterance(audio[:cut].copy(), self._start / SAMPLE_RATE, tuple(finals),
                              prompt, (self.context_start, context_stop))
        self._chunks = [audio[cut:].copy()]
        self._start += cut
        self._finals = self._finals[len(finals):]
        self.context_start = context_stop
        return utterance

    def clear(self) -> None:
        self._chunks, self._finals = [], []


class UtteranceDecode:
    """A closed utterance and its second decode, running on the model's workers: one window,
    or, where the model stopped early, that window and one of the rest (`go_on`)."""

    def __init__(self, utterance: Utterance, future: Future[Transcript] | None,
                 options: TranscribeOptions | None = None, pad_s: float | None = None) -> None:
        self.utterance, self.future, self.options, self.pad_s = utterance, future, options, pad_s
        self.parts: list[tuple[float, Transcript]] = []  # decodes taken, and where they start
        self._start = 0.0  # where the running decode's audio starts (s into the utterance)
        self._submitted, self._done, self._spent = time.perf_counter(), 0.0, 0.0
        if future is not None:
            future.add_done_callback(self._finished)

    def _finished(self, _: Future[Transcript]) -> None:
        self._done = time.perf_counter()

    def done(self) -> bool:
        return self.future is None or self.future.done()

    def take(self) -> None:
        """Move the done decode's result into `parts`. A failed one (the model was unloaded
        under it) leaves nothing: the finals then stand for its span."""
        future, self.future = self.future, None
        if future is None:
            return
        self._spent += max(0.0, self._done - self._submitted)
        try:
            self.parts.append((self._start, future.result()))
        except Exception:
            pass

    def rest(self) -> float | None:
        """Where speech the decodes left out starts (s into the utterance), if the model
        stopped more than GO_ON_S before the utterance's end and its finals hold words there:
        Whisper can end its text early on a long window, as `transcribe` would then seek on."""
        if not self.parts:
            return None
        start, last = self.parts[-1]
        words = [w for s in last.segments for w in s.words]
        stop = start + (words[-1].end if words else 0.0)
        spoken = any(w.start - self.utterance.offset > stop for w in self.utterance.words)
        duration = len(self.utterance.audio) / SAMPLE_RATE
        return stop if words and duration - stop > GO_ON_S and spoken else None

    def go_on(self, start: float, future: Future[Transcript]) -> None:
        self.future, self._start = future, start
        self._submitted, self._done = time.perf_counter(), 0.0
        future.add_done_callback(self._finished)

    def elapsed(self) -> float:
        """Submission to result, over its decodes: their time, plus any wait for a worker."""
        return self._spent


class SecondPass:
    """One session's utterance second pass, and the transcript it settles.

    The transcript is the utterances' texts, then the finals after the last utterance (with
    the second pass off, the finals alone). Each closed utterance's decode is submitted at
    once and runs beside the session's own decodes, so finals are not held back by it; the
    results are taken in order, and each moves the rolling-context positions after it.
    """

    def __init__(self, redecoder: Redecoder, enabled: bool, beam_size: int,
                 min_s: float = 0.0, busy_beam_size: int | None = None) -> None:
        self._redecoder, self.enabled, self._beam_size = redecoder, enabled, beam_size
        self._min_s, self._busy_beam_size = min_s, busy_beam_size or beam_size
        self.recorder = UtteranceRecorder()
        self.held_end: int | None = None  # where the held utterance's speech paused (a sample)
        self._queue: list[UtteranceDecode] = []  # closed utterances, oldest first
        self._settled: list[str] = []
        self._unsettled: list[str] = []  # finals not yet covered by an utterance
        self.count, self.seconds, self.fallbacks = 0, 0.0, 0

    @property
    def transcript(self) -> str:
        return " ".join(self._settled + self._unsettled)

    def final(self, final: Final, text: str) -> None:
        """A final was sent: it joins the utterance in progress and the transcript."""
        if self.enabled:
            self.recorder.committed(final)
            self._unsettled.append(text)
        else:
            self._settled.append(text)

    @property
    def held(self) -> bool:
        """An utterance paused short of `min_s` and goes on when speech resumes."""
        return self.held_end is not None

    def pause(self, end_sample: int) -> None:
        """Speech paused at `end_sample` (a VAD end). The utterance closes once it spans
        `min_s`; a shorter one is held, its audio recorded through the pause, and decoded
        with the speech that follows: on real speech a second decode of several seconds
        reads better than one of each phrase (bench/accuracy.py). While the model is busy,
        each pause closes one: a longer window holds a worker longer, and the finals of
        other sessions wait behind it (bench/capacity.py)."""
        if not self.enabled:
            return
        busy = self._redecoder.busy()
        if self._min_s <= 0 or busy \
                or self.recorder.span_s(end_sample / SAMPLE_RATE) >= self._min_s:
            self.close(float("inf"), audio_end=end_sample, busy=busy)
        else:
            self.held_end = end_sample

    def resume(self) -> None:
        """Speech resumed within the pause: the held utterance goes on."""
        self.held_end = None

    def expire(self, now: int) -> None:
        """Close the held utterance once its pause has lasted `HOLD_PAUSE_S` at sample `now`."""
        if self.held_end is not None and now - self.held_end >= HOLD_PAUSE_S * SAMPLE_RATE:
            self.release()

    def release(self) -> None:
        """Close the held utterance now (a long pause, a client's commit, the end)."""
        if self.held_end is not None:
            end, self.held_end = self.held_end, None
            self.close(float("inf"), audio_end=end)

    def close(self, until: float, audio_end: int | None = None,
              busy: bool | None = None) -> None:
        """Queue the finals that ended by `until` for their second decode, in the busy
        form if `busy` (default: whether the model is busy now). A caller that has already
        asked passes its answer, so one utterance is closed and decoded on one answer."""
        if not self.enabled:
            return
        self.held_end = None
        context = self._redecoder.context
        prompt = context.tokens(until=self.recorder.context_start,
                                recent=UTTERANCE_PROMPT_TOKENS)
        closed = self.recorder.close(until, prompt, audio_end=audio_end)
        if closed is None:
            return
        if not 0 < len(closed.audio) <= WINDOW_SAMPLES:
            self._queue.append(UtteranceDecode(closed, None))
            return
        if busy is None:
            busy = self._redecoder.busy()
        options = self._redecoder.options_for(
            closed.prompt, beam_size=self._busy_beam_size if busy else self._beam_size)
        pad = None if busy else UTTERANCE_PAD_S
        end = round(closed.offset * SAMPLE_RATE) + len(closed.audio)
        future = self._redecoder.submit(closed.audio, options, end, pad)
        self._queue.append(UtteranceDecode(closed, future, options, pad))

    @property
    def ready(self) -> bool:
        """The oldest closed utterance's running decode is done: `events` has work to do.
        It submits nothing (a server asks this on its event loop): where that decode stopped
        early, `events` submits the rest, and the utterance is ready again when that is."""
        return bool(self._queue) and self._queue[0].done()

    def _advance(self, pending: UtteranceDecode, wait: bool = False) -> bool:
        """Whether `pending`'s decodes are all done; each that is done is taken, and one that
        stopped early is followed by a decode of the rest, prompted with what it wrote."""
        while True:
            if not pending.done():
                if not wait:
                    return False
                with contextlib.suppress(Exception):  # `take` hears of it
                    pending.future.result()  # type: ignore[union-attr]
            gone_on = len(pending.parts) > 0  # one decode of the rest at most
            pending.take()
            start = None if gone_on or pending.options is None else pending.rest()
            if start is None:
                return True
            utterance = pending.utterance
            written = tuple(t for s in pending.parts[-1][1].segments for t in s.tokens)
            options = replace(pending.options,
                              initial_prompt=(utterance.prompt or ()) + written)
            audio = utterance.audio[int(start * SAMPLE_RATE):]
            end = round(utterance.offset * SAMPLE_RATE) + len(utterance.audio)
            pending.go_on(start, self._redecoder.submit(audio, options, end, pending.pad_s))

    @property
    def running(self) -> Future[Transcript] | None:
        """The oldest closed utterance's second decode while it runs."""
        oldest = self._queue[0] if self._queue else None
        return oldest.future if oldest is not None and not oldest.done() else None

    def events(self, language: str | None, wait: bool = False) -> list[StreamEvent]:
        """The `utterance` events of the closed utterances whose decode is done (with
        `wait`, of all of them), in order."""
        events = []
        while self._queue and self._advance(self._queue[0], wait):
            pending = self._queue.pop(0)
            event, stop = self._event(pending, language)
            shift = stop - pending.utterance.context[1]  # later positions moved with it
            for later in self._queue:
                start, end = later.utterance.context
                later.utterance = replace(later.utterance, context=(start + shift, end + shift))
            self.recorder.context_start += shift
            events.append(event)
        return events

    def _event(self, pending: UtteranceDecode,
               language: str | None) -> tuple[StreamEvent, int]:
        """The utterance's event (its decoded words, or its finals' where the decode is not
        trustworthy) and where its words now end in the rolling context."""
        utterance = pending.utterance
        finals = utterance.words
        words: list[Word] = []
        looped = False
        if pending.parts:
            elapsed = pending.elapsed()
            self.seconds += elapsed
            self._redecoder.timed(elapsed)
        for start, result in pending.parts:
            words += trusted_words(result, "", utterance.offset + start)[0]
            looped = looped or repetitive(result)
        self.count += 1
        # A second look that lost half the words, or looped, is worse than the finals.
        if looped or loop_start([w.word for w in words]) is not None \
                or word_count(words) < word_count(finals) / 2:
            words = finals
            self.fallbacks += 1
        words = fill_gaps(words, finals)
        text = "".join(w.word for w in words).strip()
        start, stop = utterance.context
        new_stop = self._redecoder.context.revise(start, stop, text)
        self._settled.append(text)
        del self._unsettled[:len(utterance.finals)]
        return StreamEvent("utterance", utterance.start, utterance.end, text,
                           clamp_words(words, utterance.start, utterance.end),
                           language), new_stop

    def cancel(self) -> None:
        """Withdraw the decodes still queued (callable from any thread)."""
        for pending in list(self._queue):
            if pending.future is not None:
                pending.future.cancel()

    def clear(self) -> None:
        self.recorder.clear()
        self._queue = []
        self.held_end = None
