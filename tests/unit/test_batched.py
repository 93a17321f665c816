"""batched.decode_batched with a fake decoder and fixed speech regions: how the speech is cut
into windows, where their words land on the file's timeline, which language and prefix each
window gets, when windows are due, what happens to a window that fails Whisper's thresholds,
and that a caller who stops stops the work."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from whisper_service import batched
from whisper_service.batched import decode_batched, decode_file
from whisper_service.transcript import Segment, TranscribeOptions, Transcript, Word

RATE = 16000


class Tokens:
    """Stands in for the tokenizers.Tokenizer: a token per character."""

    def encode(self, text, add_special_tokens=False):
        return SimpleNamespace(ids=[ord(c) for c in text])


class WindowDecoder:
    """Stands in for `Decoder`: each window comes back as one segment whose words sit one per
    second of the window, at [k + 0.25, k + 0.75] s, "w<k>" each, the last one ending a
    sentence. `pending` windows (by submission order) are left undone, `results` override."""

    def __init__(self, multilingual: bool = False, pending: tuple[int, ...] = (),
                 results: dict[int, Transcript] | None = None) -> None:
        self.loaded = SimpleNamespace(multilingual=multilingual,
                                      model=SimpleNamespace(hf_tokenizer=Tokens()),
                                      key=SimpleNamespace(name="fake"))
        self.requests: list = []
        self.futures: list[Future] = []
        self.pending = pending
        self.results = results or {}

    def check(self, options) -> None:
        pass

    def submit(self, request) -> Future:
        return self.submit_all([request])[0]

    def submit_all(self, requests) -> list[Future]:
        out = []
        for request in requests:
            n = len(self.requests)
            self.requests.append(request)
            future: Future = Future()
            if n not in self.pending:
                future.set_result(self.results.get(n) or self.answer(request))
            self.futures.append(future)
            out.append(future)
        return out

    @staticmethod
    def answer(request) -> Transcript:
        seconds = int(len(request.audio) / RATE)
        words = tuple(Word(k + 0.25, k + 0.75, f" w{k}" + ("." if k == seconds - 1 else ""), 0.9)
                      for k in range(seconds))
        text = "".join(w.word for w in words)
        segment = Segment(1, 0.0, len(request.audio) / RATE, text, words, -0.2, 0.01, 1.2)
        return Transcript(request.options.language or "de", 0.75, len(request.audio) / RATE,
                          (segment,))


@pytest.fixture
def regions(monkeypatch):
    """The VAD's regions, given per call in seconds: the chunks' speech as the test says."""
    answers: list[list[tuple[float, float]]] = []

    def speech(audio, options):
        spans = answers.pop(0) if answers else []
        return [{"start": round(a * RATE), "end": round(b * RATE)} for a, b in spans]

    monkeypatch.setattr(batched, "get_speech_timestamps", speech)
    return answers


def chunks(*seconds: float) -> list[np.ndarray]:
    return [np.full(round(s * RATE), 0.1, np.float32) for s in seconds]


OPTIONS = TranscribeOptions(language="en", word_timestamps=True)


def test_words_land_on_the_file_timeline_with_the_pauses_put_back(regions):
    """Two regions share a window with the pause between them left out; their words come back
    at their places in the file, in sentence segments, none overlapping."""
    regions.append([(1.0, 3.0), (10.0, 12.0)])
    result = decode_batched(WindowDecoder(), chunks(40), OPTIONS)
    words = [(w.start, w.end) for s in result.segments for w in s.words]
    assert words == [(1.25, 1.75), (2.25, 2.75), (10.25, 10.75), (11.25, 11.75)]
    assert [s.text for s in result.segments] == [" w0 w1", " w2 w3."]  # cut at the pause
    assert [(s.id, s.start, s.end) for s in result.segments] == [(1, 1.25, 2.75),
                                                                 (2, 10.25, 11.75)]
    assert result.duration == 40.0


def test_speech_at_a_chunks_end_is_decoded_with_the_next_chunk(regions):
    """A region that reaches the end of its chunk may go on: it is cut at its start and
    decoded with the next chunk, whose times count from there."""
    regions.extend([[(5.0, 7.0), (58.5, 60.0)], [(0.5, 4.5)]])
    decoder = WindowDecoder()
    result = decode_batched(decoder, chunks(60, 30), OPTIONS)
    assert [len(r.audio) / RATE for r in decoder.requests] == [2.0, 4.0]
    starts = [w.start for s in result.segments for w in s.words]
    assert starts == [5.25, 6.25, 58.5 + 0.5 + 0.25, 60.25, 61.25, 62.25]
    assert result.duration == 90.0


def test_windows_hold_at_most_30_s_of_speech(regions):
    regions.append([(0, 20), (21, 35), (36, 50), (51, 59)])
    decoder = WindowDecoder()
    decode_batched(decoder, chunks(60), OPTIONS)
    assert [len(r.audio) / RATE for r in decoder.requests] == [20.0, 28.0, 8.0]


def test_language_is_detected_on_the_first_window_and_kept_for_the_file(regions):
    regions.append([(0, 5), (6, 10), (31, 40), (41, 59)])
    decoder = WindowDecoder(multilingual=True)
    result = decode_batched(decoder, chunks(60),
                            TranscribeOptions(language=None, prefix="So"))
    assert [r.options.language for r in decoder.requests] == [None, "de"]
    assert [r.options.prefix for r in decoder.requests] == ["So", None]
    assert (result.language, result.language_probability) == ("de", 0.75)


def test_windows_are_text_only_timed_by_words_and_due_after_the_streams(regions):
    """Streams' windows are due when queued; a file's come later, so they wait for them."""
    regions.append([(0, 5)])
    decoder = WindowDecoder()
    before = time.monotonic()
    result = decode_batched(decoder, chunks(30), replace(OPTIONS, word_timestamps=False,
                                                         initial_prompt="Smyth"))
    request = decoder.requests[0]
    assert request.deadline >= before + batched.FILE_WINDOW_SLACK_S
    assert request.window and request.pad_s == 30
    assert request.options.without_timestamps and request.options.word_timestamps
    assert request.options.temperature == 0.0
    assert request.options.initial_prompt == tuple(ord(c) for c in " Smyth")
    assert result.segments[0].words == ()  # not asked for: times kept, words not given


def test_a_window_that_loops_is_decoded_again_with_the_temperature_fallback(regions):
    regions.append([(0, 4), (10, 40)])
    looped = WindowDecoder.answer(SimpleNamespace(
        audio=np.zeros(4 * RATE), options=SimpleNamespace(language="en")))
    looped = replace(looped, segments=(replace(looped.segments[0], compression_ratio=3.1),))
    decoder = WindowDecoder(results={0: looped})
    decode_batched(decoder, chunks(60), OPTIONS)
    temperatures = [r.options.temperature for r in decoder.requests]
    assert temperatures == [0.0, 0.0, OPTIONS.temperature]
    assert len(decoder.requests[2].audio) == len(decoder.requests[0].audio)


def test_a_window_the_model_doubts_and_hears_as_silence_gives_nothing(regions):
    regions.append([(0, 4)])
    silent = WindowDecoder.answer(SimpleNamespace(
        audio=np.zeros(4 * RATE), options=SimpleNamespace(language="en")))
    silent = replace(silent, segments=(replace(silent.segments[0], no_speech_prob=0.9,
                                               avg_logprob=-1.5),))
    result = decode_batched(WindowDecoder(results={0: silent}), chunks(30), OPTIONS)
    assert result.segments == ()


def test_a_caller_who_stops_cancels_the_windows_still_queued(regions):
    regions.append([(0, 20), (21, 45), (46, 70), (71, 99)])
    decoder = WindowDecoder(pending=(1, 2, 3))

    def progress(seconds: float) -> None:
        raise ConnectionError("client gone")

    with pytest.raises(ConnectionError):
        decode_batched(decoder, chunks(100), OPTIONS, on_progress=progress)
    assert [f.cancelled() for f in decoder.futures] == [False, True, True, True]


def test_segments_end_at_sentences_pauses_and_before_they_grow_too_long():
    def word(start, end, text):
        return Word(start, end, text, 0.9)

    words = [word(0, 1, " One."), word(1, 2, " two"), word(3.5, 4, " three"),
             *[word(4 + i, 5 + i, " x" + ("," if i == 3 else "")) for i in range(12)]]
    runs = [[w.word for w in run] for run in batched._split(words)]
    assert runs[0] == [" One."]
    assert runs[1] == [" two"]  # a pause of 1.5 s follows
    assert runs[2] == [" three", " x", " x", " x", " x,"]  # cut after the comma at 12 s
    assert sum(len(r) for r in runs) == len(words)
    assert all(run for run in runs)


def test_files_set_sequential_without_vad_or_with_a_prompt_take_the_chained_path(monkeypatch):
    taken = []
    monkeypatch.setattr(batched, "decode_chunks", lambda *a: taken.append("sequential"))
    monkeypatch.setattr(batched, "decode_batched", lambda *a: taken.append("batched"))
    decode_file(None, [], OPTIONS)
    decode_file(None, [], OPTIONS, "sequential")
    decode_file(None, [], replace(OPTIONS, vad_filter=False))
    decode_file(None, [], replace(OPTIONS, initial_prompt="Smyth"))
    decode_file(None, [], replace(OPTIONS, hotwords="Smyth"))
    assert taken == ["batched"] + ["sequential"] * 4
