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

from whisper_service.models import LoadedModel, ModelKey
from whisper_service.transcribe import Decoder, DecodeRequest, TranscribeOptions


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
