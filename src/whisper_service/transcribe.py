"""The one narrow call into a model: `decode(request) -> Transcript`.

File transcription, the HTTP API and streaming sessions all go through here, so a future
scheduler that batches many sessions' requests only has to replace `Decoder`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

from .audio import SAMPLE_RATE
from .models import LoadedModel
from .registry import check_language

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class Transcript:
    language: str
    language_probability: float
    duration: float
    segments: tuple[Segment, ...] = field(default=())

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()


@dataclass(frozen=True)
class TranscribeOptions:
    """Decode settings; None language means detect. File decodes pass them all to
    faster-whisper's `transcribe`; window decodes (streaming) use the decoding ones."""

    language: str | None = None
    task: Task = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    vad_filter: bool = True
    initial_prompt: str | None = None
    prefix: str | None = None  # forced start of the text: what a stream already committed
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    condition_on_previous_text: bool = True

    def __post_init__(self) -> None:
        check_language(self.language)
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"unsupported task {self.task!r}; use transcribe or translate")
        if self.beam_size < 1:
            raise ValueError("beam size must be at least 1")


@dataclass(frozen=True)
class DecodeRequest:
    """`window`: decode the audio (at most 30 s) as one Whisper window, as streaming wants."""

    audio: np.ndarray
    options: TranscribeOptions
    window: bool = False

    def __post_init__(self) -> None:
        if self.window and len(self.audio) > WINDOW_SAMPLES:
            raise ValueError("a window decode takes at most 30 s of audio")


WINDOW_SAMPLES = 30 * SAMPLE_RATE
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token


class Decoder:
    """Runs requests on one shared model; holds no per-session state."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def check(self, options: TranscribeOptions) -> None:
        """Reject settings the model cannot honour, before any audio is spent on them."""
        if not self.loaded.multilingual:
            name = self.loaded.key.name
            if options.language not in (None, "en"):
                raise ValueError(f"model {name} is English-only; language "
                                 f"{options.language!r} needs a multilingual model such as base")
            if options.task == "translate":
                raise ValueError(f"model {name} is English-only and cannot translate; use base")

    def decode(self, request: DecodeRequest,
               on_progress: Callable[[float], None] | None = None) -> Transcript:
        """Decode 16 kHz audio. `on_progress` gets audio seconds done so far.

        Each Whisper window waits for one of the model's decode slots (`num_workers`), so many
        sessions share a few, and a long file takes turns with the streams window by window.
        """
        self.check(request.options)
        if request.window:
            with self.loaded.slots:
                return self._decode_window(request.audio, request.options)
        return self._decode_file(request, on_progress)

    def _decode_file(self, request: DecodeRequest,
                     on_progress: Callable[[float], None] | None) -> Transcript:
        opts = request.options
        language = opts.language
        if language is None and not self.loaded.multilingual:
            language = "en"  # faster-whisper would do the same, without detection work
        with self.loaded.slots:  # features, VAD and language detection run here
            segments, info = self.loaded.model.transcribe(
                request.audio,
                language=language,
                task=opts.task,
                beam_size=opts.beam_size,
                word_timestamps=opts.word_timestamps,
                vad_filter=opts.vad_filter,
                initial_prompt=opts.initial_prompt,
                prefix=opts.prefix,
                temperature=opts.temperature,
                condition_on_previous_text=opts.condition_on_previous_text,
            )
        out = []
        pending = iter(segments)
        while True:
            with self.loaded.slots:  # the lazy generator decodes the next window here
                seg = next(pending, None)
            if seg is None:
                break
            words = tuple(Word(w.start, w.end, w.word, w.probability) for w in seg.words or ())
            out.append(Segment(seg.id, seg.start, seg.end, seg.text, words, seg.avg_logprob,
                               seg.no_speech_prob, seg.compression_ratio, seg.temperature,
                               tuple(seg.tokens)))
            if on_progress:
                on_progress(seg.end)
        duration = len(request.audio) / SAMPLE_RATE
        if on_progress:
            on_progress(duration)
        return Transcript(info.language, info.language_probability, duration, tuple(out))

    def _decode_window(self, audio: np.ndarray, opts: TranscribeOptions) -> Transcript:
        """One encoder pass and one generation over a window of at most 30 s.

        faster-whisper's `transcribe` re-decodes a last segment that has no closing timestamp
        as a second window, paying the whole 30 s encoder again. In a stream that segment is
        simply the speech still going on, so it is kept, with words running to the end.
        """
        model = self.loaded.model
        features = model.feature_extractor(audio)[:, :-1]
        frames = features.shape[-1]
        encoder_output = model.encode(pad_or_trim(features))
        language, probability = opts.language, 1.0
        if not self.loaded.multilingual:
            language = "en"
        elif language is None:
            token, probability = model.model.detect_language(encoder_output)[0][0]
            language = token[2:-2]
        tokenizer = Tokenizer(model.hf_tokenizer, self.loaded.multilingual, task=opts.task,
                              language=language)
        previous = tokenizer.encode(" " + opts.initial_prompt.strip()) \
            if opts.initial_prompt else []
        fw_options = _window_options(opts, tokenizer)
        prompt = model.get_prompt(tokenizer, previous, prefix=opts.prefix)
        result, avg_logprob, temperature, compression_ratio = model.generate_with_fallback(
            encoder_output, prompt, tokenizer, fw_options)
        duration = len(audio) / SAMPLE_RATE
        parts = split_segments(result.sequences_ids[0], tokenizer.timestamp_begin, duration)
        if opts.word_timestamps and parts:
            model.add_word_timestamps([parts], tokenizer, encoder_output, frames,
                                      fw_options.prepend_punctuations,
                                      fw_options.append_punctuations, last_speech_timestamp=0.0)
        out = []
        for part in parts:
            text = tokenizer.decode(part["tokens"])
            if not text.strip():
                continue
            words = tuple(Word(w["start"], w["end"], w["word"], w["probability"])
                          for w in part.get("words", ()))
            out.append(Segment(len(out) + 1, part["start"], part["end"], text, words,
                               avg_logprob, result.no_speech_prob, compression_ratio,
                               temperature, tuple(part["tokens"])))
        return Transcript(language, probability, duration, tuple(out))


def _window_options(opts: TranscribeOptions, tokenizer: Tokenizer) -> TranscriptionOptions:
    """faster-whisper's decoding options with its own `transcribe` defaults (the window path
    must decode as `transcribe` does: test_window_path_matches_faster_whisper)."""
    temperatures = opts.temperature if isinstance(opts.temperature, tuple) \
        else (opts.temperature,)
    return TranscriptionOptions(
        beam_size=opts.beam_size, best_of=5, patience=1.0, length_penalty=1.0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, log_prob_threshold=-1.0,
        no_speech_threshold=0.6, compression_ratio_threshold=2.4,
        condition_on_previous_text=False, prompt_reset_on_temperature=0.5,
        temperatures=list(temperatures), initial_prompt=None, prefix=None,
        suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        without_timestamps=False, max_initial_timestamp=1.0,
        word_timestamps=opts.word_timestamps, prepend_punctuations="\"'“¿([{-",
        append_punctuations="\"'.。,，!！?？:：”)]}、", multilingual=False,
        max_new_tokens=None, clip_timestamps="0", hallucination_silence_threshold=None,
        hotwords=None)


def split_segments(tokens: list[int], timestamp_begin: int, duration: float) -> list[dict]:
    """Whisper's segments in one window's tokens: text between timestamp tokens. Text after
    the last timestamp is the unfinished segment, which runs to the end of the audio."""
    segments: list[dict] = []
    text: list[int] = []
    start = 0.0
    for token in tokens:
        if token < timestamp_begin:
            text.append(token)
            continue
        time = min((token - timestamp_begin) * TIME_PRECISION, duration)
        if text:
            segments.append({"seek": 0, "start": start, "end": max(time, start), "tokens": text})
            text = []
        start = time
    if text:
        segments.append({"seek": 0, "start": start, "end": duration, "tokens": text})
    return segments
