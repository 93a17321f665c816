import numpy as np
import pytest

from tests.conftest import duration, write_wav
from whisper_service.audio import AudioError, as_float32, decode_file, pcm_to_float


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
