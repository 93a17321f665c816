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
import sys
import wave
from pathlib import Path

import numpy as np
from jiwer import wer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from whisper_service.config import get_settings  # noqa: E402
from whisper_service.models import ModelManager  # noqa: E402
from whisper_service.streaming import StreamingSession, StreamOptions, replay  # noqa: E402
from whisper_service.text import normalize  # noqa: E402
from whisper_service.transcribe import Decoder, DecodeRequest, TranscribeOptions  # noqa: E402

DATA = ROOT / "tests" / "data"
FILES = ("en_passage", "en_term", "en_short")


def read(name: str) -> np.ndarray:
    with wave.open(str(DATA / f"{name}.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--min-chunk", type=float, default=get_settings().min_chunk_s)
    parser.add_argument("--beam-size", type=int, default=StreamOptions().beam_size)
    parser.add_argument("--files", nargs="+", default=list(FILES))
    args = parser.parse_args()

    manager = ModelManager.from_settings(get_settings())
    rows = []
    for model in args.models:
        decoder = Decoder(manager.acquire(model))
        for name in args.files:
            audio, ref = read(name), normalize((DATA / f"{name}.txt").read_text())
            offline = decoder.decode(DecodeRequest(audio, TranscribeOptions(language="en")))
            options = StreamOptions(language="en", min_chunk_s=args.min_chunk,
                                    beam_size=args.beam_size)
            latencies, finals = [], []
            with StreamingSession.open(manager, model, options) as session:
                for emitted_at, event in replay(session, audio, "simulated"):
                    if event.type == "final":
                        finals.append(event.text)
                        latencies += [emitted_at - w.end for w in event.words]
                compute = session.stats["decode_s"] / session.stats["audio_s"]
            hyp = normalize(" ".join(finals))
            off = normalize(offline.text)
            lat = sorted(latencies)
            rows.append((model, name, len(audio) / 16000, wer(ref, hyp), wer(ref, off),
                         wer(off, hyp), statistics.median(lat), lat[int(0.9 * (len(lat) - 1))],
                         lat[-1], compute))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\nstreaming: computation-aware simulation, 100 ms pushes, min chunk {args.min_chunk} s,"
          f" beam {args.beam_size}; offline: same model, beam 5, whole file\n")
    print("| model | file | audio s | WER stream | WER offline | stream - offline "
          "| WER stream vs offline | latency median s | p90 s | max s | compute s / audio s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, n, d, ws, wo, wso, med, p90, mx, comp in rows:
        print(f"| {m} | {n} | {d:.1f} | {ws:.3f} | {wo:.3f} | {ws - wo:+.3f} | {wso:.3f} "
              f"| {med:.2f} | {p90:.2f} | {mx:.2f} | {comp:.2f} |")
    print(f"\npeak RSS of this process (both models loaded once): {peak:.0f} MB")


if __name__ == "__main__":
    main()
