"""Streaming windows: at most 30 s of audio each, made ready on the caller's thread
(`prepare_window`) and decoded many at once, as one batch (`decode_windows`): one encoder pass
and one generation.

What faster-whisper's `transcribe` does for one window is done here for a batch, with its
own internals (encode, get_prompt, generate_with_fallback, add_word_timestamps), pinned to the
tested minor version (test_window_path_matches_faster_whisper).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import (
    TranscriptionOptions,
    get_compression_ratio,
    get_ctranslate2_storage,
    get_suppressed_tokens,
)

from ..audio import SAMPLE_RATE
from ..context import WHISPER_MAX_PROMPT_TOKENS
from ..transcript import DecodeRequest, Segment, TranscribeOptions, Transcript, Word

if TYPE_CHECKING:
    from .model import LoadedModel

FRAMES_PER_SECOND = 100  # mel frames
WINDOW_FRAMES = 30 * FRAMES_PER_SECOND
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token


# A window whose text compresses (gzip) more than this repeats itself: faster-whisper's
# `compression_ratio_threshold`, its `transcribe` default and Whisper's.
MAX_COMPRESSION_RATIO = 2.4


def prompt_tokens(loaded: LoadedModel, prompt: str | tuple[int, ...] | None) -> tuple[int, ...]:
    """A prompt's tokens as faster-whisper makes them (a token tuple is used as given)."""
    if isinstance(prompt, tuple):
        return prompt
    if not prompt:
        return ()
    return tuple(loaded.model.hf_tokenizer.encode(" " + prompt.strip(),
                                                  add_special_tokens=False).ids)


@dataclass(frozen=True, eq=False)
class Window:
    """A window decode made ready on the caller's thread, for `decode_windows`."""

    features: np.ndarray  # (mels, frames) padded for the encoder
    frames: int  # frames of real audio among them
    duration: float
    previous: tuple[int, ...]  # the prompt's previous-text tokens
    options: TranscribeOptions

    @property
    def key(self) -> Hashable:
        """Windows with equal keys can share a batch: one encoder length, one position of
        <|startoftranscript|> in the prompts (CTranslate2 needs both), one search, busy or
        not."""
        temperatures = self.options.temperatures
        search = temperatures if len(temperatures) == 1 else id(self)  # fallback runs alone
        return (self.features.shape[-1], len(self.previous), self.options.beam_size,
                self.options.busy_beam_size, self.options.without_timestamps, search)

    def batch_limit(self, max_batch: int, pad_s: float, full_max: int = 2) -> int:
        """How many windows of this length share a batch: `max_batch` of the common length
        (`pad_s`), fewer of longer ones. A batch's working memory grows with its audio, so a
        batch of long windows then needs about what warm-up's batch took at start-up. Full
        30 s windows (a file's) at most `full_max` (see `full_window_batch`)."""
        common = round(pad_s * FRAMES_PER_SECOND)
        frames = self.features.shape[-1]
        limit = max(1, max_batch * common // max(frames, common))
        return min(limit, max(1, full_max)) if frames >= WINDOW_FRAMES else limit


# Weights up to this size (tiny's, stored in float16) decode full windows two to a batch,
# which reads a file faster on tiny. A larger model holds more per window (its width times
# its layers): paired, base's file job neared its memory target for a few percent of speed
# (bench/transcribe.py; docs/benchmarks.md has the figures).
PAIRED_FULL_WINDOWS_MAX_WEIGHTS = 100 * 2**20


def full_window_batch(weights_bytes: int) -> int:
    """How many full 30 s windows share a batch on a model whose weights take this much."""
    return 2 if weights_bytes <= PAIRED_FULL_WINDOWS_MAX_WEIGHTS else 1


def prepare_window(loaded: LoadedModel, request: DecodeRequest) -> Window:
    """Features padded to the next multiple of `window_pad_s` (not always Whisper's 30 s),
    and the prompt's tokens (a token tuple is used as given: see RollingContext.tokens)."""
    model = loaded.model
    features = model.feature_extractor(request.audio)[:, :-1]
    frames = features.shape[-1]
    step = round((request.pad_s or loaded.window_pad_s) * FRAMES_PER_SECOND)
    target = min(WINDOW_FRAMES, -(-max(frames, 1) // step) * step)
    features = np.pad(features[:, :target], ((0, 0), (0, max(0, target - frames))))
    previous = prompt_tokens(loaded, request.options.initial_prompt)
    return Window(features, min(frames, WINDOW_FRAMES), len(request.audio) / SAMPLE_RATE,
                  previous[-WHISPER_MAX_PROMPT_TOKENS:], request.options)


# Speech is about 3 words (4-5 tokens) a second, plus two timestamps a segment. A window that
# loops (a phrase repeated, on noise) would otherwise generate up to the model's 448 tokens:
# seconds of work that every window in its batch waits for. tests/e2e/test_replicas.py, on a
# loaded machine, saw three tiny.en streams stall 4 s behind one such batch.
TOKENS_PER_SECOND = 12
MIN_NEW_TOKENS = 24


def max_new_tokens(duration: float) -> int:
    """The most tokens a window of `duration` seconds may generate (more is a loop)."""
    return MIN_NEW_TOKENS + math.ceil(TOKENS_PER_SECOND * duration)


def decode_windows(loaded: LoadedModel, windows: Sequence[Window]) -> list[Transcript]:
    """One encoder pass and one generation over windows of at most 30 s, in one batch.

    The results equal those of decoding each window alone
    (test_batched_windows_equal_windows_decoded_alone).
    faster-whisper's `transcribe` re-decodes a last segment that has no closing timestamp
    as a second window, paying the encoder again. In a stream that segment is simply the
    speech still going on, so it is kept, with words running to the end.
    """
    model = loaded.model
    encoded = _encode(loaded, windows)
    languages = _languages(loaded, windows, encoded)
    tokenizers = [Tokenizer(model.hf_tokenizer, loaded.multilingual, task=w.options.task,
                            language=language) for w, (language, _) in zip(windows, languages)]
    prompts = [model.get_prompt(t, list(w.previous), w.options.without_timestamps,
                                prefix=w.options.prefix) for w, t in zip(windows, tokenizers)]
    # By the padded length, which every window in a batch shares (Window.key): a window then
    # decodes the same in a batch as alone, even one that loops.
    max_new = max_new_tokens(windows[0].features.shape[-1] / FRAMES_PER_SECOND)
    options = [_window_options(w.options, t) for w, t in zip(windows, tokenizers)]
    busy = len(windows) > 1 or (loaded.scheduler is not None and loaded.scheduler.depth > 0)
    if busy:
        # Under load (a batch, or windows waiting behind this one), each window's beam for a
        # busy model: a stream's steps drop to greedy (`busy_beam_size`), so beam search
        # runs on spare compute only; utterances keep theirs, as greedy ones under load cost
        # clients words for no better latency (bench/capacity.py). The model's
        # `batch_beam_size` caps them all (0: no cap).
        options = [replace(o, beam_size=_busy_beam(w.options, loaded.batch_beam_size))
                   for o, w in zip(options, windows)]
    if len(windows[0].options.temperatures) > 1:  # alone in its batch (Window.key)
        # faster-whisper refuses prompt + max_new_tokens past the model's 448 tokens.
        fallback = replace(options[0], max_new_tokens=min(
            max_new, model.max_length - len(prompts[0])))
        generated = [model.generate_with_fallback(encoded, prompts[0], tokenizers[0],
                                                  fallback)]
    else:
        # Up to the forced prefix (the same for the batch): a forced prefix counts against
        # max_new, as generated text does.
        prompt_length = len(model.get_prompt(tokenizers[0], list(windows[0].previous),
                                             windows[0].options.without_timestamps))
        generated = _generate(loaded, encoded, prompts, tokenizers, options[0],
                              _max_length(model.max_length, prompt_length, max_new))
    alone = len(windows) == 1
    out = []
    for i, window in enumerate(windows):
        encoder_output = encoded if alone else ctranslate2.StorageView.from_array(
            np.asarray(encoded)[i:i + 1])
        out.append(_transcript(loaded, window, languages[i], tokenizers[i], options[i],
                               generated[i], encoder_output))
    return out


# The most audio one encoder call takes, in frames squared summed over its windows: that of
# one 30 s window. The encoder's self-attention holds frames x frames scores per head and
# window, so a batch of eight 30 s windows encoded at once needed hundreds of MB more than
# the same windows encoded one by one, and the encoder runs no faster batched on a CPU. The
# decoder, which does gain from the batch, then runs on all of them at once
# (bench/transcribe.py). Eight 10 s stream windows still go in one call.
MAX_ENCODE_AREA = WINDOW_FRAMES ** 2


def _encode(loaded: LoadedModel, windows: Sequence[Window]) -> ctranslate2.StorageView:
    """The windows' encoder output, computed in groups of at most MAX_ENCODE_AREA. It
    comes back to host memory (on a CPU, where it already is, this costs nothing), so that
    each window's slice can be aligned for word timestamps on its own."""
    groups: list[list[np.ndarray]] = [[]]
    area = 0
    for window in windows:
        frames = window.features.shape[-1]
        if groups[-1] and area + frames ** 2 > MAX_ENCODE_AREA:
            groups.append([])
            area = 0
        groups[-1].append(window.features)
        area += frames ** 2
    outputs = [_encode_group(loaded, np.stack(group)) for group in groups]
    if len(outputs) == 1:
        return outputs[0]
    return ctranslate2.StorageView.from_array(np.concatenate([np.asarray(o) for o in outputs]))


def _encode_group(loaded: LoadedModel, features: np.ndarray) -> ctranslate2.StorageView:
    """One encoder pass. A full 30 s window (a file's) holds the model's `long_encode` lock
    through it: its self-attention scores grow with frames squared, so two such passes at
    once on two workers raised a file job's peak memory by a pass's worth, while one at a
    time costs no speed, as the other worker generates text meanwhile (bench/transcribe.py)."""
    storage = get_ctranslate2_storage(features)
    if features.shape[-1] < WINDOW_FRAMES:
        return loaded.model.model.encode(storage, to_cpu=True)
    with loaded.long_encode:
        return loaded.model.model.encode(storage, to_cpu=True)


def _languages(loaded: LoadedModel, windows: Sequence[Window],
               encoded: ctranslate2.StorageView) -> list[tuple[str, float]]:
    """Each window's language and its probability: given, English, or detected."""
    if not loaded.multilingual:
        return [("en", 1.0)] * len(windows)
    detected: list = []
    if any(w.options.language is None for w in windows):
        detected = loaded.model.model.detect_language(encoded)
    return [(w.options.language, 1.0) if w.options.language
            else (detected[i][0][0][2:-2], detected[i][0][1]) for i, w in enumerate(windows)]


def _generate(loaded: LoadedModel, encoded: ctranslate2.StorageView, prompts: list[list[int]],
              tokenizers: list[Tokenizer], opts: TranscriptionOptions,
              max_length: int) -> list[tuple]:
    """One batched beam search at one temperature; per window, what faster-whisper's
    `generate_with_fallback` returns for it (result, avg_logprob, temperature, ratio)."""
    model = loaded.model
    temperature = opts.temperatures[0]
    search = {"beam_size": 1, "num_hypotheses": opts.best_of, "sampling_topk": 0,
              "sampling_temperature": temperature} if temperature > 0 \
        else {"beam_size": opts.beam_size, "patience": opts.patience}
    results = model.model.generate(
        encoded, prompts, length_penalty=opts.length_penalty,
        repetition_penalty=opts.repetition_penalty,
        no_repeat_ngram_size=opts.no_repeat_ngram_size,
        max_length=max_length,
        return_scores=True, return_no_speech_prob=True, suppress_blank=opts.suppress_blank,
        suppress_tokens=opts.suppress_tokens,
        max_initial_timestamp_index=int(round(opts.max_initial_timestamp
                                              / model.time_precision)),
        **search)
    out = []
    for result, tokenizer in zip(results, tokenizers):
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) ** opts.length_penalty / (len(tokens) + 1)
        ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
        out.append((result, avg_logprob, temperature, ratio))
    return out


def _max_length(limit: int, prompt_length: int, new_tokens: int) -> int:
    """CTranslate2's Whisper `max_length` for `new_tokens` after the prompt: it decodes at
    most min(max_length / 2, max_length - prompt_length + 1) tokens (whisper.cc)."""
    return min(limit, max(2 * new_tokens, prompt_length - 1 + new_tokens))


def _transcript(loaded: LoadedModel, window: Window, language: tuple[str, float],
                tokenizer: Tokenizer, opts: TranscriptionOptions, generated: tuple,
                encoder_output: ctranslate2.StorageView) -> Transcript:
    result, avg_logprob, temperature, compression_ratio = generated
    parts = split_segments(result.sequences_ids[0], tokenizer.timestamp_begin, window.duration)
    if window.options.word_timestamps and parts:
        loaded.model.add_word_timestamps([parts], tokenizer, encoder_output, window.frames,
                                         opts.prepend_punctuations, opts.append_punctuations,
                                         last_speech_timestamp=0.0)
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
    return Transcript(language[0], language[1], window.duration, tuple(out))



def _window_options(opts: TranscribeOptions, tokenizer: Tokenizer) -> TranscriptionOptions:
    """faster-whisper's decoding options with its own `transcribe` defaults (the window path
    must decode as `transcribe` does: test_window_path_matches_faster_whisper)."""
    return TranscriptionOptions(
        beam_size=opts.beam_size, best_of=5, patience=1.0, length_penalty=1.0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, log_prob_threshold=-1.0,
        no_speech_threshold=0.6, compression_ratio_threshold=MAX_COMPRESSION_RATIO,
        condition_on_previous_text=False, prompt_reset_on_temperature=0.5,
        temperatures=list(opts.temperatures), initial_prompt=None, prefix=None,
        suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        without_timestamps=opts.without_timestamps, max_initial_timestamp=1.0,
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


def _busy_beam(options: TranscribeOptions, cap: int) -> int:
    """The beam a window is decoded at while the model is busy."""
    beam = options.beam_size if options.busy_beam_size is None \
        else min(options.beam_size, options.busy_beam_size)
    return min(beam, cap) if cap else beam
