"""The one narrow call into a model: `decode(request) -> Transcript`.

File transcription, the HTTP API and streaming sessions all go through here, so a future
scheduler that batches many sessions' requests only has to replace `Decoder`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import (
    TranscriptionOptions,
    get_compression_ratio,
    get_ctranslate2_storage,
    get_suppressed_tokens,
)

from .audio import SAMPLE_RATE
from .context import WHISPER_MAX_PROMPT_TOKENS
from .registry import check_language
from .timeline import ordered
from .transcript import Segment, Transcript, Word

if TYPE_CHECKING:
    from .models import LoadedModel

Task = Literal["transcribe", "translate"]
# Longest hotwords text a client may send (HTTP form and stream config), checked before any
# model is at hand; a stream's hotwords then count against its prompt's `max_context_tokens`.
MAX_HOTWORDS_CHARS = 500
# A file decode's hotwords, in tokens. faster-whisper puts them before up to 223 tokens of
# previous text, and a window writes only what is left of Whisper's 448 positions: 96 leave
# 126, a dense 30 s window's worth. en_long (66 s, continuous), WER without / with a list of
# names: tiny.en 0.009 / 0.028-0.032 at 32-96 tokens, 0.106 at 128, 0.111 at 206; base
# 0.019 / 0.028 at 31-93, 0.384 at 127 (it skipped 24 s of speech).
MAX_HOTWORDS_TOKENS = 96


@dataclass(frozen=True)
class TranscribeOptions:
    """Decode settings; None language means detect. File decodes pass them all to
    faster-whisper's `transcribe`; window decodes (streaming) use the decoding ones."""

    language: str | None = None
    task: Task = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    vad_filter: bool = True
    initial_prompt: str | tuple[int, ...] | None = None  # text, or its tokens
    prefix: str | None = None  # forced start of the text: what a stream already committed
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    condition_on_previous_text: bool = True
    # Names and terms to spell right. File decodes pass them to faster-whisper, which puts them
    # before the previous text of every window's prompt (except where a prefix is forced);
    # window decodes ignore them: a stream folds them into its static prompt instead.
    hotwords: str | None = None

    def __post_init__(self) -> None:
        check_language(self.language)
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"unsupported task {self.task!r}; use transcribe or translate")
        if self.beam_size < 1:
            raise ValueError("beam size must be at least 1")


@dataclass(frozen=True)
class DecodeRequest:
    """`window`: decode the audio (at most 30 s) as one Whisper window, as streaming wants.
    `pad_s`: pad that window to a multiple of this (default: the model's `window_pad_s`).
    `deadline`: when the result is due (`time.monotonic()`; default: now). The batch
    scheduler serves the earliest due first, so a stream sent ahead of real time waits for
    the ones that are live (see pacing.py)."""

    audio: np.ndarray
    options: TranscribeOptions
    window: bool = False
    pad_s: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.window and len(self.audio) > WINDOW_SAMPLES:
            raise ValueError("a window decode takes at most 30 s of audio")


WINDOW_SAMPLES = 30 * SAMPLE_RATE
FRAMES_PER_SECOND = 100  # mel frames
WINDOW_FRAMES = 30 * FRAMES_PER_SECOND
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
        if options.hotwords:
            count = len(prompt_tokens(self.loaded, options.hotwords))
            if count > MAX_HOTWORDS_TOKENS:
                raise ValueError(f"hotwords: {count} tokens, more than {MAX_HOTWORDS_TOKENS}; "
                                 "keep them to the names and terms that need spelling")

    def load(self) -> float:
        """How much longer than `min_chunk_s` a session's step should be right now: 1 while
        the scheduler keeps up, growing with the windows queued behind the running batches
        (one more step per half a window waiting per worker). Sessions then re-decode less
        often, so an overloaded server degrades in latency, smoothly, instead of in backlog.
        bench/capacity.py, tiny.en, p90 latency at 8 / 16 clients: 2.47 / 3.77 s with one
        more step per full batch waiting, 1.98-2.17 / 2.92-3.07 s with this. Tried and not
        kept: a step up to a quarter longer as the workers' busy share (utilization) rose
        past 40%: 8 clients p90 2.50 s in one run, against 2.15-2.25 s without."""
        scheduler = self.loaded.scheduler
        return 1.0 + 2 * scheduler.depth / scheduler.workers if scheduler else 1.0

    def decode(self, request: DecodeRequest,
               on_progress: Callable[[float], None] | None = None,
               on_segment: Callable[[Segment], None] | None = None) -> Transcript:
        """Decode 16 kHz audio. `on_progress` gets audio seconds done so far; file decodes give
        `on_segment` each segment as soon as its window is decoded (an upload streams them).

        Each Whisper window waits for one of the model's decode slots (`num_workers`), so many
        sessions share a few, and a long file takes turns with the streams window by window.
        Window decodes go through the model's batch scheduler when it has one: the features
        are computed here, on the caller's thread, and the scheduler runs them with other
        sessions' windows.
        """
        if request.window and self.loaded.scheduler is not None:
            return self.submit(request).result()
        self.check(request.options)
        if request.window:
            window = prepare_window(self.loaded, request)
            with self.loaded.slots:
                return decode_windows(self.loaded, [window])[0]
        return self._decode_file(request, on_progress, on_segment)

    def submit(self, request: DecodeRequest) -> Future[Transcript]:
        """A window decode that runs while the caller goes on: queued on the batch scheduler
        (the features are computed here). Without a scheduler it runs now, and the future is
        already done."""
        if request.window and self.loaded.scheduler is not None:
            self.check(request.options)
            return self.loaded.scheduler.submit(prepare_window(self.loaded, request),
                                                deadline=request.deadline)
        future: Future[Transcript] = Future()
        try:
            future.set_result(self.decode(request))
        except Exception as exc:  # the caller hears of it when it reads the result
            future.set_exception(exc)
        return future

    def _decode_file(self, request: DecodeRequest,
                     on_progress: Callable[[float], None] | None,
                     on_segment: Callable[[Segment], None] | None = None) -> Transcript:
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
                hotwords=opts.hotwords or None,
            )
        duration = len(request.audio) / SAMPLE_RATE
        out = []
        for seg in ordered(self._segments(segments), duration):
            out.append(seg)
            if on_segment:  # outside the slot: a slow consumer holds no decode worker
                on_segment(seg)
            if on_progress:
                on_progress(seg.end)
        if on_progress:
            on_progress(duration)
        return Transcript(info.language, info.language_probability, duration, tuple(out))


    def _segments(self, segments: Iterator[Any]) -> Iterator[Segment]:
        """faster-whisper's lazy segments as ours; each window is decoded in a slot."""
        while True:
            with self.loaded.slots:  # the lazy generator decodes the next window here
                seg = next(segments, None)
            if seg is None:
                return
            words = tuple(Word(w.start, w.end, w.word, w.probability) for w in seg.words or ())
            yield Segment(seg.id, seg.start, seg.end, seg.text, words, seg.avg_logprob,
                          seg.no_speech_prob, seg.compression_ratio, seg.temperature,
                          tuple(seg.tokens))


# What warm-up's windows carry in place of speech. The prompt stands for a stream's rolling
# context after about 25 s of speech (100 tokens), the forced prefix for the words a window
# generates (20 tokens): a decode's working memory grows with its tokens.
WARM_UP_SENTENCE = "the quick brown fox jumps over the lazy dog"  # 10 tokens
WARM_UP_PROMPT_REPEATS = 10
WARM_UP_PREFIX_REPEATS = 2


def warm_up(loaded: LoadedModel, workers: int) -> None:
    """A full batch per decode worker at once, so that every worker has started and holds
    the working memory of a full batch of common (10 s) windows before the first client
    arrives, rather than during someone's stream; memory.tune_heap keeps it for the decodes
    that follow. The windows queue at once, so each worker takes a full batch. Greedy, as
    streams' windows are: at the utterances' beam 2, a batch of 8 needed so much more that
    glibc handed most of it back at the first client (base: idle 666 MB, 542 MB with one
    client), and tiny.en's first client then cost 28 MB.

    The windows carry a prompt and a forced prefix, as a stream's do: a decode's working
    memory grows with its tokens. `bench/memory.py --only-clients`, per extra client from 1
    to 16 real-time clients (admission by lag off, so base runs at 4x its capacity):
    - with no tokens: base 5.4-7.1 MB, tiny.en 3.1-4.7 MB;
    - with these: base 0.3 MB, tiny.en 0.7-2.1 MB (three runs); idle RSS 583 MB for base
      (459 MB before), 362 MB for tiny.en (361 MB), ready in 7.3 s for base (3.3 s),
      2.4 s for tiny.en (1.8 s);
    - with a full 223-token prompt: base 0.3 MB, but 240 MB more at idle.
    """
    text = " ".join([WARM_UP_SENTENCE] * WARM_UP_PROMPT_REPEATS)
    options = TranscribeOptions(beam_size=1, word_timestamps=True, vad_filter=False,
                                temperature=0.0, initial_prompt=text,
                                prefix=" ".join([WARM_UP_SENTENCE] * WARM_UP_PREFIX_REPEATS))
    request = DecodeRequest(np.zeros(SAMPLE_RATE, np.float32), options, window=True)
    if loaded.scheduler is None:
        for _ in range(workers):
            Decoder(loaded).decode(request)
        return
    window = prepare_window(loaded, request)
    for future in loaded.scheduler.submit_all([window] * (workers * loaded.scheduler.max_batch)):
        future.result()


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
        <|startoftranscript|> in the prompts (CTranslate2 needs both), one search."""
        temperatures = _temperatures(self.options)
        search = temperatures if len(temperatures) == 1 else id(self)  # fallback runs alone
        return self.features.shape[-1], len(self.previous), self.options.beam_size, search

    def batch_limit(self, max_batch: int, pad_s: float) -> int:
        """How many windows of this length share a batch: `max_batch` of the common length
        (`pad_s`), fewer of longer ones. A batch's working memory grows with its audio (a
        batch of eight 10 s windows needs about 40 MB more than one window, on tiny.en): a
        batch of long windows then needs about what warm-up's batch took at start-up."""
        common = round(pad_s * FRAMES_PER_SECOND)
        return max(1, max_batch * common // max(self.features.shape[-1], common))


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
    # The encoder output comes back to host memory (on a CPU, where it already is, this costs
    # nothing), so that each window's slice can be aligned for word timestamps on its own.
    encoded = model.model.encode(
        get_ctranslate2_storage(np.stack([w.features for w in windows])), to_cpu=True)
    languages = _languages(loaded, windows, encoded)
    tokenizers = [Tokenizer(model.hf_tokenizer, loaded.multilingual, task=w.options.task,
                            language=language) for w, (language, _) in zip(windows, languages)]
    prompts = [model.get_prompt(t, list(w.previous), prefix=w.options.prefix)
               for w, t in zip(windows, tokenizers)]
    # By the padded length, which every window in a batch shares (Window.key): a window then
    # decodes the same in a batch as alone, even one that loops.
    max_new = max_new_tokens(windows[0].features.shape[-1] / FRAMES_PER_SECOND)
    options = [_window_options(w.options, t) for w, t in zip(windows, tokenizers)]
    busy = len(windows) > 1 or (loaded.scheduler is not None and loaded.scheduler.depth > 0)
    if busy and loaded.batch_beam_size:
        # Under load (a batch, or windows waiting behind this one), a smaller beam: a batch
        # of 8 windows took 53 ms per window greedy against 127 ms at beam 5 (tiny.en, one
        # thread). Off by default (0): streams' windows are greedy already, and greedy
        # utterances under load cost a client's transcript +0.048 WER at 8 clients
        # (bench/capacity.py), for p90 latency no better (1.85 s against 1.76-1.95 s).
        options = [replace(o, beam_size=min(o.beam_size, loaded.batch_beam_size))
                   for o in options]
    if len(_temperatures(windows[0].options)) > 1:  # alone in its batch (Window.key)
        # faster-whisper refuses prompt + max_new_tokens past the model's 448 tokens.
        fallback = replace(options[0], max_new_tokens=min(
            max_new, model.max_length - len(prompts[0])))
        generated = [model.generate_with_fallback(encoded, prompts[0], tokenizers[0],
                                                  fallback)]
    else:
        # Up to the forced prefix (the same for the batch): a forced prefix counts against
        # max_new, as generated text does.
        prompt_length = len(model.get_prompt(tokenizers[0], list(windows[0].previous)))
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


def _temperatures(opts: TranscribeOptions) -> tuple[float, ...]:
    return opts.temperature if isinstance(opts.temperature, tuple) else (opts.temperature,)


def _window_options(opts: TranscribeOptions, tokenizer: Tokenizer) -> TranscriptionOptions:
    """faster-whisper's decoding options with its own `transcribe` defaults (the window path
    must decode as `transcribe` does: test_window_path_matches_faster_whisper)."""
    return TranscriptionOptions(
        beam_size=opts.beam_size, best_of=5, patience=1.0, length_penalty=1.0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, log_prob_threshold=-1.0,
        no_speech_threshold=0.6, compression_ratio_threshold=2.4,
        condition_on_previous_text=False, prompt_reset_on_temperature=0.5,
        temperatures=list(_temperatures(opts)), initial_prompt=None, prefix=None,
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
