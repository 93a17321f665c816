"""Whisper's log-Mel features, as faster-whisper computes them, in bounded working memory.

faster-whisper's `FeatureExtractor` frames the whole waveform at once: its temporaries (the
frames, their spectra, the magnitudes) grow with the audio, several times the features
themselves. Sessions compute features on their own threads, several at once under load, and
the heap keeps its peak (memory.tune_heap). Here the same steps (the parent's `stft` and mel
filters) run over blocks of frames into one preallocated output, so the temporaries are a
block's, and most of what remains is the padded copy of the audio.
"""

from __future__ import annotations

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

BLOCK_FRAMES = 500  # 5 s of frames per block


class BoundedFeatureExtractor(FeatureExtractor):
    """A drop-in `FeatureExtractor`: the same features (to float32 rounding), block by block."""

    @classmethod
    def like(cls, other: FeatureExtractor) -> BoundedFeatureExtractor:
        return cls(feature_size=other.mel_filters.shape[0], sampling_rate=other.sampling_rate,
                   hop_length=other.hop_length, chunk_length=other.chunk_length,
                   n_fft=other.n_fft)

    def __call__(self, waveform: np.ndarray, padding: int = 160,
                 chunk_length: int | None = None) -> np.ndarray:
        if chunk_length is not None:  # as the parent does: it sets the window length
            self.n_samples = chunk_length * self.sampling_rate
            self.nb_max_frames = self.n_samples // self.hop_length
        waveform = np.asarray(waveform, dtype=np.float32)
        if padding:
            waveform = np.pad(waveform, (0, padding))
        half = self.n_fft // 2  # the parent's centred frames: reflect-padded at both ends
        padded = np.pad(waveform, (half, half), mode="reflect")
        frames = 1 + (len(padded) - self.n_fft) // self.hop_length - 1  # the last one dropped
        window = np.hanning(self.n_fft + 1)[:-1].astype("float32")
        mel = np.empty((self.mel_filters.shape[0], max(frames, 0)), np.float32)
        for start in range(0, frames, BLOCK_FRAMES):
            stop = min(start + BLOCK_FRAMES, frames)
            block = padded[start * self.hop_length:(stop - 1) * self.hop_length + self.n_fft]
            spectrum = self.stft(block, self.n_fft, self.hop_length, window=window,
                                 center=False, return_complex=True).astype("complex64")
            mel[:, start:stop] = self.mel_filters @ (np.abs(spectrum) ** 2)
        np.clip(mel, 1e-10, None, out=mel)
        np.log10(mel, out=mel)
        if mel.size:
            np.maximum(mel, mel.max() - 8.0, out=mel)
        mel += 4.0
        mel /= 4.0
        return mel
