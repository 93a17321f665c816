"""Unit tests for the streaming Silero VAD (whisper_service.vad)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from faster_whisper.vad import SileroVADModel

from tests.conftest import DATA, read_wav
from whisper_service.audio import as_float32
from whisper_service.vad import (
    MODEL_PATH,
    SILERO_WINDOW,
    VadEvent,
    VADIterator,
    VadOptions,
    get_vad_model,
)

SR = 16000
WINDOW = SILERO_WINDOW


def load(name: str) -> np.ndarray:
    return read_wav(DATA / f"{name}.wav")


def run(audio: np.ndarray, sizes=None, options: VadOptions = VadOptions()) -> list[VadEvent]:
    """All events for `audio` fed in chunks of `sizes` (int, or iterable cycled), plus flush."""
    it = VADIterator(options=options)
    if sizes is None:
        return it(audio) + it.flush()
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    events, pos, i = [], 0, 0
    while pos < len(audio):
        n = sizes[i % len(sizes)]
        events += it(audio[pos : pos + n])
        pos, i = pos + n, i + 1
    assert it.current_sample == len(audio)
    return events + it.flush()


def assert_well_formed(events: list[VadEvent], total: int) -> None:
    """Alternating start/end pairs, increasing, within the stream."""
    assert events, "expected speech events"
    assert [e.kind for e in events] == ["start", "end"] * (len(events) // 2)
    samples = [e.sample for e in events]
    assert samples == sorted(samples)
    assert 0 <= samples[0] and samples[-1] <= total


@pytest.fixture(scope="module")
def en_short() -> np.ndarray:
    return load("en_short")


@pytest.fixture(scope="module")
def en_passage() -> np.ndarray:
    return load("en_passage")


# 1. Chunking must not change the result.
@pytest.mark.parametrize("sizes", [160, 512, 1000, 16000, "random"])
def test_chunk_size_invariance(en_short, sizes):
    if sizes == "random":
        sizes = np.random.default_rng(1234).integers(1, 5000, size=200).tolist()
    reference = run(en_short)
    assert_well_formed(reference, len(en_short))
    assert run(en_short, sizes) == reference


def test_single_sample_chunks(en_short):
    clip = np.concatenate([en_short[: 3 * SR], np.zeros(SR, np.float32)])
    reference = run(clip)
    assert_well_formed(reference, len(clip))
    assert run(clip, 1) == reference


def test_int16_input_matches_float(en_short):
    pcm = np.round(en_short * 32768).astype(np.int16)
    it = VADIterator()
    assert it(as_float32(pcm)) + it.flush() == run(en_short)


def test_speech_regions_follow_sentences(en_passage):
    # Six sentences with a second of silence between them: one region each, and every
    # region ends inside the pause that follows its sentence.
    events = run(en_passage, 4000)
    assert_well_formed(events, len(en_passage))
    assert len(events) == 2 * 6
    for end in (e.sample for e in events if e.kind == "end"):
        assert np.abs(en_passage[end - WINDOW : end]).max() < 1e-3  # a pause, not a word


def test_default_settings_bridge_short_pauses():
    # Continuous reading: tight silence settings split it at sentence gaps; the defaults
    # (500 ms of silence) keep going.
    en_long = load("en_long")
    tight = run(en_long, 4000, VadOptions(min_silence_duration_ms=100, min_speech_duration_ms=0))
    assert_well_formed(tight, len(en_long))
    assert len(tight) // 2 >= 8
    assert len(run(en_long, 4000)) < len(tight)


# 2. Sessions share one model but no state.
def test_interleaved_sessions_are_independent(en_short, en_passage):
    assert get_vad_model() is get_vad_model()
    alone_a, alone_b = run(en_short, 1000), run(en_passage, 777)
    a, b = VADIterator(), VADIterator()
    assert a.model is b.model is get_vad_model()
    ev_a, ev_b, pa, pb = [], [], 0, 0
    while pa < len(en_short) or pb < len(en_passage):
        ev_a += a(en_short[pa : pa + 1000])
        ev_b += b(en_passage[pb : pb + 777])
        pa, pb = pa + 1000, pb + 777
    assert ev_a + a.flush() == alone_a
    assert ev_b + b.flush() == alone_b
    assert alone_a != alone_b


def test_concurrent_threads_share_model(en_short, en_passage):
    expected = {"a": run(en_short, 800), "b": run(en_passage, 800)}
    results: dict[str, list[VadEvent]] = {}

    def worker(key: str, audio: np.ndarray) -> None:
        results[key] = run(audio, 800)

    threads = [
        threading.Thread(target=worker, args=("a", en_short)),
        threading.Thread(target=worker, args=("b", en_passage)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


# 3. Garbage input is sanitised once, at the boundary (`as_float32`, which sessions apply to
# every push), and then never fatal.
def test_bad_values_do_not_crash(en_short):
    it = VADIterator()
    for chunk in (
        np.full(700, np.nan, np.float32),
        np.array([np.inf, -np.inf, np.nan] * 300, np.float32),
        np.zeros(0, np.float32),
        np.full(1, np.nan, np.float32),
        np.linspace(-5, 5, 1500).astype(np.float32),
    ):
        assert it(as_float32(chunk)) == []  # none of it is speech
    assert it.current_sample == 700 + 900 + 0 + 1 + 1500
    assert it.last_probability is not None and np.isfinite(it.last_probability)
    assert it(np.zeros(0, np.float32)) == []


def test_nan_is_silence_and_overdrive_is_clipped(en_short):
    silence_then_speech = run(np.concatenate([np.zeros(SR, np.float32), en_short]))
    nan_then_speech = np.concatenate([np.full(SR, np.nan, np.float32), en_short])
    assert run(as_float32(nan_then_speech)) == silence_then_speech
    loud = np.clip(en_short * 20, -1, 1)
    assert run(as_float32(en_short * 20)) == run(loud)
    assert_well_formed(run(loud), len(loud))


def test_bad_shapes_and_dtypes_never_reach_the_vad():
    it = VADIterator()
    with pytest.raises(ValueError, match="1-D"):
        it(as_float32(np.zeros((2, 512), np.float32)))
    with pytest.raises(ValueError, match="1-D"):
        it(as_float32(np.float32(0.0)))
    with pytest.raises(ValueError, match="dtype"):
        it(as_float32(np.zeros(512, np.int32)))
    assert it.current_sample == 0


# 4. Configuration errors are explicit.


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"neg_threshold": 0.7}, "neg_threshold"),
        ({"neg_threshold": 0.0}, "neg_threshold"),
        ({"min_silence_duration_ms": -1}, "min_silence_duration_ms"),
        ({"speech_pad_ms": -10}, "speech_pad_ms"),
        ({"min_speech_duration_ms": -5}, "min_speech_duration_ms"),
    ],
)
def test_bad_options(kwargs, field):
    with pytest.raises(ValueError, match=field):
        VadOptions(**kwargs)


def test_neg_threshold_default():
    assert VadOptions().effective_neg_threshold == pytest.approx(0.35)
    assert VadOptions(threshold=0.1).effective_neg_threshold == pytest.approx(0.01)
    assert VadOptions(neg_threshold=0.2).effective_neg_threshold == 0.2


# 5. No speech, no events.
@pytest.mark.parametrize("kind", ["zeros", "noise"])
def test_silence_and_noise_give_no_events(kind):
    if kind == "zeros":
        audio = np.zeros(5 * SR, np.float32)
    else:
        audio = (0.01 * np.random.default_rng(7).standard_normal(5 * SR)).astype(np.float32)
    it = VADIterator()
    probs = []
    for pos in range(0, len(audio), WINDOW):
        assert it(audio[pos : pos + WINDOW]) == []
        probs.append(it.last_probability)
    assert max(probs) < VadOptions().threshold
    assert it.flush() == [] and not it.triggered


# 6. Streaming == faster-whisper's batched scoring.
def test_streaming_probabilities_match_faster_whisper(en_passage):
    n = 300
    audio = en_passage[: n * WINDOW].copy()
    batched = SileroVADModel(MODEL_PATH)(audio.copy()).reshape(-1)  # it mutates its input
    it = VADIterator()
    streamed = []
    for pos in range(0, len(audio), WINDOW):
        it(audio[pos : pos + WINDOW])
        streamed.append(it.last_probability)
    streamed = np.array(streamed)
    assert streamed.shape == batched.shape == (n,)
    assert streamed.max() > 0.9 and streamed.min() < 0.1  # speech and pauses both covered
    # faster-whisper zeroes the final window's last 64 samples, so skip that window.
    np.testing.assert_allclose(streamed[:-1], batched[:-1], atol=1e-4)


# 7. reset() starts over.
def test_reset_gives_fresh_state(en_short):
    it = VADIterator()
    first = it(en_short) + it.flush()
    assert_well_formed(first, len(en_short))
    continued = it(en_short) + it.flush()
    assert continued[0].sample >= len(en_short)  # without reset positions keep counting
    it(en_short[: 2 * SR + 100])
    assert it.triggered
    it.reset()
    assert it.current_sample == 0 and not it.triggered and it.last_probability is None
    assert it(en_short) + it.flush() == first


def test_flush_closes_open_speech_at_stream_position(en_short):
    it = VADIterator()
    events = it(en_short[: 3 * SR + 123])
    assert [e.kind for e in events] == ["start"] and it.triggered
    assert it.flush() == [VadEvent("end", 3 * SR + 123)]
    assert not it.triggered and it.flush() == []


# 8. Events are absolute stream positions.
def test_events_are_absolute_samples(en_short):
    shift = 2 * SR
    base = run(en_short)
    shifted = run(np.concatenate([np.zeros(shift, np.float32), en_short]))
    assert abs(shifted[0].sample - base[0].sample - shift) <= WINDOW + 100 * SR // 1000
    assert shifted[0].kind == "start"


# 9. min_speech_duration_ms filters short regions without lookahead.
def test_short_burst_is_filtered(en_short):
    silence = np.zeros(SR, np.float32)
    burst = np.concatenate([silence, en_short[SR : SR + SR // 10], silence])  # 100 ms of speech
    unfiltered = run(burst, 1000, VadOptions(min_speech_duration_ms=0))
    assert [e.kind for e in unfiltered] == ["start", "end"]  # Silero does see the burst
    assert run(burst, 1000, VadOptions(min_speech_duration_ms=250)) == []


def test_start_is_delayed_but_not_moved(en_short):
    def first_start(min_speech_ms: int) -> tuple[VadEvent, int]:
        it = VADIterator(options=VadOptions(min_speech_duration_ms=min_speech_ms))
        for pos in range(0, len(en_short), WINDOW):
            events = it(en_short[pos : pos + WINDOW])
            if events:
                return events[0], it.current_sample

    eager, eager_at = first_start(0)
    delayed, delayed_at = first_start(250)
    assert eager == delayed and eager.kind == "start"
    assert delayed_at - eager_at >= 250 * SR // 1000 - WINDOW
