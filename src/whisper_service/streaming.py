"""Streaming sessions: audio -> VAD -> session buffer -> decode -> LocalAgreement -> events.

A session owns only small, bounded state (a few seconds of audio, VAD state, its rolling
context, the policy's last hypothesis). The model is shared and reached through one call,
`Decoder.decode`, so a batching scheduler can later sit behind it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .audio import SAMPLE_RATE, as_float32
from .config import Settings, get_settings
from .context import RollingContext, with_hotwords
from .engine.decoder import Decoder
from .guards import credits_start, is_hallucination, loop_start
from .pacing import Pacing
from .policy import LocalAgreement, starts_inside_word
from .timeline import clamp_words
from .transcript import WINDOW_SAMPLES, DecodeRequest, Task, TranscribeOptions, Transcript, Word
from .utterances import (
    Final,
    UtteranceDecode,
    UtteranceRecorder,
    fill_gaps,
    word_count,
)
from .vad import SileroVAD, VADIterator, VadOptions, get_vad_model

if TYPE_CHECKING:
    from .engine.manager import ModelManager

BLOCK = 1600  # 100 ms: VAD and utterance ends run on fixed blocks, whatever the push size
PREROLL = SAMPLE_RATE  # audio kept before a VAD start, which arrives after the speech began
RECENT_WORDS = 18  # enough for the loop guard to see a 6-word phrase three times
# Committed words still in the buffer are forced as the next decode's prefix, and CTranslate2
# steps through a forced prefix token by token, as if it generated it, so a long prefix costs
# nearly what writing it did. So once the buffer holds TRIM_FROM_S, it is cut at any committed
# word that ends PREFIX_S before the last committed one, which costs less compute on
# continuous speech than cutting only at sentence and segment ends, at the same WER
# (bench/streaming.py). The forced prefix absorbs a cut a little off the word boundary: its
# text is given.
TRIM_FROM_S = 3.0
PREFIX_S = 1.5


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


@dataclass(frozen=True)
class StreamEvent:
    """`partial`: the uncommitted tail, replaced by the next one. `final`: never changes.
    `utterance`: a whole utterance decoded again, superseding the finals of its span.
    `speech_start` / `speech_end` (only with `StreamOptions.turn_events`): a turn's bounds,
    the end coming after the turn's last final."""

    type: Literal["partial", "final", "utterance", "speech_start", "speech_end"]
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    language: str | None = None

    def to_dict(self, words: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "start": round(self.start, 3),
                               "end": round(self.end, 3), "text": self.text}
        if self.type != "partial":
            out["language"] = self.language
            if words:
                out["words"] = [{"start": w.start, "end": w.end, "text": w.word.strip(),
                                 "probability": w.probability} for w in self.words]
        return out


class SessionCancelled(RuntimeError):
    """The session was cancelled (its client left) while it worked: its work is dropped."""


class StreamingSession:
    """One client's stream. `push` audio of any size; `end_of_stream` finalizes everything.

    `pacing` holds when the stream's audio arrived (a server records it as frames come off
    the socket; by default audio arrives when pushed). Each decode is due when its newest
    audio is (`Pacing.due`), and the batch scheduler serves the earliest due first: a client
    that sends ahead of real time is served with the capacity that is spare.
    """

    def __init__(self, decoder: Decoder, context: RollingContext,
                 options: StreamOptions | None = None, vad_model: SileroVAD | None = None,
                 on_decode: Callable[[float], None] | None = None,
                 pacing: Pacing | None = None) -> None:
        self.options = options or StreamOptions.from_settings()
        self._language = self.options.language
        self._detected: str | None = None
        decoder.check(self._transcribe_options(None))
        self._decoder, self.context, self._on_decode = decoder, context, on_decode
        self._vad = VADIterator(vad_model or get_vad_model(), self.options.vad)
        self._policy = LocalAgreement()
        self._pending = np.zeros(0, dtype=np.float32)
        self._audio = np.zeros(0, dtype=np.float32)  # the session buffer
        self._audio_start = 0  # absolute sample of _audio[0]
        self._in_speech = False
        self._decoded_until = 0
        self._boundaries: list[float] = []  # segment ends of the last decode: safe trim points
        self._in_buffer: list[Word] = []  # committed words whose audio is still buffered
        self._recent: list[str] = []  # the last committed words, for the loop guard
        self._last_final_end = 0.0
        self._partial = ""
        self._recorder = UtteranceRecorder()
        self._closed_utterances: list[UtteranceDecode] = []  # in their second decode, oldest first
        self._settled: list[str] = []  # the transcript: utterance texts (finals when off)
        self._unsettled: list[str] = []  # finals not yet covered by an utterance
        self._closed = False
        self._cancelled = False
        self._inflight: Future[Transcript] | None = None  # the decode this session waits for
        self.pacing = pacing or Pacing()
        self._pushed = 0  # samples pushed so far
        self.heard = 0  # samples decoded or passed by the VAD as silence (see `lateness`)
        self._release: Callable[[], None] | None = None
        self.stats = {"audio_s": 0.0, "decodes": 0, "decode_s": 0.0, "finals": 0, "loops": 0,
                      "utterances": 0, "utterance_s": 0.0, "utterance_fallbacks": 0}

    @classmethod
    def open(cls, manager: ModelManager, model: str, options: StreamOptions | None = None,
             **kwargs: Any) -> StreamingSession:
        """A session on a shared model; `close()` gives the model reference back."""
        options = options or StreamOptions.from_settings()
        loaded = manager.acquire(model)
        try:
            context = manager.init_context(model, with_hotwords(options.hotwords,
                                                                options.static_prompt),
                                           options.max_context_tokens)
            session = cls(Decoder(loaded), context, options, **kwargs)
        except BaseException:
            manager.release(loaded)
            raise
        session._release = lambda: manager.release(loaded)
        return session

    def cancel(self) -> None:
        """The client is gone (callable from any thread): a `push` in progress stops at its
        next block, and this session's decodes still queued are withdrawn, so no compute is
        spent on audio nobody will read. A decode already running finishes."""
        self._cancelled = True
        for future in [self._inflight, *(p.future for p in list(self._closed_utterances))]:
            if future is not None:
                future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def lateness(self) -> float:
        """How far the server is behind this client: seconds since the oldest audio the
        session has not heard became due (see `Pacing`); audio sent ahead of real time
        counts only once real time reaches it."""
        return 0.0 if self._cancelled else self.pacing.lateness(self.heard)

    def close(self) -> None:
        self._closed = True
        self._audio = self._pending = np.zeros(0, dtype=np.float32)
        self._recorder.clear()
        self._closed_utterances = []
        release, self._release = self._release, None
        if release:
            release()

    def __enter__(self) -> StreamingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def language(self) -> str | None:
        """The fixed or confidently detected language, else the last decode's guess."""
        return self._language or self._detected

    @property
    def _buffer_end(self) -> float:
        return (self._audio_start + len(self._audio)) / SAMPLE_RATE

    @property
    def lag_s(self) -> float:
        """Audio pushed but not yet heard (`heard`): how far the session is behind its client.
        Audio outside speech needs no decode, so only the VAD's block remainder counts there."""
        return (self._pushed - self.heard) / SAMPLE_RATE

    @property
    def transcript(self) -> str:
        """Everything committed so far: the utterances, then the finals after the last one."""
        return " ".join(self._settled + self._unsettled)

    @property
    def buffered_seconds(self) -> float:
        return (len(self._audio) + len(self._pending)) / SAMPLE_RATE

    def push(self, chunk: np.ndarray) -> list[StreamEvent]:
        """Feed 16 kHz mono PCM (float32 or int16) of any size.

        At most one re-decode step runs per push (plus one per utterance end, and one whenever
        the buffer reaches its cap), so a client that fell behind catches up by pushing
        everything it has queued at once instead of paying one decode per queued frame. A
        step decodes again only when the model wrote nothing after the committed words.
        Utterances closed by the last push are decoded first (see `decode_utterances`).
        """
        if self._closed:
            raise RuntimeError("session is closed")
        return self.decode_utterances() + self._feed(chunk, decode=True)

    def end_of_stream(self, tail: np.ndarray | None = None) -> list[StreamEvent]:
        """Finalize: flush the remainder through VAD and commit whatever is left. `tail`:
        audio that arrived last, heard without a re-decode step of its own (a server that
        is shutting down saves one decode per session)."""
        if self._closed:
            return []
        events = self._feed(tail, decode=False) if tail is not None and len(tail) else []
        return events + self.end_turn() + self.decode_utterances(wait=True)

    def end_turn(self) -> list[StreamEvent]:
        """End the utterance in progress here, as a VAD end would, and go on listening: what
        was heard so far becomes final (a client's manual commit)."""
        if self._closed:
            return []
        events = self._process(self._pending, last=True) if len(self._pending) else []
        self._pending = np.zeros(0, dtype=np.float32)
        for event in self._vad.flush():
            events += self._on_vad(event.kind, event.sample)
        if self._in_speech:
            events += self._end_utterance(self._audio_start + len(self._audio))
        self._note_heard()
        return events

    def discard(self) -> list[StreamEvent]:
        """Drop what the utterance in progress has not made final, without decoding it (a
        client's `clear`); the finals already sent stand, and listening goes on."""
        if self._closed or not self._in_speech:
            return []
        self._vad.flush()  # its end event would decode the rest: not wanted here
        self._forget_committed(float("inf"))
        self._close_utterance(float("inf"))
        end = self._audio_start + len(self._audio)
        self._in_speech = False
        self._policy.reset()
        self._drop_until(end)
        events = self._partial_event()
        if self.options.turn_events:
            events.append(StreamEvent("speech_end", end / SAMPLE_RATE, end / SAMPLE_RATE, ""))
        return events

    @property
    def utterances_due(self) -> bool:
        """The oldest closed utterance's second decode is done (see `decode_utterances`)."""
        return not self._cancelled and bool(self._closed_utterances) \
            and self._closed_utterances[0].done()

    @property
    def pending_utterance(self) -> Future[Transcript] | None:
        """The oldest closed utterance's second decode while it runs: a server can wait for
        it, and send the utterance when it is ready rather than with the next audio."""
        oldest = self._closed_utterances[0] if self._closed_utterances else None
        return oldest.future if oldest is not None and not oldest.done() else None

    def decode_utterances(self, wait: bool = False) -> list[StreamEvent]:
        """The `utterance` events of the closed utterances whose second decode is done (with
        `wait`, of all of them), in order. Each decode was submitted when its utterance
        closed and runs beside the session's own decodes, so finals are not held back by it.
        `push` calls this first; a server can also call it right after sending finals."""
        events = []
        while self._closed_utterances and (wait or self.utterances_due):
            pending = self._closed_utterances.pop(0)
            event, stop = self._utterance_event(pending)
            shift = stop - pending.utterance.context[1]  # later positions moved with it
            for later in self._closed_utterances:
                start, end = later.utterance.context
                later.utterance = replace(later.utterance, context=(start + shift, end + shift))
            self._recorder.context_start += shift
            events.append(event)
        return events

    # -- the data path, one block at a time -------------------------------------------------

    def _feed(self, chunk: np.ndarray, decode: bool) -> list[StreamEvent]:
        """Whole blocks through `_process`; a re-decode step is due only after the last."""
        self._check_cancelled()
        samples = as_float32(chunk)
        self.stats["audio_s"] += len(samples) / SAMPLE_RATE
        self._pushed += len(samples)
        self.pacing.catch_up(self._pushed)
        self._pending = np.concatenate([self._pending, samples])
        whole = len(self._pending) // BLOCK * BLOCK
        events: list[StreamEvent] = []
        for i in range(0, whole, BLOCK):
            self._check_cancelled()
            events += self._process(self._pending[i:i + BLOCK],
                                    last=decode and i + BLOCK == whole)
        self._pending = self._pending[whole:].copy()
        self.pacing.forget(self.heard)
        return events

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise SessionCancelled("the session was cancelled")

    def _process(self, block: np.ndarray, last: bool) -> list[StreamEvent]:
        self._audio = np.concatenate([self._audio, block])
        if self._in_speech and self.options.utterances:
            self._recorder.extend(self._audio, self._audio_start)
        events: list[StreamEvent] = []
        for event in self._vad(block):
            events += self._on_vad(event.kind, event.sample)
        end = self._audio_start + len(self._audio)
        if self._in_speech:
            step = self.options.min_chunk_s * self._decoder.step_factor()
            due = end - self._decoded_until >= step * SAMPLE_RATE
            full = len(self._audio) >= (self.options.max_buffer_s - self.options.min_chunk_s) \
                * SAMPLE_RATE
            if due and (last or full):
                events += self._step()
        elif len(self._audio) > PREROLL:
            self._drop_until(end - PREROLL)
        self._note_heard()
        return events

    def _note_heard(self) -> None:
        """One assignment, so that another thread reading `heard` sees a whole value."""
        end = self._audio_start + len(self._audio)
        self.heard = min(self._decoded_until, end) if self._in_speech else end

    def _on_vad(self, kind: str, sample: int) -> list[StreamEvent]:
        if kind == "start":
            self._drop_until(sample)
            self._in_speech, self._decoded_until = True, self._audio_start
            if self.options.utterances:
                self._recorder.begin(self._audio, self._audio_start, self.context.position)
            self._policy.reset()
            self._in_buffer, self._recent = [], []
            at = self._audio_start / SAMPLE_RATE
            return [StreamEvent("speech_start", at, at, "")] if self.options.turn_events else []
        return self._end_utterance(sample)

    def _step(self) -> list[StreamEvent]:
        """Re-decode the buffer, commit what two hypotheses agree on, trim if long."""
        events = self._finals(self._policy.update(self._decode()))
        events += self._trim()
        events += self._partial_event()
        return events

    def _end_utterance(self, end_sample: int) -> list[StreamEvent]:
        end_sample = min(end_sample, self._audio_start + len(self._audio))
        events: list[StreamEvent] = []
        if self._in_speech:
            for _ in range(3):
                if end_sample - self._decoded_until > 0.1 * SAMPLE_RATE:
                    words = self._decode(end_sample)
                else:  # the last decode already saw all of it; its uncommitted words remain
                    words = self._policy.tentative
                events += self._finals(self._policy.commit_all(words))
                heard = self._policy.last_committed_end
                if not words or end_sample / SAMPLE_RATE - heard <= 2 * self.options.min_chunk_s:
                    break
                # The model ended its text early on a long window: decode the rest.
                self._cut_buffer(heard)
                self._decoded_until = self._audio_start
            events += self._partial_event()
            self._forget_committed(float("inf"))
            self._close_utterance(float("inf"), audio_end=end_sample)
            if self.options.turn_events:
                at = end_sample / SAMPLE_RATE
                events.append(StreamEvent("speech_end", at, at, ""))
        self._in_speech = False
        self._policy.reset()
        self._drop_until(end_sample)
        return events

    def _decode(self, end_sample: int | None = None) -> list[Word]:
        """The words after the committed ones in the buffer (up to `end_sample`)."""
        prefix = self._prefix()
        words = self._decode_once(end_sample, prefix)
        done = self._policy.last_committed_end
        until = self._buffer_end if end_sample is None else end_sample / SAMPLE_RATE
        if prefix and not words and until - done > 2 * self.options.min_chunk_s:
            # Nothing usable came after the forced prefix (the model ended its text there, or
            # looped) though speech went on: decode again from the end of the committed
            # words, with no prefix.
            self._cut_buffer(done)
            words = self._decode_once(end_sample, self._prefix())
        return words

    def _prefix(self) -> str:
        """The committed words still in the buffer, which the next decode must start with.

        Without their final stop: after a forced "dog." beam search likes to end the text,
        after "dog" it writes the stop itself and goes on with the next sentence.
        """
        return "".join(w.word for w in self._in_buffer).rstrip(".?!")

    def _decode_once(self, end_sample: int | None, prefix: str) -> list[Word]:
        stop = len(self._audio) if end_sample is None else end_sample - self._audio_start
        audio, offset = self._audio[:stop], self._audio_start / SAMPLE_RATE
        options = self._transcribe_options(self.context.tokens(), prefix or None)
        started = time.perf_counter()
        result = self._wait(self._decoder.submit(DecodeRequest(
            audio, options, window=True, pad_s=self._pad_s,
            deadline=self.pacing.due(self._audio_start + stop))))
        elapsed = time.perf_counter() - started
        self.stats["decodes"] += 1
        self.stats["decode_s"] += elapsed
        if self._on_decode:
            self._on_decode(elapsed)
        self._decoded_until = self._audio_start + stop
        if self._language is None and self._decoder.loaded.multilingual \
                and result.language_probability >= 0.5:
            self._language = result.language  # detected once with confidence, then kept
        self._detected = result.language
        words, self._boundaries = self._segment_words(result, prefix, offset)
        new = _after(prefix, words)
        # A loop may repeat what is already committed, so the latest committed words count.
        recent = self._recent if loop_start(self._recent) is None else []
        cut = loop_start(recent + [w.word for w in new])
        if cut is not None:  # never commit a loop, and don't prompt with what may have caused it
            new = new[:max(0, cut - len(recent))]
            self.stats["loops"] += 1
            self.context.reset()
        return new

    def _wait(self, future: Future[Transcript]) -> Transcript:
        """The result of this session's decode, unless the session is cancelled meanwhile."""
        self._inflight = future
        try:
            if self._cancelled:
                future.cancel()
            return future.result()
        except CancelledError:
            raise SessionCancelled("the session was cancelled") from None
        finally:
            self._inflight = None

    @property
    def _pad_s(self) -> float | None:
        """The window padding for this session's decodes (None: the model's `window_pad_s`).
        A static prompt (names, terms) is followed closely only on Whisper's full 30 s
        window: with 10-25 s windows tiny.en often misspelt "Katelynn Smyth"
        (test_context_improves_consistency_across_segments), with 30 s every time."""
        return 30.0 if self.context.static_prompt else None

    def _segment_words(self, result: Transcript, prefix: str,
                       offset: float) -> tuple[list[Word], list[float]]:
        """A decode's words in stream time, without invented text, and its segment ends."""
        words: list[Word] = []
        boundaries: list[float] = []
        forced = _letters(prefix)
        for seg in result.segments:
            seg_words = [replace(w, start=offset + w.start, end=offset + w.end)
                         for w in seg.words]
            # A segment holding (part of) the forced prefix is judged by its new text only.
            fresh = _skip(forced, seg_words)
            forced -= sum(_letters(w.word) for w in seg_words)
            keep = len(seg_words)
            credits = credits_start([w.word for w in fresh])
            if credits is not None:
                keep -= len(fresh) - credits
            elif fresh and is_hallucination(replace(seg, text="".join(w.word for w in fresh))):
                keep -= len(fresh)
            if not keep:
                continue
            words += seg_words[:keep]
            boundaries.append(offset + seg.end)
        return words, boundaries

    def _transcribe_options(self, prompt: tuple[int, ...] | None,
                            prefix: str | None = None) -> TranscribeOptions:
        return TranscribeOptions(
            language=self._language,
            task=self.options.task, beam_size=self.options.beam_size, word_timestamps=True,
            vad_filter=False, initial_prompt=prompt, prefix=prefix,
            condition_on_previous_text=False,
            temperature=0.0)  # fallback re-decodes cost more than the loop guard saves

    def _finals(self, words: list[Word]) -> list[StreamEvent]:
        if not words:
            return []
        self._in_buffer += words
        self._recent = (self._recent + [w.word for w in words])[-RECENT_WORDS:]
        start = max(words[0].start, self._last_final_end)
        end = max(words[-1].end, start)
        self._last_final_end = end
        self.stats["finals"] += 1
        text = "".join(w.word for w in words).strip()
        words = list(clamp_words(words, start, end))
        if self.options.utterances:
            self._recorder.committed(Final(start, end, tuple(words)))
            self._unsettled.append(text)
        else:
            self._settled.append(text)
        return [StreamEvent("final", start, end, text, tuple(words),
                            self._language or self._detected)]

    def _partial_event(self) -> list[StreamEvent]:
        tail = self._policy.tentative
        text = "".join(w.word for w in tail).strip()
        if text == self._partial:
            return []
        self._partial = text
        if not tail:
            return [StreamEvent("partial", self._last_final_end, self._last_final_end, "")]
        return [StreamEvent("partial", max(tail[0].start, self._last_final_end), tail[-1].end,
                            text)]

    def _trim(self) -> list[StreamEvent]:
        """Keep decode cost bounded: cut the buffer at a committed sentence or segment end, or
        where it leaves only PREFIX_S of committed words to force again."""
        buffered = len(self._audio) / SAMPLE_RATE
        events: list[StreamEvent] = []
        if buffered < min(TRIM_FROM_S, self.options.max_buffer_s / 2):
            return events
        room = self.options.max_buffer_s - self.options.min_chunk_s  # the next decode adds more
        full = buffered > room
        end = self._buffer_end
        done = self._policy.last_committed_end
        cuts = [w.end for w in self._in_buffer if w.word.rstrip().endswith((".", "?", "!"))]
        cuts += [b for b in self._boundaries if b <= done + 0.01]
        cuts += [w.end for w in self._in_buffer if w.end <= done - PREFIX_S]
        if full and self._in_buffer:
            cuts.append(done)  # over the cap: any committed word will do
        cut = max(cuts, default=None)
        if full and (cut is None or end - cut > room):
            # Nothing agreed for a whole buffer: the latest hypothesis is the best there is for
            # its older half, so that half becomes final and leaves the buffer.
            cut = end - self.options.max_buffer_s / 2
            tentative = self._policy.tentative
            older = [w for w in tentative if w.start < cut]
            while len(older) < len(tentative) and starts_inside_word(tentative[len(older)]):
                older.append(tentative[len(older)])  # a final ends where a word ends
            cut = max([cut] + [w.end for w in older])
            if older:
                events = self._finals(self._policy.commit_all(older))
                # The hypothesis for the rest went with it: that audio counts as undecoded.
                self._decoded_until = int(cut * SAMPLE_RATE)
        if cut is not None and cut * SAMPLE_RATE > self._audio_start:
            self._cut_buffer(cut)
        return events

    def _cut_buffer(self, at: float) -> None:
        """Drop the audio before `at` seconds; committed words leaving with it become context.
        A long utterance closes here once its finals before the cut are long enough."""
        self._forget_committed(at)
        self._drop_until(int(at * SAMPLE_RATE))
        if self._in_speech and self.options.utterances and self._recorder.due(at):
            self._close_utterance(at)

    # -- utterances ---------------------------------------------------------------------------

    def _close_utterance(self, until: float, audio_end: int | None = None) -> None:
        """Queue the finals that ended by `until` for their second decode (an utterance)."""
        if not self.options.utterances:
            return
        prompt = self.context.tokens(until=self._recorder.context_start)
        closed = self._recorder.close(until, prompt, audio_end=audio_end)
        if closed is None:
            return
        future = None
        if 0 < len(closed.audio) <= WINDOW_SAMPLES:
            options = replace(self._transcribe_options(closed.prompt),
                              beam_size=self.options.utterance_beam_size)
            end = round(closed.offset * SAMPLE_RATE) + len(closed.audio)
            future = self._decoder.submit(DecodeRequest(closed.audio, options, window=True,
                                                        pad_s=self._pad_s,
                                                        deadline=self.pacing.due(end)))
        self._closed_utterances.append(UtteranceDecode(closed, future))

    def _utterance_event(self, pending: UtteranceDecode) -> tuple[StreamEvent, int]:
        """The utterance's event (its decoded words, or its finals' where the decode is not
        trustworthy) and where its words now end in the rolling context."""
        utterance = pending.utterance
        finals = utterance.words
        words: list[Word] = []
        result = pending.result()
        if result is not None:
            elapsed = pending.elapsed()
            self.stats["utterance_s"] += elapsed
            if self._on_decode:
                self._on_decode(elapsed)
            words, _ = self._segment_words(result, "", utterance.offset)
        self.stats["utterances"] += 1
        # A second look that lost half the words, or looped, is worse than the finals.
        if loop_start([w.word for w in words]) is not None \
                or word_count(words) < word_count(finals) / 2:
            words = finals
            self.stats["utterance_fallbacks"] += 1
        words = fill_gaps(words, finals)
        text = "".join(w.word for w in words).strip()
        start, stop = utterance.context
        new_stop = self.context.revise(start, stop, text)
        self._settled.append(text)
        del self._unsettled[:len(utterance.finals)]
        return StreamEvent("utterance", utterance.start, utterance.end, text,
                           clamp_words(words, utterance.start, utterance.end),
                           self._language or self._detected), new_stop

    def _forget_committed(self, until: float) -> None:
        """Committed words whose audio leaves the buffer become prompt context."""
        gone = [w for w in self._in_buffer if w.end <= until + 0.01]
        if gone:
            self.context.append("".join(w.word for w in gone))
            self._in_buffer = self._in_buffer[len(gone):]

    def _drop_until(self, sample: int) -> None:
        drop = min(max(0, sample - self._audio_start), len(self._audio))
        if drop:
            self._audio = self._audio[drop:].copy()
            self._audio_start += drop
        self._decoded_until = max(self._decoded_until, self._audio_start)


def _letters(text: str) -> int:
    return len("".join(text.split()))


def _after(prefix: str, words: list[Word]) -> list[Word]:
    """The words a decode added after its forced prefix (the prefix's words come back too)."""
    return _skip(_letters(prefix), words)


def _skip(letters: int, words: list[Word]) -> list[Word]:
    """The words after the first `letters` non-space characters."""
    for i, word in enumerate(words):
        if letters <= 0:
            return words[i:]
        letters -= _letters(word.word)
    return []


ReplayMode = Literal["simulated", "realtime", "fast"]


def replay(session: StreamingSession, audio: np.ndarray, mode: ReplayMode = "simulated",
           chunk_s: float = 0.1) -> Iterator[tuple[float, StreamEvent]]:
    """Push a recording through a session as a live client would, yielding (emitted_at, event).

    `simulated` (computation-aware): audio becomes available at its own time, and the clock
    also advances by the compute actually spent, so latencies include compute without waiting
    in real time. `realtime` paces pushes by the wall clock; `fast` pushes without pause. In
    the first two, the chunks that arrived during a decode are pushed together, as the server
    does with frames that queued up on its socket.
    """
    step = max(1, int(chunk_s * SAMPLE_RATE))
    clock, started = 0.0, time.perf_counter()
    arrivals = [min(i + step, len(audio)) / SAMPLE_RATE for i in range(0, len(audio), step)]
    i = 0
    while i <= len(arrivals):
        if i == len(arrivals):
            chunk, available_at = None, len(audio) / SAMPLE_RATE
            i += 1
        else:
            if mode == "realtime":
                time.sleep(max(0.0, arrivals[i] - (time.perf_counter() - started)))
            now = clock if mode == "simulated" else time.perf_counter() - started
            j = i + 1
            while mode != "fast" and j < len(arrivals) and arrivals[j] <= now:
                j += 1
            chunk, available_at = audio[i * step:j * step], arrivals[j - 1]
            i = j
        spent = time.perf_counter()
        events = session.push(chunk) if chunk is not None else session.end_of_stream()
        spent = time.perf_counter() - spent
        clock = max(clock, available_at) + spent
        emitted_at = clock if mode == "simulated" else time.perf_counter() - started
        for event in events:
            yield emitted_at, event
        if session.utterances_due:  # as the server does: after the finals that closed them
            spent = time.perf_counter()
            events = session.decode_utterances()
            clock += time.perf_counter() - spent
            emitted_at = clock if mode == "simulated" else time.perf_counter() - started
            for event in events:
                yield emitted_at, event
