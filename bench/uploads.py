"""Uploads: what a long file costs the server, now that files are decoded and transcribed
`file_chunk_s` (2 minutes) at a time.

Starts `whisper-service serve --model tiny.en` (bench/capacity.py's `serving`) and posts one
upload per size to `/v1/audio/transcriptions`, one at a time: speech made of the committed
passages (tests/data: en_long, en_passage, en_numbers, en_term, en_short, with 2 s of silence
after each), repeated to the length, encoded in memory as Ogg Opus at 32 kbit/s (3 h is
about 45 MB, under the 100 MB upload cap; FLAC would not be). `silence` is the finding of
issue 18: 3 h of digital silence in a 2 MB FLAC, which took the server from 250 MB to
2,549 MB when files were decoded whole. Per upload: the server's RSS before, its peak
(sampled every 50 ms), the wall time, and the WER against the repeated references (after
Whisper's English normalizer, as the tests count it).

    .venv/bin/python bench/uploads.py [--sizes 10m 1h 3h silence] [--chunk-s 120]
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
import wave
from pathlib import Path

import av
import httpx
import numpy as np
import psutil

from capacity import serving
from server import english_wer, rss_mb

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
PASSAGES = ("en_long", "en_passage", "en_numbers", "en_term", "en_short")
RATE = 16000
GAP_S = 2.0
SIZES = {"10m": 600, "1h": 3600, "3h": 3 * 3600, "silence": 3 * 3600}


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def speech(seconds: float) -> tuple[list[np.ndarray], str]:
    """The passages with a gap after each, over and over until `seconds` (whole passages
    only, so the reference is exact); int16 blocks and the reference text."""
    gap = np.zeros(round(GAP_S * RATE), np.int16)
    clips = [(read_wav(DATA / f"{n}.wav"), (DATA / f"{n}.txt").read_text().strip())
             for n in PASSAGES]
    blocks, texts, total = [], [], 0
    while total < seconds * RATE:
        for samples, text in clips:
            blocks += [samples, gap]
            texts.append(text)
            total += len(samples) + len(gap)
            if total >= seconds * RATE:
                break
    return blocks, " ".join(texts)


def encode(blocks: list[np.ndarray], fmt: str, codec: str, **options: str) -> bytes:
    """16 kHz mono int16 blocks as one file, encoded in memory."""
    sink = io.BytesIO()
    with av.open(sink, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=RATE, layout="mono", options=options)
        for block in blocks:
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = RATE
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return sink.getvalue()


def upload(size: str) -> tuple[str, bytes, str, float]:
    """The file name, its bytes, the reference text and the audio seconds."""
    seconds = SIZES[size]
    if size == "silence":
        silence = np.zeros(10 * RATE, np.int16)
        return "silence.flac", encode([silence] * (seconds // 10), "flac", "flac"), "", seconds
    blocks, reference = speech(seconds)
    audio_s = sum(len(b) for b in blocks) / RATE
    return f"speech_{size}.ogg", encode(blocks, "ogg", "libopus", b="32000"), reference, audio_s


class PeakRss:
    """The server's RSS sampled every 50 ms on a thread, while a request runs."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.peak = proc, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.proc))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def measure(host: str, proc: psutil.Process, size: str) -> dict:
    name, data, reference, audio_s = upload(size)
    before = rss_mb(proc)
    started = time.perf_counter()
    with PeakRss(proc) as rss:
        res = httpx.post(f"http://{host}/v1/audio/transcriptions", timeout=3 * 3600,
                         files={"file": (name, data)},
                         data={"model": "tiny.en", "language": "en", "response_format": "json"})
    wall = time.perf_counter() - started
    res.raise_for_status()
    text = res.json()["text"]
    error = english_wer(reference, text) if reference else None
    row = {"size": size, "file": name, "MB": len(data) / 1e6, "audio_s": audio_s,
           "rss_before": before, "rss_peak": rss.peak, "wall_s": wall, "wer": error,
           "words": len(text.split())}
    print(f"{size}: {row}", file=sys.stderr, flush=True)
    return row


def table(rows: list[dict], chunk_s: float) -> str:
    lines = [f"tiny.en, `file_chunk_s` {chunk_s:g}, one upload at a time:", "",
             "| upload | file | audio | server RSS before | peak RSS | peak - before | wall "
             "| x real time | WER |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wer = f"{r['wer']:.3f}" if r["wer"] is not None else f"- ({r['words']} words)"
        lines.append(
            f"| {r['size']} | {r['file']}, {r['MB']:.1f} MB | {r['audio_s'] / 60:.0f} min "
            f"| {r['rss_before']:.0f} MB | {r['rss_peak']:.0f} MB "
            f"| +{r['rss_peak'] - r['rss_before']:.0f} MB | {r['wall_s']:.0f} s "
            f"| {r['wall_s'] / r['audio_s']:.3f} | {wer} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10m", "1h", "3h", "silence"],
                        choices=list(SIZES))
    parser.add_argument("--chunk-s", type=float, default=120.0,
                        help="WHISPER_SERVICE_FILE_CHUNK_S for the server")
    args = parser.parse_args()
    rows = []
    with serving("tiny.en", 1, WHISPER_SERVICE_FILE_CHUNK_S=str(args.chunk_s)) as (host, proc):
        for size in args.sizes:
            rows.append(measure(host, proc, size))
    print(table(rows, args.chunk_s))


if __name__ == "__main__":
    main()
