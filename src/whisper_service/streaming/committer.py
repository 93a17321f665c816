"""What of the speech in progress becomes final: the decode -> policy -> messages steps."""

from __future__ import annotations

from ..audio import SAMPLE_RATE
from ..timeline import clamp_words
from ..transcript import Word
from .buffer import SessionBuffer
from .events import StreamEvent
from .options import StreamOptions
from .policy import LocalAgreement
from .redecode import Redecoder
from .trimming import choose_cut
from .utterances import Final, SecondPass


class Committer:
    """Commits one session's speech, an utterance at a time.

    Each `step` decodes the session buffer again (`Redecoder`); LocalAgreement commits what
    two hypotheses agree on, and the buffer is cut behind the committed words (`trimming`),
    so every decode stays short. An utterance's `end` commits the rest. It sends `final`
    and `partial` events, and hands each final, and each pause, to the second pass.
    """

    def __init__(self, buffer: SessionBuffer, redecoder: Redecoder, second: SecondPass,
                 options: StreamOptions) -> None:
        self._buffer, self._decode, self._second, self.options = buffer, redecoder, second, options
        self._policy = LocalAgreement(options.unsure_probability)
        self._last_final_end = 0.0
        self._partial = ""
        self.finals_sent = 0

    def begin(self) -> None:
        """Speech started: nothing of it is committed yet."""
        self._policy.reset()
        self._buffer.committed, self._decode.recent = [], []

    def step(self) -> list[StreamEvent]:
        """Re-decode the buffer, commit what two hypotheses agree on, trim if long."""
        events = self._finals(self._policy.update(self._redecode(), self._decode.short_step))
        events += self._trim()
        events += self._partial_event()
        return events

    def end(self, end_sample: int) -> list[StreamEvent]:
        """The utterance ended at `end_sample`: commit all of it, and close it."""
        buffer = self._buffer
        events: list[StreamEvent] = []
        for _ in range(3):
            if end_sample - buffer.decoded_until > 0.1 * SAMPLE_RATE:
                words = self._redecode(end_sample)
            else:  # the last decode already saw all of it; its uncommitted words remain
                words = self._policy.tentative
            events += self._finals(self._policy.commit_all(words))
            heard = self._policy.last_committed_end
            if not words or end_sample / SAMPLE_RATE - heard <= 2 * self.options.min_chunk_s:
                break
            # The model ended its text early on a long window: decode the rest.
            self._cut_buffer(heard)
            buffer.decoded_until = buffer.start
        events += self._partial_event()
        self._forget(float("inf"))
        self._second.pause(end_sample)
        self._policy.reset()
        return events

    def discard(self) -> list[StreamEvent]:
        """Drop what is not final yet, undecoded; the finals already sent stand."""
        self._forget(float("inf"))
        self._second.close(float("inf"))
        self._policy.reset()
        return self._partial_event()

    def _redecode(self, end_sample: int | None = None) -> list[Word]:
        """The words after the committed ones in the buffer (up to `end_sample`)."""
        buffer = self._buffer
        prefix = buffer.prefix()
        words = self._decode_window(end_sample, prefix)
        done = self._policy.last_committed_end
        until = (buffer.end if end_sample is None else end_sample) / SAMPLE_RATE
        if prefix and not words and until - done > 2 * self.options.min_chunk_s:
            # Nothing usable came after the forced prefix (the model ended its text there, or
            # looped) though speech went on: decode again from the end of the committed
            # words, with no prefix.
            self._cut_buffer(done)
            words = self._decode_window(end_sample, buffer.prefix())
        return words

    def _decode_window(self, end_sample: int | None, prefix: str) -> list[Word]:
        audio, offset, stop = self._buffer.window(end_sample)
        words = self._decode.decode(audio, offset, stop, prefix)
        self._buffer.decoded_until = stop
        return words

    def _finals(self, words: list[Word]) -> list[StreamEvent]:
        if not words:
            return []
        self._buffer.committed += words
        self._decode.committed(words)
        start = max(words[0].start, self._last_final_end)
        end = max(words[-1].end, start)
        self._last_final_end = end
        self.finals_sent += 1
        text = "".join(w.word for w in words).strip()
        words = list(clamp_words(words, start, end))
        self._second.final(Final(start, end, tuple(words)), text)
        return [StreamEvent("final", start, end, text, tuple(words),
                            self._decode.language or self._decode.detected)]

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
        """Keep decode cost bounded: cut the buffer where `trimming.choose_cut` says."""
        cut = choose_cut(self._buffer, self._policy.last_committed_end, self._decode.boundaries,
                         self._policy.tentative, self.options.max_buffer_s,
                         self.options.min_chunk_s)
        events: list[StreamEvent] = []
        if cut.force and cut.at is not None:
            events = self._finals(self._policy.commit_all(list(cut.force)))
            # The hypothesis for the rest went with it: that audio counts as undecoded.
            self._buffer.decoded_until = int(cut.at * SAMPLE_RATE)
        if cut.at is not None and cut.at * SAMPLE_RATE > self._buffer.start:
            self._cut_buffer(cut.at)
        return events

    def _forget(self, until: float) -> None:
        """Committed words whose audio leaves the buffer become prompt context."""
        gone = self._buffer.forget(until)
        if gone:
            self._decode.context.append(gone)

    def _cut_buffer(self, at: float) -> None:
        """Drop the audio before `at` seconds; committed words leaving with it become context.
        A long utterance closes here once its finals before the cut are long enough."""
        self._forget(at)
        self._buffer.drop_until(int(at * SAMPLE_RATE))
        if self._second.enabled and self._second.recorder.due(at):
            self._second.close(at)
