"""Audio in: files (a chunk at a time, with a length limit) and PCM frames to 16 kHz mono
float32, with clear errors. Browsers' Opus chunks are `opus.py`'s."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal

import av
import numpy as np

SAMPLE_RATE = 16000

Encoding = Literal["pcm_s16le", "pcm_f32le", "webm_opus", "ogg_opus"]
OPUS_ENCODINGS = ("webm_opus", "ogg_opus")  # MediaRecorder chunks: see opus.py


class AudioError(ValueError):
    """Input that cannot be turned into audio; the message names the problem."""


class AudioTooLong(AudioError):
    """Audio past the length limit, found while decoding: the rest is never decoded. Upload
    caps count bytes, and a small FLAC can hold hours of silence (bench/uploads.py)."""


# A container's own duration may be a bitrate estimate (VBR MP3 without a header, ADTS AAC),
# so it refuses a file at once only this far past the limit; counted samples are the rule.
DECLARED_MARGIN = 1.05
WHOLE_CHUNK_S = 60.0  # decode_file joins chunks of this size
GROUP_SAMPLES = 16384  # decoded samples resampled at once (a third of a second at 48 kHz)


def iter_audio(source: str | Path | BinaryIO, chunk_s: float, max_s: float | None = None,
               name: str | None = None) -> Iterator[np.ndarray]:
    """16 kHz mono float32 in chunks of `chunk_s` (the last one shorter), decoded as they are
    asked for, so a long file never exists whole as samples.

    Raises AudioTooLong as soon as more than `max_s` seconds were decoded (at once when the
    container declares a duration well past it), and AudioError for input that is not audio.
    """
    label = name or str(source)
    source = _openable(source, label)
    chunk = max(1, round(chunk_s * SAMPLE_RATE))
    limit = None if max_s is None else round(max_s * SAMPLE_RATE)
    total = 0
    with _as_audio_error(label), av.open(source, metadata_errors="ignore") as container:
        _check_declared(container, max_s, label)
        pending: list[np.ndarray] = []
        size = 0
        for samples in _resampled(container, label):
            total += len(samples)
            if limit is not None and total > limit:
                raise AudioTooLong(f"{label}: audio is longer than the limit of "
                                   f"{_duration_text(max_s)}")
            pending.append(samples)
            size += len(samples)
            if size >= chunk:
                joined = np.concatenate(pending)
                pending, size = [joined[chunk:].copy()], size - chunk
                yield joined[:chunk]
        if size:
            yield np.concatenate(pending)
    if total == 0:
        raise AudioError(f"{label}: contains no audio samples")


def decode_file(source: str | Path | BinaryIO, name: str | None = None,
                max_s: float | None = None) -> np.ndarray:
    """The whole file as 16 kHz mono float32 (for audio known to be short)."""
    return np.concatenate(list(iter_audio(source, WHOLE_CHUNK_S, max_s, name)))


def declared_duration(source: str | Path) -> float | None:
    """The duration a file's container declares (for a progress bar's total), or None when it
    declares none or cannot be read (iter_audio then names the problem)."""
    try:
        with av.open(str(source), metadata_errors="ignore") as container:
            return _declared(container)
    except Exception:  # any unreadable file: iter_audio reports it properly
        return None


def _openable(source: str | Path | BinaryIO, label: str) -> str | BinaryIO:
    """A path checked for the usual mistakes (clearer than FFmpeg's words), or the stream."""
    if not isinstance(source, (str, Path)):
        return source
    path = Path(source)
    if not path.exists():
        raise AudioError(f"{label}: no such file")
    if path.is_dir():
        raise AudioError(f"{label}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{label}: file is empty")
    return str(path)


@contextmanager
def _as_audio_error(label: str) -> Iterator[None]:
    """PyAV raises a zoo of exception types for bad input; they all become AudioError here so
    callers report one clear line and carry on with other work."""
    try:
        yield
    except AudioError:
        raise
    except Exception as exc:  # PyAV's errors have no common base worth naming
        lines = str(exc).splitlines() or [type(exc).__name__]
        reason = getattr(exc, "strerror", None) or lines[0]
        raise AudioError(f"{label}: not a decodable audio file ({reason})") from None


def _resampled(container: av.container.InputContainer, label: str) -> Iterator[np.ndarray]:
    """The first audio stream as 16 kHz mono float32, an array per group of decoded frames,
    the resampler flushed at the end (as faster-whisper's decode_audio does)."""
    if not container.streams.audio:
        raise AudioError(f"{label}: not a decodable audio file (no audio stream)")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    try:
        for frame in itertools.chain(_grouped(_valid_frames(container)), [None]):
            for out in resampler.resample(frame):
                yield out.to_ndarray().reshape(-1)
    finally:
        # PyAV frees some resampler objects only on a collection (faster-whisper issue 390).
        del resampler
        gc.collect()


def _valid_frames(container: av.container.InputContainer) -> Iterator[av.AudioFrame]:
    """Decoded frames, skipping the ones FFmpeg finds corrupt, as faster-whisper does."""
    frames = container.decode(audio=0)
    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def _grouped(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    """Frames joined into frames of GROUP_SAMPLES, so the resampler is called less often (a
    call per codec frame made decoding a long Opus file take about twice as long)."""
    fifo = av.AudioFifo()
    for frame in frames:
        frame.pts = None  # the FIFO checks timestamps, which some files get wrong
        fifo.write(frame)
        if fifo.samples >= GROUP_SAMPLES:
            yield fifo.read()
    if fifo.samples:
        yield fifo.read()


def _check_declared(container: av.container.InputContainer, max_s: float | None,
                    label: str) -> None:
    """Refuse a file whose container declares it well past the limit, before decoding it."""
    declared = _declared(container)
    if max_s is not None and declared is not None and declared > max_s * DECLARED_MARGIN:
        raise AudioTooLong(f"{label}: audio is longer than the limit of "
                           f"{_duration_text(max_s)}; it declares {_duration_text(declared)}")


def _declared(container: av.container.InputContainer) -> float | None:
    streams = container.streams.audio
    if streams and streams[0].duration and streams[0].time_base:
        return float(streams[0].duration * streams[0].time_base)
    return container.duration / av.time_base if container.duration else None


def _duration_text(seconds: float) -> str:
    """3600 -> "3600 s (1:00:00)": the setting's unit, and what a person reads."""
    whole = round(seconds)
    return f"{seconds:g} s ({whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d})"


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
