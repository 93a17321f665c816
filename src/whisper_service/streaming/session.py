"""A streaming session: audio -> VAD -> session buffer -> decode -> LocalAgreement -> events.

A session owns only small, bounded state (a few seconds of audio, VAD state, its rolling
context, the policy's last hypothesis). The model is shared and reached through one call,
`Decoder.submit`, behind which the batch scheduler serves every session.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..audio import SAMPLE_RATE, as_float32
from ..context import RollingContext, with_hotwords
from ..engine.decoder import Decoder
from ..transcript import Transcript
from ..vad import SileroVAD, VADIterator, get_vad_model
from .buffer import SessionBuffer
from .committer import Committer
from .events import StreamEvent
from .options import StreamOptions
from .pacing import Pacing
from .redecode import Redecoder, SessionCancelled
from .utterances import SecondPass

if TYPE_CHECKING:
    from ..engine.manager import ModelManager

BLOCK = 1600  # 100 ms: VAD and utterance ends run on fixed blocks, whatever the push size


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
        self.context = context
        self.pacing = pacing or Pacing()
        self._decode = Redecoder(decoder, context, self.options, self.pacing, on_decode)
        self._second = SecondPass(self._decode, self.options.utterances,
                                  self.options.utterance_beam_size,
                                  self.options.utterance_min_s,
                                  self.options.utterance_busy_beam_size)
        self._vad = VADIterator(vad_model or get_vad_model(), self.options.vad)
        self._buffer = SessionBuffer()
        self._commit = Committer(self._buffer, self._decode, self._second, self.options)
        self._block_rest = np.zeros(0, dtype=np.float32)  # under one BLOCK, not yet heard
        self._in_speech = False
        self._closed = False
        self._pushed = 0  # samples pushed so far
        self.heard = 0  # samples decoded or passed by the VAD as silence (see `lateness`)
        self._release: Callable[[], None] | None = None

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
        self._decode.cancel()
        self._second.cancel()

    @property
    def cancelled(self) -> bool:
        return self._decode.cancelled

    def lateness(self) -> float:
        """How far the server is behind this client: seconds since the oldest audio the
        session has not heard became due (see `Pacing`); audio sent ahead of real time
        counts only once real time reaches it."""
        return 0.0 if self.cancelled else self.pacing.lateness(self.heard)

    def close(self) -> None:
        self._closed = True
        self._buffer.clear()
        self._block_rest = np.zeros(0, dtype=np.float32)
        self._second.clear()
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
        return self._decode.language or self._decode.detected

    @property
    def lag_s(self) -> float:
        """Audio pushed but not yet heard (`heard`): how far the session is behind its client.
        Audio outside speech needs no decode, so only the VAD's block remainder counts there."""
        return (self._pushed - self.heard) / SAMPLE_RATE

    @property
    def transcript(self) -> str:
        """Everything committed so far: the utterances, then the finals after the last one."""
        return self._second.transcript

    @property
    def buffered_seconds(self) -> float:
        return self._buffer.seconds + len(self._block_rest) / SAMPLE_RATE

    @property
    def stats(self) -> dict[str, float]:
        """What the session did: audio pushed, decodes and their seconds, finals, loops cut,
        utterances decoded again and those whose finals stood instead."""
        d, s = self._decode, self._second
        return {"audio_s": self._pushed / SAMPLE_RATE, "decodes": d.decodes,
                "decode_s": d.decode_s, "finals": self._commit.finals_sent, "loops": d.loops,
                "utterances": s.count, "utterance_s": s.seconds,
                "utterance_fallbacks": s.fallbacks}

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
        rest, self._block_rest = self._block_rest, np.zeros(0, dtype=np.float32)
        events = self._process(rest, last=True) if len(rest) else []
        for event in self._vad.flush():
            events += self._on_vad(event.kind, event.sample)
        if self._in_speech:
            events += self._end_utterance(self._buffer.end)
        self._second.release()
        self._note_heard()
        return events

    def discard(self) -> list[StreamEvent]:
        """Drop what the utterance in progress has not made final, without decoding it (a
        client's `clear`); the finals already sent stand, and listening goes on."""
        if self._closed or not self._in_speech:
            return []
        self._vad.flush()  # its end event would decode the rest: not wanted here
        events = self._commit.discard()
        end = self._buffer.end
        self._in_speech = False
        self._buffer.drop_until(end)
        return events + self._turn_event("speech_end", end)

    @property
    def utterances_due(self) -> bool:
        """The oldest utterance's running decode is done (see `SecondPass.ready`)."""
        return not self.cancelled and self._second.ready

    @property
    def pending_utterance(self) -> Future[Transcript] | None:
        """The oldest closed utterance's second decode while it runs: a server can wait for
        it, and send the utterance when it is ready rather than with the next audio."""
        return self._second.running

    def decode_utterances(self, wait: bool = False) -> list[StreamEvent]:
        """The `utterance` events of the closed utterances whose second decode is done (with
        `wait`, of all of them), in order. `push` calls this first; a server can also call
        it right after sending finals."""
        return self._second.events(self.language, wait)

    # -- the data path, one block at a time -------------------------------------------------

    def _feed(self, chunk: np.ndarray, decode: bool) -> list[StreamEvent]:
        """Whole blocks through `_process`; a re-decode step is due only after the last."""
        self._check_cancelled()
        samples = as_float32(chunk)
        self._pushed += len(samples)
        self.pacing.catch_up(self._pushed)
        pending = np.concatenate([self._block_rest, samples])
        whole = len(pending) // BLOCK * BLOCK
        events: list[StreamEvent] = []
        for i in range(0, whole, BLOCK):
            self._check_cancelled()
            events += self._process(pending[i:i + BLOCK], last=decode and i + BLOCK == whole)
        self._block_rest = pending[whole:].copy()
        self.pacing.forget(self.heard)
        return events

    def _check_cancelled(self) -> None:
        if self.cancelled:
            raise SessionCancelled("the session was cancelled")

    def _process(self, block: np.ndarray, last: bool) -> list[StreamEvent]:
        buffer = self._buffer
        buffer.extend(block)
        second = self._second
        if (self._in_speech or second.held) and second.enabled:
            second.recorder.extend(buffer.audio, buffer.start)
        events: list[StreamEvent] = []
        for event in self._vad(block):
            events += self._on_vad(event.kind, event.sample)
        if self._in_speech:
            full = buffer.seconds >= self.options.max_buffer_s - self.options.min_chunk_s
            # The step's length is asked for only where a step may run (it reads the load).
            if (last or full) and (buffer.end - buffer.decoded_until
                                   >= self._decode.step_s() * SAMPLE_RATE):
                events += self._commit.step()
        else:
            second.expire(buffer.end)
            buffer.keep_preroll()
        self._note_heard()
        return events

    def _note_heard(self) -> None:
        """One assignment, so that another thread reading `heard` sees a whole value."""
        end = self._buffer.end
        self.heard = min(self._buffer.decoded_until, end) if self._in_speech else end

    def _on_vad(self, kind: str, sample: int) -> list[StreamEvent]:
        if kind != "start":
            return self._end_utterance(sample)
        buffer = self._buffer
        buffer.drop_until(sample)
        self._in_speech, buffer.decoded_until = True, buffer.start
        if self._second.held:
            self._second.resume()
        elif self._second.enabled:
            self._second.recorder.begin(buffer.audio, buffer.start, self.context.position)
        self._commit.begin()
        return self._turn_event("speech_start", buffer.start)

    def _turn_event(self, kind: Literal["speech_start", "speech_end"],
                    sample: int) -> list[StreamEvent]:
        at = sample / SAMPLE_RATE
        return [StreamEvent(kind, at, at, "")] if self.options.turn_events else []

    def _end_utterance(self, end_sample: int) -> list[StreamEvent]:
        end_sample = min(end_sample, self._buffer.end)
        events: list[StreamEvent] = []
        if self._in_speech:
            events = self._commit.end(end_sample) + self._turn_event("speech_end", end_sample)
        self._in_speech = False
        self._buffer.drop_until(end_sample)
        return events
