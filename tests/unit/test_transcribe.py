"""Decoder's decode slots, with a fake model: many threads, exactly num_workers decodes at once.

No timing: the fake model holds every call until `workers` calls were inside it together, so
the test only passes if that many decodes can run at once (else the gate times out), and a
counter shows that never more do."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from whisper_service.chunked import decode_chunks
from whisper_service.engine.decoder import MAX_HOTWORDS_TOKENS, Decoder
from whisper_service.engine.model import LoadedModel, ModelKey
from whisper_service.transcript import DecodeRequest, TranscribeOptions


class CountingModel:
    """Stands in for WhisperModel.transcribe: counts how many calls are inside it at once, and
    holds each call until `parties` calls have been inside together."""

    def __init__(self, parties: int) -> None:
        self.model = SimpleNamespace(is_multilingual=False)
        self.parties = parties
        self.cond = threading.Condition()
        self.active = self.peak = 0

    def _busy(self) -> None:
        with self.cond:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            opened = self.cond.wait_for(lambda: self.peak >= self.parties, timeout=30)
            self.active -= 1
        if not opened:
            raise TimeoutError(f"never {self.parties} decodes inside the model at once")

    def transcribe(self, audio, **_):
        self._busy()

        def windows():
            for i in range(3):
                self._busy()  # faster-whisper decodes each window lazily, as it is asked for
                yield SimpleNamespace(id=i, start=float(i), end=i + 1.0, text=" w", words=None,
                                      avg_logprob=-0.1, no_speech_prob=0.0,
                                      compression_ratio=1.0, temperature=0.0, tokens=[1])

        return windows(), SimpleNamespace(language="en", language_probability=1.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_decodes_wait_for_the_models_slots(workers):
    model = CountingModel(parties=workers)
    loaded = LoadedModel(ModelKey("fake.en", "cpu", "int8"), model, Path("."), 0.0,
                         threading.Semaphore(workers))
    request = DecodeRequest(np.zeros(16000, np.float32), TranscribeOptions(language="en"))
    results, errors = [], []

    def decode() -> None:
        try:
            results.append(Decoder(loaded).decode(request))
        except TimeoutError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=decode) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 8 and all(len(r.segments) == 3 for r in results)
    assert model.peak == workers


class LazyModel:
    """Stands in for WhisperModel.transcribe: records its options, and logs each window as
    its lazy generator decodes it, so the log shows when segments were handed on."""

    def __init__(self, log: list[str], tokenizer) -> None:
        self.model = SimpleNamespace(is_multilingual=False)
        self.hf_tokenizer = tokenizer  # counts the hotwords' tokens
        self.log, self.calls = log, []

    def transcribe(self, audio, **options):
        self.calls.append({"samples": len(audio), **options})
        call = len(self.calls)

        def windows():
            for i in range(2):
                self.log.append(f"decoded {call}.{i}")
                yield SimpleNamespace(id=i + 1, start=i + 0.5, end=i + 1.0, text=f" w{call}.{i}",
                                      words=None, avg_logprob=-0.1, no_speech_prob=0.0,
                                      compression_ratio=1.0, temperature=0.0, tokens=[1])

        return windows(), SimpleNamespace(language="en", language_probability=1.0)


def test_segments_are_handed_on_as_each_window_is_decoded_with_the_hotwords(
        tiny_en_tokenizer):
    """An upload's events come window by window: each segment reaches `on_segment` as soon as
    the next one is known (its end may have to be clamped to the next one's start: see
    timeline.ordered), and the chunk's last one when the chunk is done, on the file's
    timeline, numbered on; every chunk's decode gets the hotwords."""
    log: list[str] = []
    model = LazyModel(log, tiny_en_tokenizer)
    loaded = LoadedModel(ModelKey("fake.en", "cpu", "int8"), model, Path("."), 0.0)
    chunks = [np.zeros(30 * 16000, np.float32), np.zeros(10 * 16000, np.float32)]
    got = []

    def on_segment(seg):
        got.append(seg)
        log.append(f"sent {seg.text.strip()}")

    options = TranscribeOptions(language="en", hotwords="Katelynn Smyth")
    result = decode_chunks(Decoder(loaded), chunks, options, on_segment=on_segment)
    assert log == ["decoded 1.0", "decoded 1.1", "sent w1.0", "sent w1.1",
                   "decoded 2.0", "decoded 2.1", "sent w2.0", "sent w2.1"]
    assert tuple(got) == result.segments and [s.id for s in got] == [1, 2, 3, 4]
    cut = model.calls[0]["samples"] / 16000  # the first chunk ends in its quietest stretch
    assert [s.start for s in got] == pytest.approx([0.5, 1.5, cut + 0.5, cut + 1.5])
    assert [c["hotwords"] for c in model.calls] == ["Katelynn Smyth"] * 2
    model.calls.clear()
    Decoder(loaded).decode(DecodeRequest(chunks[1], TranscribeOptions(language="en")))
    assert model.calls[0]["hotwords"] is None  # none given: faster-whisper's default


def test_hotwords_past_the_token_limit_are_refused_before_any_decode(tiny_en_tokenizer):
    model = LazyModel([], tiny_en_tokenizer)
    decoder = Decoder(LoadedModel(ModelKey("fake.en", "cpu", "int8"), model, Path("."), 0.0))
    names = "Katelynn Smyth, Siobhán Ní Bhriain, Jörg Müller, Nguyễn Văn An, "
    fits = names * 2
    assert len(tiny_en_tokenizer.encode(" " + fits).ids) <= MAX_HOTWORDS_TOKENS
    decoder.check(TranscribeOptions(hotwords=fits))
    too_many = names * 6  # 396 characters: under the form's limit, not under the tokens'
    with pytest.raises(ValueError, match=rf"hotwords: \d+ tokens, more than {MAX_HOTWORDS_TOKENS}"):
        decoder.decode(DecodeRequest(np.zeros(16000, np.float32),
                                     TranscribeOptions(language="en", hotwords=too_many)))
    assert model.calls == []
