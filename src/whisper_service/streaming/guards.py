"""Guards against Whisper's known failure modes in streaming: loops and invented text, and
the forced prefix's words coming back in a decode's output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..engine.windows import MAX_COMPRESSION_RATIO
from ..text import normalize
from ..transcript import Segment, Transcript, Word

# Phrases Whisper is known to produce from silence or noise (its training data's credits and
# outros). Credits never occur in live speech, so they always go; the short courtesies are
# real speech too, so they go only when the model itself was unsure.
_CREDITS = ("subtitles by", "amara org", "captions by", "transcribed by", "please subscribe",
            "like and subscribe", "thanks for watching", "thank you for watching",
            "don't forget to subscribe")
_COURTESIES = {"thank you", "thanks", "you", "bye", "bye bye", "thank you very much",
               "thank you so much", "okay", "so", "oh", "uh", "um", "hmm"}


def is_hallucination(segment: Segment) -> bool:
    text = normalize(segment.text)
    if not text:
        return True
    if any(c in text for c in _CREDITS):
        return True
    unsure = segment.no_speech_prob > 0.3 or segment.avg_logprob < -0.8
    if text in _COURTESIES and unsure:
        return True
    # Whisper's own silence rule: likely no speech and a low-confidence decode.
    return segment.no_speech_prob > 0.6 and segment.avg_logprob < -1.0


def credits_start(words: Sequence[str]) -> int | None:
    """Index of the word where a credits phrase begins, else None."""
    norm = [normalize(w) for w in words]
    for i in range(len(norm)):
        tail = " ".join(w for w in norm[i:] if w)
        if norm[i] and any(tail.startswith(c) for c in _CREDITS):
            return i
    return None


def loop_start(words: Sequence[str], max_n: int = 16, min_repeats: int = 3) -> int | None:
    """Index where an n-gram starts repeating back-to-back to the very end, else None.

    A stuck model repeats until its window ends; a speaker who repeats ("thank you, thank
    you, thank you") goes on to other words. Single words need more repeats ("no, no, no" is
    speech); longer n-grams fewer, and a whole phrase of LONG_PHRASE words or more twice is
    already a loop (tiny.en wrote en_passage's last sentence twice on a short window). The
    returned cut keeps the first occurrence.
    """
    norm = [normalize(w) for w in words]
    for n in range(1, max_n + 1):
        needed = max(min_repeats, 5) if n == 1 else 2 if n >= LONG_PHRASE else min_repeats
        for i in range(0, len(norm) - n * needed + 1):
            gram = norm[i:i + n]
            if not all(gram):
                continue
            if all(norm[i + k * n:i + (k + 1) * n] == gram for k in range(1, needed)) \
                    and _repeats_to_end(norm[i:], gram):
                return i + n
    return None


LONG_PHRASE = 5


def _repeats_to_end(words: list[str], gram: list[str]) -> bool:
    """`words` is `gram` over and over, the last time possibly cut short."""
    return all(w == gram[k % len(gram)] for k, w in enumerate(words))



def repetitive(result: Transcript) -> bool:
    """Whether a decode's text repeats itself as Whisper's own test sees it: it compresses
    (gzip) more than `MAX_COMPRESSION_RATIO`. It catches loops whose repeats vary a little
    ("I got her 3% I got her 1% 5% I got her 3% ..."), which `loop_start` does not, as it
    looks for exact back-to-back repeats; a file decode re-decodes such a window hotter, a
    stream's second pass keeps its finals instead."""
    return any(s.compression_ratio > MAX_COMPRESSION_RATIO for s in result.segments)


def trusted_words(result: Transcript, prefix: str,
                  offset: float) -> tuple[list[Word], list[float]]:
    """A decode's words in stream time (`offset`: the stream time of its audio's start),
    without credits or invented segments, and the ends of the segments kept.

    A segment holding (part of) the forced `prefix` is judged by its new words only: the
    prefix is the listener's own text, and no evidence of invention.
    """
    words: list[Word] = []
    boundaries: list[float] = []
    forced = _letters(prefix)
    for seg in result.segments:
        seg_words = [replace(w, start=offset + w.start, end=offset + w.end) for w in seg.words]
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


def words_after(prefix: str, words: list[Word]) -> list[Word]:
    """The words a decode added after its forced prefix (the prefix's words come back too)."""
    return _skip(_letters(prefix), words)


def _letters(text: str) -> int:
    return len("".join(text.split()))


def _skip(letters: int, words: list[Word]) -> list[Word]:
    """The words after the first `letters` non-space characters."""
    for i, word in enumerate(words):
        if letters <= 0:
            return words[i:]
        letters -= _letters(word.word)
    return []
