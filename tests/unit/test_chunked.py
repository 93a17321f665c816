"""chunked.decode_chunks with a fake model: where chunks are cut, what each chunk is prompted
with and in which language it is decoded, and how its segments land in the file's time."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from whisper_service.chunked import decode_chunks, quiet_cut
from whisper_service.engine.decoder import Decoder
from whisper_service.engine.model import LoadedModel, ModelKey
from whisper_service.transcript import TranscribeOptions

RATE = 16000


class ChunkModel:
    """Stands in for WhisperModel.transcribe: records each call and answers one segment from
    0.5 s to 0.5 s before the end of the audio it was given, with tokens naming the call."""

    def __init__(self, silent_calls: tuple[int, ...] = (), escape_s: float = 0.0) -> None:
        self.model = SimpleNamespace(is_multilingual=True)
        self.calls: list[dict] = []
        self.silent_calls = silent_calls
        self.escape_s = escape_s  # end the segment (and its last word) this far past the audio

    def transcribe(self, audio, **options):
        self.calls.append({"samples": len(audio), **options})
        n = len(self.calls)
        end = len(audio) / RATE - 0.5 + self.escape_s
        words = [SimpleNamespace(start=0.6, end=1.0, word=" w", probability=0.9),
                 SimpleNamespace(start=1.0, end=end, word=" x", probability=0.9)]
        segments = [] if n in self.silent_calls else [SimpleNamespace(
            id=1, start=0.5, end=end, text=f" chunk {n}", words=words, avg_logprob=-0.1,
            no_speech_prob=0.0, compression_ratio=1.0, temperature=0.0, tokens=[100 + n, 200 + n])]
        return iter(segments), SimpleNamespace(language="de", language_probability=0.875)


def speech_like(seconds: float) -> np.ndarray:
    """1 s of tone, 0.3 s of silence, over and over: the cuts must land in the silences."""
    t = np.arange(round(seconds * RATE)) / RATE
    tone = 0.5 * np.sin(2 * np.pi * 220 * t)
    return np.where(t % 1.3 < 1.0, tone, 0.0).astype(np.float32)


def chunked(audio: np.ndarray, chunk_s: float) -> list[np.ndarray]:
    size = round(chunk_s * RATE)
    return [audio[i:i + size] for i in range(0, len(audio), size)]


def decoder_for(model: ChunkModel) -> Decoder:
    return Decoder(LoadedModel(ModelKey("fake", "cpu", "int8"), model, Path("."), 0.0))


def test_chunks_are_cut_in_silence_and_their_times_and_ids_run_on():
    audio = speech_like(70.0)
    model = ChunkModel()
    progress: list[float] = []
    result = decode_chunks(decoder_for(model), chunked(audio, 20.0), TranscribeOptions(),
                                              on_progress=progress.append)
    sizes = [c["samples"] for c in model.calls]
    assert sum(sizes) == len(audio) and len(sizes) == 4
    cuts = np.cumsum(sizes)[:-1]
    for cut in cuts:  # within 8 s of the fixed chunk end, in a pause, never in the tone
        assert np.abs(audio[cut - 800:cut + 800]).max() == 0, cut / RATE
    offsets = [0.0, *(cuts / RATE)]
    assert [s.id for s in result.segments] == [1, 2, 3, 4]
    assert [s.start for s in result.segments] == pytest.approx([o + 0.5 for o in offsets])
    assert [s.words[0].start for s in result.segments] == pytest.approx(
        [o + 0.6 for o in offsets])
    assert result.segments[-1].end == pytest.approx(len(audio) / RATE - 0.5)
    assert result.duration == pytest.approx(len(audio) / RATE)
    assert progress == sorted(progress) and progress[-1] == pytest.approx(result.duration)


def test_an_end_that_escapes_its_chunk_is_clamped_to_the_chunk_with_its_words():
    """A segment's end is a timestamp token the model wrote: under MKL, tiny.en ended one 7 s
    past its 30 s chunk, over the next chunk's first segment (en_long)."""
    audio = speech_like(70.0)
    model = ChunkModel(escape_s=7.5)
    result = decode_chunks(decoder_for(model), chunked(audio, 20.0), TranscribeOptions())
    ends = np.cumsum([c["samples"] for c in model.calls]) / RATE
    assert [s.end for s in result.segments] == pytest.approx(ends)
    assert [s.words[-1].end for s in result.segments] == pytest.approx(ends)
    assert [s.text for s in result.segments] == [f" chunk {n}" for n in range(1, 5)]
    for before, after in zip(result.segments, result.segments[1:]):
        assert before.end <= after.start


def test_each_chunk_is_prompted_with_the_text_before_it_in_the_first_language():
    model = ChunkModel()
    options = TranscribeOptions(initial_prompt=(1, 2), prefix="Guten")
    result = decode_chunks(decoder_for(model), chunked(speech_like(50.0), 20.0), options)
    assert [c["initial_prompt"] for c in model.calls] == [
        (1, 2), (1, 2, 101, 201), (1, 2, 101, 201, 102, 202)]
    assert [c["prefix"] for c in model.calls] == ["Guten", None, None]
    assert [c["language"] for c in model.calls] == [None, "de", "de"]  # detected once
    assert (result.language, result.language_probability) == ("de", 0.875)
    assert result.text == "chunk 1 chunk 2 chunk 3"


def test_no_previous_text_prompt_when_not_conditioning():
    model = ChunkModel()
    options = TranscribeOptions(initial_prompt=(1, 2), condition_on_previous_text=False)
    decode_chunks(decoder_for(model), chunked(speech_like(50.0), 20.0), options)
    assert [c["initial_prompt"] for c in model.calls] == [(1, 2), None, None]


def test_language_is_kept_only_from_a_chunk_that_had_speech():
    model = ChunkModel(silent_calls=(1,))
    decode_chunks(decoder_for(model), chunked(speech_like(50.0), 20.0), TranscribeOptions())
    assert [c["language"] for c in model.calls] == [None, None, "de"]


def test_one_chunk_is_decoded_whole():
    model = ChunkModel()
    audio = speech_like(12.0)
    decode_chunks(decoder_for(model), [audio], TranscribeOptions(language="en"))
    assert [c["samples"] for c in model.calls] == [len(audio)]


def test_quiet_cut_finds_the_pause_near_the_end():
    audio = np.full(30 * RATE, 0.3, np.float32)
    audio[25 * RATE:round(25.4 * RATE)] = 0.0  # the one pause, 5 s before the end
    assert 25 * RATE <= quiet_cut(audio) <= round(25.4 * RATE)
    assert quiet_cut(np.ones(100, np.float32)) == 100  # too short to cut
