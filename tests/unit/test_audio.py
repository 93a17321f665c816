import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import duration, read_wav, silent_flac, write_wav
from whisper_service.audio import (
    AudioError,
    AudioTooLong,
    as_float32,
    declared_duration,
    decode_file,
    iter_audio,
    pcm_to_float,
)


def test_decode_committed_wav(data_dir):
    audio = decode_file(data_dir / "en_short.wav")
    assert audio.dtype == np.float32
    assert len(audio) == round(duration("en_short") * 16000)
    assert np.abs(audio).max() > 0.1


def test_decode_resamples_stereo_44k(tmp_path):
    import av

    path = tmp_path / "tone.flac"
    t = np.arange(44100 * 2) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            (np.stack([tone, tone]) * 32767).astype(np.int16).reshape(1, -1), format="s16",
            layout="stereo")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    audio = decode_file(path)
    assert abs(len(audio) - 32000) < 400


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.wav", "no such file"),
        (lambda p: p, "is a directory"),
        (lambda p: (p / "empty.wav").write_bytes(b"") or p / "empty.wav", "file is empty"),
        (lambda p: (p / "junk.mp3").write_bytes(b"not audio at all" * 50) or p / "junk.mp3",
         "not a decodable audio file"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(AudioError, match=message) as info:
        decode_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_zero_length_wav(tmp_path):
    path = write_wav(tmp_path / "zero.wav")
    with pytest.raises(AudioError, match="no audio samples|not a decodable"):
        decode_file(path)


def test_pcm_conversions():
    s16 = np.array([0, 16384, -32768], dtype="<i2").tobytes()
    assert np.allclose(pcm_to_float(s16, "pcm_s16le"), [0, 0.5, -1])
    f32 = np.array([0.25, np.nan, np.inf, -7], dtype="<f4").tobytes()
    # Floats come as sent; the session's as_float32 is the one place that sanitises them.
    assert np.allclose(as_float32(pcm_to_float(f32, "pcm_f32le")), [0.25, 0, 1, -1])
    with pytest.raises(AudioError, match="multiple of 2"):
        pcm_to_float(b"\x00", "pcm_s16le")
    with pytest.raises(AudioError, match="unsupported encoding"):
        pcm_to_float(b"", "mulaw")  # type: ignore[arg-type]


def test_as_float32_accepts_int16_and_rejects_2d():
    assert as_float32(np.array([16384], dtype=np.int16))[0] == pytest.approx(0.5)
    with pytest.raises(AudioError, match="mono"):
        as_float32(np.zeros((2, 10), dtype=np.float32))


# --- Bounded decoding: iter_audio decodes as asked and stops at the length limit ---


@pytest.fixture(scope="module")
def hour_of_silence(tmp_path_factory) -> dict[str, Path]:
    """One hour of silence twice: a file that declares its length, and one that does not."""
    folder = tmp_path_factory.mktemp("silence")
    declared, undeclared = folder / "declared.flac", folder / "undeclared.flac"
    declared.write_bytes(silent_flac(3600))
    undeclared.write_bytes(silent_flac(3600, declared=False))
    assert undeclared.stat().st_size < 2_000_000  # precondition: tiny on disk
    return {"declared": declared, "undeclared": undeclared}


def test_iter_audio_chunks_join_to_the_whole_file(data_dir):
    path = data_dir / "en_long.wav"
    chunks = list(iter_audio(path, chunk_s=20))
    assert [len(c) for c in chunks[:-1]] == [20 * 16000] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) <= 20 * 16000 and len(chunks) == 4  # 65.6 s
    joined = np.concatenate(chunks)
    assert all(c.dtype == np.float32 for c in chunks)
    np.testing.assert_allclose(joined, decode_file(path), atol=1e-6)
    np.testing.assert_allclose(joined, read_wav(path), atol=1e-6)  # independent reader


def test_declared_duration(hour_of_silence, tmp_path):
    assert declared_duration(hour_of_silence["declared"]) == pytest.approx(3600)
    assert declared_duration(hour_of_silence["undeclared"]) is None
    assert declared_duration(tmp_path / "missing.flac") is None


def _peak_bytes(run) -> int:
    """Peak traced allocation while `run` goes (NumPy arrays are traced)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_declared_length_past_the_limit_is_refused_before_decoding(hour_of_silence):
    path = hour_of_silence["declared"]
    started = time.perf_counter()
    chunks = iter_audio(path, chunk_s=30, max_s=60)
    with pytest.raises(AudioTooLong, match=r"limit of 60 s \(0:01:00\); it declares 3600 s"):
        next(chunks)
    assert time.perf_counter() - started < 0.5  # decoding the hour takes ~1.5 s


def test_undeclared_length_is_refused_as_soon_as_the_limit_passes(hour_of_silence):
    """No duration in the container: the samples are counted, and decoding stops just past
    60 s, so an hour of audio costs a few MB, not the 230 MB of float32 it holds."""
    path = hour_of_silence["undeclared"]
    yielded = []

    def run() -> None:
        with pytest.raises(AudioTooLong, match=r"longer than the limit of 60 s") as info:
            for chunk in iter_audio(path, chunk_s=30, max_s=60, name="talk.flac"):
                yielded.append(len(chunk))
        assert str(info.value).startswith("talk.flac: ")

    peak = _peak_bytes(run)
    # Chunks within the limit, then the error (the frame that crosses 60 s raises).
    assert yielded and set(yielded) == {30 * 16000} and sum(yielded) <= 60 * 16000
    assert peak < 20e6, f"peak {peak / 1e6:.0f} MB while refusing 1 h of audio"


def test_decode_file_takes_the_limit(hour_of_silence, data_dir):
    with pytest.raises(AudioTooLong):
        decode_file(hour_of_silence["undeclared"], max_s=45)
    assert len(decode_file(data_dir / "en_short.wav", max_s=10)) == round(
        duration("en_short") * 16000)
