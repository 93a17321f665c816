"""Decoder's decode slots, with a fake model: many threads, at most num_workers decodes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from whisper_service.models import LoadedModel, ModelKey
from whisper_service.transcribe import Decoder, DecodeRequest, TranscribeOptions


class CountingModel:
    """Stands in for WhisperModel.transcribe: counts how many calls are inside it at once."""

    def __init__(self) -> None:
        self.model = SimpleNamespace(is_multilingual=False)
        self.lock = threading.Lock()
        self.active = self.peak = 0

    def _busy(self) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.01)
        with self.lock:
            self.active -= 1

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
    model = CountingModel()
    loaded = LoadedModel(ModelKey("fake.en", "cpu", "int8"), model, Path("."), 0.0,
                         threading.Semaphore(workers))
    request = DecodeRequest(np.zeros(16000, np.float32), TranscribeOptions(language="en"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(Decoder(loaded).decode(request)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(len(r.segments) == 3 for r in results)
    assert model.peak == workers
