"""Long files, a chunk at a time: memory bounded by a chunk, not by the file.

`iter_audio` decodes the file in chunks; `decode_chunks` transcribes each chunk through the
Decoder's file path, cut in a pause, prompted with the text before it, on the file's timeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import numpy as np

from . import memory
from .audio import SAMPLE_RATE
from .context import WHISPER_MAX_PROMPT_TOKENS
from .engine.decoder import Decoder
from .engine.windows import prompt_tokens
from .transcript import DecodeRequest, Segment, TranscribeOptions, Transcript


def decode_chunks(decoder: Decoder, chunks: Iterable[np.ndarray], options: TranscribeOptions,
                  on_progress: Callable[[float], None] | None = None,
                  on_segment: Callable[[Segment], None] | None = None) -> Transcript:
    """Decode a long file chunk by chunk (from `iter_audio`), so its memory is that of a
    chunk (its features, and the next chunk's samples), not of the file: faster-whisper
    holds the whole audio, its VAD copy and its features at once (bench/uploads.py).

    Each chunk ends at the quietest moment near its end (the rest goes to the next), is
    prompted with the text before it, as faster-whisper prompts its windows, and decodes
    in the language the first chunk with speech was heard in. Times run from the start
    of the file; `duration` is the whole file's. `on_segment` gets each segment, on the
    file's timeline, as soon as its window is decoded (`stream=true` uploads send it on).
    """
    decoder.check(options)
    context = prompt_tokens(decoder.loaded, options.initial_prompt)
    segments: list[Segment] = []
    language = options.language
    heard = (language or "", 1.0)  # the language and its probability, once detected
    done = 0  # samples decoded so far
    carry = np.zeros(0, np.float32)
    for chunk, last in with_last(chunks):
        audio = np.concatenate([carry, chunk]) if len(carry) else chunk
        cut = len(audio) if last else quiet_cut(audio)
        audio, carry = audio[:cut], audio[cut:].copy()
        offset = done / SAMPLE_RATE
        report = (lambda s, at=offset: on_progress(at + s)) if on_progress else None

        def take(seg: Segment, at: float = offset) -> None:
            segments.append(shifted(seg, len(segments) + 1, at))
            if on_segment:
                on_segment(segments[-1])

        part = decoder.decode(DecodeRequest(audio, replace(
            options, language=language, initial_prompt=context or None,
            prefix=None if done else options.prefix)), report, take)
        if language is None:  # detected on this chunk; kept once a chunk had speech
            heard = (part.language, part.language_probability)
            language = part.language if part.segments else None
        for seg in part.segments:
            context = _next_context(context, seg, options)
        done += cut
    # glibc keeps the chunks' freed pages: without this, a server's RSS between uploads
    # crept up file after file (bench/uploads.py).
    memory.trim()
    return Transcript(heard[0], heard[1], done / SAMPLE_RATE, tuple(segments))


# Where a chunk ends: the quietest 200 ms in its last 8 s (a pause between words or sentences;
# speech has one every few seconds), so no word is cut in two, and chunks read as well as
# the whole file (bench/transcribe.py).
SEAM_SEARCH_S = 8.0
SEAM_QUIET_S = 0.2
SEAM_FRAME = 160  # 10 ms


def quiet_cut(audio: np.ndarray) -> int:
    """The sample to end a chunk at: the middle of the quietest stretch near its end."""
    search = min(round(SEAM_SEARCH_S * SAMPLE_RATE), len(audio) // 2) // SEAM_FRAME
    start = len(audio) - search * SEAM_FRAME
    quiet = round(SEAM_QUIET_S * SAMPLE_RATE) // SEAM_FRAME
    if search <= quiet:
        return len(audio)
    energy = np.square(audio[start:], dtype=np.float32).reshape(search, SEAM_FRAME).sum(axis=1)
    stretch = np.convolve(energy, np.ones(quiet, np.float32), mode="valid")
    return start + (int(np.argmin(stretch)) + quiet // 2) * SEAM_FRAME


def with_last(chunks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, bool]]:
    """Each chunk and whether it is the last: the last one is decoded to its very end."""
    pending = iter(chunks)
    current = next(pending, None)
    while current is not None:
        following = next(pending, None)
        yield current, following is None
        current = following


def shifted(seg: Segment, id: int, offset: float) -> Segment:
    """A chunk's segment in the file's time and numbering."""
    words = tuple(replace(w, start=w.start + offset, end=w.end + offset) for w in seg.words)
    return replace(seg, id=id, start=seg.start + offset, end=seg.end + offset, words=words)


def _next_context(context: tuple[int, ...], seg: Segment,
                  options: TranscribeOptions) -> tuple[int, ...]:
    """The prompt for the next chunk: the text so far, unless the options or a hot
    temperature fallback reset it (faster-whisper's prompt_reset_on_temperature, 0.5)."""
    if not options.condition_on_previous_text or seg.temperature > 0.5:
        return ()
    return (context + seg.tokens)[-WHISPER_MAX_PROMPT_TOKENS:]
