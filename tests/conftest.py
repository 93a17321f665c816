"""Shared fixtures: one ModelManager per test run, each model loaded at most once."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import tempfile
import wave
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from whisper_service.memory import tune_heap

DATA = Path(__file__).parent / "data"

# The heap as `serve` sets it up (two glibc arenas, fixed thresholds), before any thread
# exists: the memory tests then measure what the server would hold. With glibc's default (up
# to 16 arenas on two cores), the 500-session test once read +46 MB in the full suite, and +0
# on its own.
tune_heap()

# A private model cache for this run, shared with CLI subprocesses through the environment,
# and removed at the end so the suite leaves nothing behind.
_CACHE = tempfile.mkdtemp(prefix="whisper-service-test-cache-")
os.environ["WHISPER_SERVICE_CACHE_DIR"] = _CACHE
_SUMMARY: dict[str, object] = {}


def read_wav(path: Path) -> np.ndarray:
    """16 kHz mono int16 WAV to float32 (the committed test speech)."""
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768


@contextmanager
def held(manager, name: str):
    """A model reference for the length of a block."""
    loaded = manager.acquire(name)
    try:
        yield loaded
    finally:
        manager.release(loaded)


def write_wav(path: Path, audio: np.ndarray | None = None, rate: int = 16000) -> Path:
    """Mono int16 WAV of float samples in [-1, 1] (none: a valid file with zero samples)."""
    samples = np.zeros(0) if audio is None else audio
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


class Pipe(io.RawIOBase):
    """An unseekable sink, as a pipe is: a muxer writing to it cannot go back to state the
    file's length in its header (FLAC, WebM), so a decoder finds it out only by decoding."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        self.data += bytes(chunk)
        return len(chunk)

    def getvalue(self) -> bytes:
        """What was written, as `io.BytesIO.getvalue` gives it."""
        return bytes(self.data)


def encode_audio(samples: np.ndarray, container: str, codec: str, rate: int = 16000,
                 sink: Pipe | io.BytesIO | None = None) -> bytes:
    """16 kHz float samples encoded with PyAV (as ffmpeg would), resampled to the codec's
    `rate` and sample format; written to `sink` (a Pipe, say) or to memory."""
    import av

    sink = sink if sink is not None else io.BytesIO()
    with av.open(sink, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name,
                                      layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return sink.getvalue()


def silent_flac(seconds: int, declared: bool = True, rate: int = 8000) -> bytes:
    """Digital silence as FLAC: an hour is ~0.4 MB on disk and ~230 MB as float32 at 16 kHz
    (a decompression bomb). With `declared=False` it is written as to a pipe, so the file
    cannot state its length and a decoder finds it out only by decoding."""
    import av

    sink = io.BytesIO() if declared else Pipe()
    block = np.zeros((1, rate * 60), np.int16)
    with av.open(sink, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        for _ in range(seconds // 60):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return sink.getvalue()


def reference(name: str) -> str:
    return (DATA / f"{name}.txt").read_text(encoding="utf-8").strip()


def duration(name: str) -> float:
    """Length of a committed WAV in seconds, so no test hard-codes it."""
    with wave.open(str(DATA / f"{name}.wav")) as w:
        return w.getnframes() / w.getframerate()


def english_wer(reference_text: str, hypothesis: str) -> float:
    """WER after Whisper's own English normalizer ("$380" = "380 dollars", "4,172" = "4172",
    British = American spelling), the normalization Whisper's published WERs use."""
    from jiwer import wer

    normalizer = _english_normalizer()
    return wer(normalizer(reference_text), normalizer(hypothesis) or "<empty>")


@lru_cache(maxsize=1)
def _english_normalizer():
    """Built once: it loads a spelling table of its own."""
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def backend() -> str:
    """The CTranslate2 int8 backend this run forces, if any (see tests/README.md)."""
    forced = [f"{name}={os.environ[name]}" for name in
              ("CT2_USE_MKL", "CT2_FORCE_CPU_ISA", "ONEDNN_MAX_CPU_ISA") if os.environ.get(name)]
    return ", ".join(forced) or "the CPU vendor's default"


def assert_wer(label: str, reference_text: str, hypothesis: str, bound: float) -> float:
    """Assert WER < bound. With WHISPER_SERVICE_TEST_WER_LOG set, every observed value is
    appended there first (pass or fail), so bench/backends.py can tabulate the margins."""
    error = english_wer(reference_text, hypothesis)
    log = os.environ.get("WHISPER_SERVICE_TEST_WER_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"label": label, "backend": backend(), "wer": round(error, 4),
                                "bound": bound, "text": hypothesis}) + "\n")
    assert error < bound, f"{label}: WER {error:.3f} >= {bound} for {hypothesis!r}"
    return error


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def model_manager():
    from whisper_service.config import Settings
    from whisper_service.engine.manager import ModelManager

    manager = ModelManager.from_settings(Settings(cache_dir=Path(_CACHE)))
    yield manager
    counts = {k.name: n for k, n in manager.load_counts.items()}
    _SUMMARY["models"] = {k.name: round(m.load_seconds, 2) for k, m in manager.loaded.items()}
    manager.close()
    assert all(n == 1 for n in counts.values()), f"a model was loaded more than once: {counts}"


@pytest.fixture(scope="session")
def tiny_en(model_manager):
    loaded = model_manager.acquire("tiny.en")
    yield loaded
    model_manager.release(loaded)


@pytest.fixture(scope="session")
def base(model_manager):
    loaded = model_manager.acquire("base")
    yield loaded
    model_manager.release(loaded)


def pytest_report_header(config):
    return f"CTranslate2 int8 backend: {backend()} (CT2_USE_MKL / CT2_FORCE_CPU_ISA)"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    models = _SUMMARY.get("models", {})
    loaded = ", ".join(f"{n} (load {s}s)" for n, s in models.items()) or "none"
    terminalreporter.write_sep("-", "memory summary")
    terminalreporter.write_line(f"test process peak RSS: {peak_mb:.0f} MB; models loaded: {loaded}")
