"""The bounded feature extractor gives faster-whisper's features in a fraction of the memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from whisper_service.engine.features import BoundedFeatureExtractor


@pytest.fixture(scope="module")
def extractors() -> tuple[FeatureExtractor, BoundedFeatureExtractor]:
    theirs = FeatureExtractor(feature_size=80)
    return theirs, BoundedFeatureExtractor.like(theirs)


@pytest.mark.parametrize("samples", [0, 1, 399, 400, 401, 16000, 80000, 160037, 16000 * 31])
def test_same_features_as_faster_whisper(extractors, samples):
    """Every length, across block edges (a block is 5 s), to float32 rounding."""
    theirs, ours = extractors
    audio = (np.random.default_rng(samples).standard_normal(samples) * 0.1).astype(np.float32)
    expected, got = theirs(audio), ours(audio)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5


def test_padding_and_chunk_length_as_the_parent(extractors):
    theirs, ours = extractors
    audio = (np.random.default_rng(1).standard_normal(48000) * 0.1).astype(np.float32)
    assert np.abs(ours(audio, padding=0) - theirs(audio, padding=0)).max() <= 1e-5
    ours(audio, chunk_length=10)
    theirs(audio, chunk_length=10)
    assert (ours.n_samples, ours.nb_max_frames) == (theirs.n_samples, theirs.nb_max_frames)
    ours(audio, chunk_length=30)
    theirs(audio, chunk_length=30)


def test_working_memory_is_a_third_for_a_30_s_utterance(extractors):
    """faster-whisper's extractor peaks at about 1 MB per second of audio (29 MB for 30 s);
    this one at about a third, most of it the padded copy of the audio."""
    audio = (np.random.default_rng(2).standard_normal(16000 * 30) * 0.1).astype(np.float32)
    peaks = []
    for extractor in extractors:
        tracemalloc.start()
        extractor(audio)
        peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    theirs, ours = peaks
    assert ours < 12 and ours < theirs / 2, peaks
