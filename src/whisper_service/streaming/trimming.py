"""Where a live session cuts its buffer, so that every decode stays short.

Committed words still in the buffer are forced as the next decode's prefix, and CTranslate2
steps through a forced prefix token by token, as if it generated it, so a long prefix costs
nearly what writing it did. So once the buffer holds TRIM_FROM_S, it is cut at any committed
word that ends PREFIX_S before the last committed one, which costs less compute on
continuous speech than cutting only at sentence and segment ends, at the same WER (see
docs/benchmarks.md, bench/streaming.py). The forced prefix absorbs a cut a little off the
word boundary: its text is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audio import SAMPLE_RATE
from ..transcript import Word
from .buffer import SessionBuffer
from .policy import starts_inside_word

TRIM_FROM_S = 3.0
PREFIX_S = 1.5
SENTENCE_END = (".", "?", "!")


@dataclass(frozen=True)
class Cut:
    """Cut the buffer at `at` seconds (None: keep it whole), after `force` became final."""

    at: float | None
    force: tuple[Word, ...] = ()


def choose_cut(buffer: SessionBuffer, committed_end: float, boundaries: list[float],
               tentative: list[Word], max_buffer_s: float, min_chunk_s: float) -> Cut:
    """The latest safe cut: a committed sentence end, a committed segment end of the last
    decode, or a committed word PREFIX_S before the last. A buffer over its cap takes any
    committed word; one where nothing agreed for a whole buffer forces its older half's
    latest hypothesis final, ending where a word ends."""
    if buffer.seconds < min(TRIM_FROM_S, max_buffer_s / 2):
        return Cut(None)
    room = max_buffer_s - min_chunk_s  # the next decode adds more
    full = buffer.seconds > room
    committed = buffer.committed
    cuts = [w.end for w in committed if w.word.rstrip().endswith(SENTENCE_END)]
    cuts += [b for b in boundaries if b <= committed_end + 0.01]
    cuts += [w.end for w in committed if w.end <= committed_end - PREFIX_S]
    if full and committed:
        cuts.append(committed_end)
    cut = max(cuts, default=None)
    end = buffer.end / SAMPLE_RATE
    if not full or (cut is not None and end - cut <= room):
        return Cut(cut)
    at = end - max_buffer_s / 2
    older = [w for w in tentative if w.start < at]
    while len(older) < len(tentative) and starts_inside_word(tentative[len(older)]):
        older.append(tentative[len(older)])  # a final ends where a word ends
    return Cut(max([at] + [w.end for w in older]), tuple(older))
