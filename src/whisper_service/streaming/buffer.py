"""The session buffer: the audio a live decode sees, between the VAD and the decoder."""

from __future__ import annotations

import numpy as np

from ..audio import SAMPLE_RATE
from ..transcript import Word

PREROLL = SAMPLE_RATE  # audio kept before a VAD start, which arrives after the speech began


class SessionBuffer:
    """The audio of the utterance in progress, on the stream's sample timeline, with the
    committed words whose audio it still holds.

    Every decode of a stream re-reads this buffer, so its length is its cost: outside speech
    it keeps only `PREROLL`, and in speech it is cut behind committed words (`trimming`).
    The committed words still inside are forced as the next decode's prefix; when their
    audio leaves, they leave too (`forget`) and become prompt context.
    """

    def __init__(self) -> None:
        self.audio = np.zeros(0, dtype=np.float32)
        self.start = 0  # absolute sample of audio[0]
        self.decoded_until = 0  # absolute sample: the last decode saw the audio before it
        self.committed: list[Word] = []  # committed words whose audio is still here

    @property
    def end(self) -> int:
        """The absolute sample after the buffer's last."""
        return self.start + len(self.audio)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def extend(self, block: np.ndarray) -> None:
        self.audio = np.concatenate([self.audio, block])

    def window(self, end_sample: int | None = None) -> tuple[np.ndarray, float, int]:
        """The audio up to `end_sample` (default: all of it), its stream time, and the
        absolute sample where it stops."""
        stop = len(self.audio) if end_sample is None else end_sample - self.start
        return self.audio[:stop], self.start / SAMPLE_RATE, self.start + stop

    def prefix(self) -> str:
        """The committed words still here, which the next decode must start with.

        Without their final stop: after a forced "dog." beam search likes to end the text,
        after "dog" it writes the stop itself and goes on with the next sentence.
        """
        return "".join(w.word for w in self.committed).rstrip(".?!")

    def forget(self, until: float) -> str:
        """Let the committed words that end by `until` (seconds) go; returns their text."""
        gone = [w for w in self.committed if w.end <= until + 0.01]
        self.committed = self.committed[len(gone):]
        return "".join(w.word for w in gone)

    def drop_until(self, sample: int) -> None:
        """Drop the audio before the absolute `sample`."""
        drop = min(max(0, sample - self.start), len(self.audio))
        if drop:
            self.audio = self.audio[drop:].copy()
            self.start += drop
        self.decoded_until = max(self.decoded_until, self.start)

    def keep_preroll(self) -> None:
        """Outside speech: keep only the last `PREROLL`."""
        if len(self.audio) > PREROLL:
            self.drop_until(self.end - PREROLL)

    def clear(self) -> None:
        self.audio = np.zeros(0, dtype=np.float32)
