"""Timestamps you can trust: segments and words in order, inside their audio, never overlapping.

A segment's end is Whisper's closing timestamp token, and a word's times come from the
cross-attention alignment: nothing in the model holds either inside the decoded audio or
before the next segment. With Intel MKL's arithmetic, tiny.en ended a segment of en_long 7 s
past the end of its 30 s chunk, over the next segment's start, and subtitles made from that
overlap. So every transcript is repaired here, once, by construction:

- a segment starts no earlier than the previous one ends, and no later than the audio's end;
- an escaping end is clamped to the next segment's start, or to the audio's end (a next
  start before this segment's own start is the one out of place, and moves up instead);
- its words are clamped into the segment, in order.

Text is never dropped: a segment squeezed to nothing keeps its words, at a zero-length span.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from .transcript import Segment, Word


def clamp_words(words: Iterable[Word], start: float, end: float) -> tuple[Word, ...]:
    """Words inside [start, end], each starting no earlier than the one before it ended."""
    out: list[Word] = []
    floor = start
    for word in words:
        word_start = min(max(word.start, floor), end)
        word_end = min(max(word.end, word_start), end)
        if (word_start, word_end) != (word.start, word.end):
            word = replace(word, start=word_start, end=word_end)
        out.append(word)
        floor = word_end
    return tuple(out)


def clamp_segment(segment: Segment, floor: float, ceiling: float) -> Segment:
    """`segment` inside [floor, ceiling], its words with it."""
    start = min(max(segment.start, floor), ceiling)
    end = min(max(segment.end, start), ceiling)
    words = clamp_words(segment.words, start, end)
    if (start, end) == (segment.start, segment.end) and words == segment.words:
        return segment
    return replace(segment, start=start, end=end, words=words)


def ordered(segments: Iterable[Segment], duration: float) -> Iterator[Segment]:
    """The segments of one decode of `duration` seconds of audio, repaired (see the module).

    Lazy, one segment behind: a segment is given out once the next one is known (or the
    decode has ended), because its end may have to be clamped to the next one's start.
    """
    floor = 0.0
    held: Segment | None = None
    for segment in segments:
        if held is not None:
            start = min(max(held.start, floor), duration)
            # A next start before this one's start is the one out of place: it moves up.
            ceiling = segment.start if segment.start >= start else duration
            held = clamp_segment(held, floor, min(duration, ceiling))
            floor = held.end
            yield held
        held = segment
    if held is not None:
        yield clamp_segment(held, floor, duration)
