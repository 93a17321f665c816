"""Long files at batched speed: speech cut into windows of up to 30 s, decoded many at once.

faster-whisper's sequential `transcribe` decodes a window, seeks to its last timestamp and
decodes from there, each window prompted with the text before it, so one file is one long
chain of decodes. Its `BatchedInferencePipeline` cuts the speech (its VAD) into windows of up
to 30 s (the pauses between regions left out), decodes them side by side
as text without timestamp tokens, and times the words by alignment. That reads a file about
twice as fast at about the same WER (bench/transcribe.py).

This path cuts and decodes as that pipeline does, with the library's own VAD and
`SpeechTimestampsMap`, but:

- the windows go to the model's batch scheduler, due `FILE_WINDOW_SLACK_S` after they are
  queued and in the background: a live stream's windows, due at once, go first, a file's
  batches leave a worker to the streams while there are any, and an upload runs on what the
  streams leave, sharing the scheduler's batching and memory limits with them;
- the file is read a chunk at a time (`iter_audio`), so memory is a few windows', not the
  file's (bench/uploads.py);
- one language per file (detected on the first window with speech), the segments cut at
  sentences from the aligned words, on the file's timeline, and handed on as soon as their
  window is decoded;
- a window that fails Whisper's thresholds (a loop, or text the model doubts) is decoded
  again alone with the temperature fallback, as `transcribe` would.

What it gives up: a window is not prompted with the text of the one before it (they are
decoded at the same time), so a name the file spells once is not carried to the next window.
`file_decoding=sequential` keeps the chained path (chunked.py) for that.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np
from faster_whisper.vad import (
    SpeechTimestampsMap,
    VadOptions,
    get_speech_timestamps,
)

from . import memory
from .audio import SAMPLE_RATE
from .chunked import decode_chunks, shifted
from .engine.decoder import Decoder
from .engine.windows import MAX_COMPRESSION_RATIO, prompt_tokens
from .timeline import clamp_segment
from .transcript import DecodeRequest, Segment, TranscribeOptions, Transcript, Word

# The pipeline's own cut: regions of speech at most Whisper's window long, split at pauses of
# 160 ms (faster-whisper's BatchedInferencePipeline defaults).
WINDOW_S = 30.0
VAD = VadOptions(max_speech_duration_s=WINDOW_S, min_silence_duration_ms=160)
# How long after it is queued a file's window is due: streams' windows (due at once) run first.
FILE_WINDOW_SLACK_S = 10.0
# Windows queued at a time: enough to fill a batch on every worker while the next chunk is
# read, few enough that their features and audio (about 3 MB each) stay small.
IN_FLIGHT = 8
# A region that ends this close to its chunk's end may go on in the next chunk: it is decoded
# with it.
OPEN_END_S = 1.0
# faster-whisper's thresholds (`transcribe` defaults): text under LOG_PROB_THRESHOLD is doubted
# and decoded again hotter; with NO_SPEECH_THRESHOLD too, the window held no speech.
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# Where a segment ends: after a sentence, at a pause, or before it grows past subtitle length.
SENTENCE_ENDS = (".", "?", "!", "。", "？", "！")
SEGMENT_PAUSE_S = 1.0
MAX_SEGMENT_S = 12.0


def decode_file(decoder: Decoder, chunks: Iterable[np.ndarray], options: TranscribeOptions,
                mode: str = "batched", on_progress: Callable[[float], None] | None = None,
                on_segment: Callable[[Segment], None] | None = None) -> Transcript:
    """A file's chunks, decoded by the path `mode` names (the `file_decoding` setting):
    `batched` (this module), or `sequential` (chunked.py). A request without VAD takes the
    sequential path, as the batched one cuts windows at the VAD's speech; so does one with a
    prompt or hotwords: a window decoded without timestamp tokens follows its prompt less
    (base wrote "Caitlyn Smyth" four times where the prompt said "Katelynn Smyth", and
    wrote it right with timestamps; test_a_prompted_file_takes_the_sequential_path)."""
    if mode == "batched" and options.vad_filter and not (options.initial_prompt
                                                         or options.hotwords):
        return decode_batched(decoder, chunks, options, on_progress, on_segment)
    return decode_chunks(decoder, chunks, options, on_progress, on_segment)


@dataclass(frozen=True)
class _Queued:
    """A window on its way: where its audio sits in the file, and its decode."""

    chunk: int  # the index of the chunk it was cut from
    offset: float  # seconds from the start of the file to the start of that chunk
    regions: tuple[dict, ...]  # its speech regions, in samples of that chunk
    request: DecodeRequest
    future: Future[Transcript] | None = None

    @property
    def end(self) -> float:
        """Where its speech ends in the file."""
        return self.offset + self.regions[-1]["end"] / SAMPLE_RATE


def decode_batched(decoder: Decoder, chunks: Iterable[np.ndarray], options: TranscribeOptions,
                   on_progress: Callable[[float], None] | None = None,
                   on_segment: Callable[[Segment], None] | None = None) -> Transcript:
    """Decode a file from `iter_audio`'s chunks as batches of speech windows (see the module).
    Same contract as `chunked.decode_chunks`: segments in order on the file's timeline,
    `on_segment` for each as soon as its window is decoded, `on_progress` after each window;
    an exception from either stops the work and cancels the windows still queued."""
    decoder.check(options)
    loaded = decoder.loaded
    language = options.language if loaded.multilingual else "en"
    prompt = prompt_tokens(loaded, options.hotwords) + prompt_tokens(loaded,
                                                                     options.initial_prompt)
    window_options = replace(options, language=language, initial_prompt=prompt or None,
                             hotwords=None, prefix=None, word_timestamps=True,
                             without_timestamps=True, vad_filter=False,
                             condition_on_previous_text=False,
                             temperature=options.temperatures[0])
    heard = (language or "en", 1.0)
    segments: list[Segment] = []
    queue: deque[_Queued] = deque()
    done = 0  # samples of the file cut into windows so far

    def request(window: np.ndarray, opts: TranscribeOptions) -> DecodeRequest:
        return DecodeRequest(window, opts, window=True, pad_s=WINDOW_S,
                             deadline=time.monotonic() + FILE_WINDOW_SLACK_S, background=True)

    def finish(item: _Queued) -> None:
        result = _checked(decoder, item, options.temperatures)
        restore = SpeechTimestampsMap(list(item.regions), SAMPLE_RATE)
        floor = segments[-1].end if segments else 0.0
        for seg in _sentences(result, restore, loaded.model.hf_tokenizer, options):
            seg = clamp_segment(shifted(seg, len(segments) + 1, item.offset), floor,
                                max(floor, item.end))
            floor = seg.end
            segments.append(seg)
            if on_segment:
                on_segment(seg)
        if on_progress:
            on_progress(item.end)

    def submit_all(batch: list[_Queued]) -> None:
        futures = decoder.submit_all([item.request for item in batch])
        queue.extend(replace(item, future=future) for item, future in zip(batch, futures))

    def cut(audio: np.ndarray, index: int, last: bool) -> np.ndarray:
        """Queue the windows of `audio` (the file from sample `done` on); what is left for
        the next chunk: a region that reaches the end may go on there."""
        nonlocal done, language, heard, window_options
        regions = get_speech_timestamps(audio, VAD)
        end = len(audio)
        if not last and regions and regions[-1]["end"] > end - OPEN_END_S * SAMPLE_RATE:
            end = regions.pop()["start"]
        offset = done / SAMPLE_RATE
        batch: list[_Queued] = []
        for group in _groups(regions):
            window = np.concatenate([audio[r["start"]:r["end"]] for r in group])
            opts = window_options
            if not (segments or queue or batch):  # the file's first window: its prefix,
                opts = replace(opts, prefix=options.prefix)  # and its language if not given
                if language is None:
                    req = request(window, opts)
                    first = decoder.submit(req)
                    heard = (first.result().language, first.result().language_probability)
                    language = heard[0]
                    window_options = replace(window_options, language=language)
                    queue.append(_Queued(index, offset, tuple(group), req, first))
                    continue
            batch.append(_Queued(index, offset, tuple(group), request(window, opts)))
            if len(batch) == IN_FLIGHT // 2:
                submit_all(batch)
                batch = []
            while len(queue) > IN_FLIGHT:
                finish(queue.popleft())
        submit_all(batch)
        done += end
        return audio[end:].copy()

    try:
        carry = np.zeros(0, np.float32)
        for index, chunk in enumerate(chunks):
            carry = cut(np.concatenate([carry, chunk]) if len(carry) else chunk, index, False)
            # The chunk before is decoded before the next one is read: its segments go out
            # (an upload's events) while this chunk's windows keep the workers busy, and a
            # file found too long further on has sent what came before.
            while queue and queue[0].chunk < index:
                finish(queue.popleft())
        if len(carry):
            cut(carry, -1, True)
        while queue:
            finish(queue.popleft())
    finally:
        for item in queue:  # stopped early: what has not started never will
            if item.future is not None:
                item.future.cancel()
    memory.trim()
    return Transcript(heard[0], heard[1], done / SAMPLE_RATE, tuple(segments))


def _groups(regions: list[dict]) -> Iterator[list[dict]]:
    """Consecutive speech regions whose speech fills at most one window (WINDOW_S), as
    faster-whisper's `collect_chunks` groups them (its per-chunk metadata drops the first
    region of every chunk after the first, so the times could not be restored from it)."""
    group: list[dict] = []
    speech = 0  # samples of speech in `group`
    for region in regions:
        length = region["end"] - region["start"]
        if group and speech + length > WINDOW_S * SAMPLE_RATE:
            yield group
            group, speech = [], 0
        group.append(region)
        speech += length
    if group:
        yield group


def _checked(decoder: Decoder, item: _Queued, temperatures: tuple[float, ...]) -> Transcript:
    """The window's result, decoded again alone with the temperature fallback where it fails
    Whisper's thresholds (a loop, or text the model doubts), as `transcribe` would; a window
    the model found silent and doubted gives nothing."""
    assert item.future is not None
    result = item.future.result()
    if not result.segments:
        return result
    seg = result.segments[0]
    if seg.no_speech_prob > NO_SPEECH_THRESHOLD and seg.avg_logprob < LOG_PROB_THRESHOLD:
        return replace(result, segments=())
    failed = seg.compression_ratio > MAX_COMPRESSION_RATIO or seg.avg_logprob < LOG_PROB_THRESHOLD
    if failed and len(temperatures) > 1:
        opts = replace(item.request.options, language=result.language,
                       temperature=temperatures)
        return decoder.submit(replace(item.request, options=opts, deadline=None)).result()
    return result


def _sentences(result: Transcript, restore: SpeechTimestampsMap, tokenizer,
               options: TranscribeOptions) -> Iterator[Segment]:
    """A window's text as segments of a sentence or so, timed by its aligned words, which
    `restore` moves from the window (pauses left out) back to the chunk's time."""
    for seg in result.segments:
        words = [_restored(w, restore) for w in seg.words]
        parts = list(_split(words)) if words else []
        for part in parts:
            text = "".join(w.word for w in part)
            yield Segment(0, part[0].start, part[-1].end, text,
                          tuple(part) if options.word_timestamps else (), seg.avg_logprob,
                          seg.no_speech_prob, seg.compression_ratio, seg.temperature,
                          tuple(tokenizer.encode(text, add_special_tokens=False).ids))
        if not parts and seg.text.strip():  # no words aligned: the text, timed as a whole
            yield replace(seg, start=restore.get_original_time(seg.start),
                          end=restore.get_original_time(seg.end, is_end=True), words=())


def _restored(word: Word, restore: SpeechTimestampsMap) -> Word:
    """A word's times in its chunk: both ends resolved in the region its middle is in."""
    index = restore.get_chunk_index((word.start + word.end) / 2)
    return replace(word, start=restore.get_original_time(word.start, index),
                   end=restore.get_original_time(word.end, index))


def _split(words: list[Word]) -> Iterator[list[Word]]:
    """Words in runs that end at a sentence's end, before a pause, or before the run would
    outgrow MAX_SEGMENT_S (then after its last comma, if it has one)."""
    run: list[Word] = []
    for word in words:
        if run and (word.start - run[-1].end >= SEGMENT_PAUSE_S
                    or word.end - run[0].start > MAX_SEGMENT_S):
            if word.start - run[-1].end < SEGMENT_PAUSE_S:  # too long: cut after a comma
                comma = max((i for i, w in enumerate(run[:-1]) if w.word.rstrip().endswith(",")),
                            default=len(run) - 1)
                run, rest = run[:comma + 1], run[comma + 1:]
                yield run
                run = rest
            else:
                yield run
                run = []
        run.append(word)
        if word.word.rstrip().endswith(SENTENCE_ENDS):
            yield run
            run = []
    if run:
        yield run

