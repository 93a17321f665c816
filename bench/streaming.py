"""Streaming quality and latency, with offline transcription of the same audio as baseline.

For each file and model: WER against the reference text and against offline transcription
(same model, same run), latency per committed word (emission time minus the word's end in the
audio, computation-aware simulation), compute seconds per audio second, and peak RSS.

    .venv/bin/python bench/streaming.py [--models tiny.en base] [--min-chunk 1.0] [--beam-size 1]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jiwer import wer

from server import _english_normalizer  # bench/ is the script's directory
from whisper_service.config import get_settings
from whisper_service.engine.decoder import Decoder
from whisper_service.engine.manager import ModelManager
from whisper_service.streaming import (
    ReplayMode,
    SkippingClock,
    StreamingSession,
    StreamOptions,
    replay,
)
from whisper_service.transcript import DecodeRequest, TranscribeOptions

ROOT = Path(__file__).resolve().parent.parent


def normalize(text: str) -> str:
    """Whisper's English normalizer, as the tests and bench/capacity.py count WER ("$380" =
    "380 dollars", "3rd of May" = "3 May" is still one word off)."""
    return _english_normalizer()(text) or "<empty>"


DATA = ROOT / "tests" / "data"
FILES = ("en_passage", "en_term", "en_short", "en_numbers", "en_long")


def read(name: str) -> np.ndarray:
    with wave.open(str(DATA / f"{name}.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


@dataclass
class Live:
    """One recording streamed once through a session: what a client saw, and the cost."""

    finals: str
    utterances: str
    transcript: str  # what `done.text` carries: utterances where they came, finals elsewhere
    latencies: list[float]  # each final word's emission minus its end in the audio
    stats: dict


def stream_once(manager: ModelManager, model: str, options: StreamOptions, audio: np.ndarray,
                mode: ReplayMode = "simulated") -> Live:
    """One session over `audio`. Simulated, the model's scheduler measures its utilization
    (which decides `Decoder.busy`) on a clock that adds the waits for audio the replay
    skipped, as one real-time client would leave its workers idle; one session at a time."""
    finals, utterances, latencies = [], [], []
    with StreamingSession.open(manager, model, options) as session:
        scheduler = manager.get(model).scheduler
        skipping = SkippingClock() if mode == "simulated" and scheduler else None
        if skipping is not None:
            scheduler.use_clock(skipping)
        try:
            for emitted_at, event in replay(session, audio, mode, skipping=skipping):
                if event.type == "final":
                    finals.append(event.text)
                    latencies += [emitted_at - w.end for w in event.words]
                elif event.type == "utterance":
                    utterances.append(event.text)
        finally:
            if skipping is not None:
                scheduler.use_clock(time.monotonic)
        return Live(" ".join(finals), " ".join(utterances), session.transcript, latencies,
                    session.stats)


@dataclass
class Runs:
    """Streaming runs pooled: WER over all their words, latencies of all committed words."""

    refs: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)
    utterances: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    decode_s: float = 0.0
    utterance_s: float = 0.0
    audio_s: float = 0.0

    def add(self, ref: str, offline: str, hyp: str, utterances: str, latencies: list[float],
            stats: dict) -> None:
        self.refs.append(ref)
        self.offline.append(offline)
        self.hyps.append(hyp)
        self.utterances.append(utterances)
        self.latencies += latencies
        self.decode_s += stats["decode_s"]
        self.utterance_s += stats["utterance_s"]
        self.audio_s += stats["audio_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--min-chunk", type=float, default=get_settings().min_chunk_s)
    parser.add_argument("--beam-size", type=int, default=get_settings().stream_beam_size)
    parser.add_argument("--files", nargs="+", default=list(FILES))
    parser.add_argument("--utterances", action=argparse.BooleanOptionalAction,
                        default=get_settings().utterances,
                        help="decode each utterance again (the `utterance` message)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per file: the simulated clock follows real compute time, "
                             "so decode points, and text, vary a little between runs")
    args = parser.parse_args()

    # Workers as the server runs them (one per core, one thread each): an utterance decode
    # then runs beside the stream's own decodes, as it does in the server.
    manager = ModelManager.from_settings(get_settings(), concurrent=True)
    options = StreamOptions.from_settings(language="en", min_chunk_s=args.min_chunk,
                                          beam_size=args.beam_size,
                                          utterances=args.utterances)
    rows = []
    for model in args.models:
        decoder = Decoder(manager.acquire(model))
        pooled = Runs()
        for name in args.files:
            audio, ref = read(name), normalize((DATA / f"{name}.txt").read_text())
            offline = decoder.decode(DecodeRequest(audio, TranscribeOptions(language="en")))
            runs = Runs()
            for _ in range(args.repeat):
                live = stream_once(manager, model, options, audio)
                for r in (runs, pooled):
                    r.add(ref, normalize(offline.text), normalize(live.finals),
                          normalize(live.utterances), live.latencies, live.stats)
            rows.append((model, name, len(audio) / 16000, runs))
        rows.append((model, "**all files**", sum(r[2] for r in rows if r[0] == model), pooled))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\nstreaming: computation-aware simulation, 100 ms pushes, min chunk {args.min_chunk} s,"
          f" beam {args.beam_size}, {args.repeat} runs per file pooled (WER over all their words);"
          f" utterances {'on' if args.utterances else 'off'} (beam "
          f"{options.utterance_beam_size}); offline: same model, beam 5, whole file\n")
    print("| model | file | audio s | WER finals | WER utterances | WER offline "
          "| finals - offline | utterances - offline | latency median s | p90 s | max s "
          "| compute s / audio s | utterance compute s / audio s | extra |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, n, d, r in rows:
        ws, wo = wer(r.refs, r.hyps), wer(r.refs, r.offline)
        wu = wer(r.refs, r.utterances) if args.utterances else float("nan")
        lat = sorted(r.latencies)
        print(f"| {m} | {n} | {d:.1f} | {ws:.3f} | {wu:.3f} | {wo:.3f} | {ws - wo:+.3f} "
              f"| {wu - wo:+.3f} | {statistics.median(lat):.2f} "
              f"| {lat[int(0.9 * (len(lat) - 1))]:.2f} | {lat[-1]:.2f} "
              f"| {r.decode_s / r.audio_s:.2f} | {r.utterance_s / r.audio_s:.3f} "
              f"| {r.utterance_s / r.decode_s:.0%} |")
    print(f"\npeak RSS of this process (both models loaded once): {peak:.0f} MB")


if __name__ == "__main__":
    main()
