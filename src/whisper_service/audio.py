"""Audio in: decode files and PCM frames to 16 kHz mono float32, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

SAMPLE_RATE = 16000

Encoding = Literal["pcm_s16le", "pcm_f32le"]


class AudioError(ValueError):
    """Input that cannot be turned into audio; the message names the problem."""


def decode_file(source: str | Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """Decode any PyAV/ffmpeg-readable file to 16 kHz mono float32.

    PyAV raises a zoo of exception types for bad input; they all become AudioError here so
    callers report one clear line and carry on with other work.
    """
    from faster_whisper.audio import decode_audio

    label = name or str(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{label}: no such file")
        if path.is_dir():
            raise AudioError(f"{label}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{label}: file is empty")
        source = str(path)
    try:
        audio = decode_audio(source, sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # PyAV's errors have no common base worth naming
        lines = str(exc).splitlines() or [type(exc).__name__]
        reason = getattr(exc, "strerror", None) or lines[0]
        raise AudioError(f"{label}: not a decodable audio file ({reason})") from None
    if audio.size == 0:
        raise AudioError(f"{label}: contains no audio samples")
    return audio


def pcm_to_float(data: bytes, encoding: Encoding) -> np.ndarray:
    """Little-endian PCM bytes to float32 samples. pcm_f32le comes as sent (NaN and all):
    the session sanitises every push with `as_float32`, the one place that does."""
    if encoding == "pcm_s16le":
        if len(data) % 2:
            raise AudioError("pcm_s16le frame length must be a multiple of 2 bytes")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if encoding == "pcm_f32le":
        if len(data) % 4:
            raise AudioError("pcm_f32le frame length must be a multiple of 4 bytes")
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    raise AudioError(f"unsupported encoding {encoding!r}; use pcm_s16le or pcm_f32le")


class Resampler:
    """A client's float32 frames at `rate` to 16 kHz; stateful, so frame edges leave no
    clicks. FFmpeg's resampler through PyAV, which faster-whisper already depends on."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._av = None
        if rate != SAMPLE_RATE:
            import av

            self._av = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self._av is None or not len(samples):
            return samples
        import av

        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._av.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def as_float32(chunk: np.ndarray) -> np.ndarray:
    """Validate and normalise samples so garbage (NaN, inf, clipping) cannot poison model state."""
    chunk = np.asarray(chunk)
    if chunk.ndim != 1:
        raise AudioError(f"expected mono 1-D samples, got shape {chunk.shape}")
    if chunk.dtype == np.int16:
        return chunk.astype(np.float32) / 32768.0
    if not np.issubdtype(chunk.dtype, np.floating):
        raise AudioError(f"expected float32 or int16 samples, got dtype {chunk.dtype}")
    samples = np.nan_to_num(chunk.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(samples, -1.0, 1.0, out=samples)
