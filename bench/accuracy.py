"""Accuracy on real human speech: live finals and transcript against the offline transcript.

On the real-speech dev set (bench/data/real, its manifest.json), for each model and each kind
of speech (read, spontaneous, conversation, accented, ...): the offline WER (the whole clip
through the file path, as `whisper-service transcribe` decodes it), and the live path's
finals WER, transcript WER (what `done.text` carries: utterances where they came) and finals
latency (a final's arrival minus its words' end in the audio), and the seconds the session
waited for its decodes and its utterances' per second of audio (compute at 1 client; with
queueing under load).

- 1 client: each clip streamed alone through a session in the computation-aware simulation
  (`replay(..., "simulated")`: audio arrives at its own time and the clock also advances by
  the compute spent), which is what one real-time client on an idle server gets.
- N clients (e.g. 8): N sessions at once in real time on the shared model (threads, as the
  server runs sessions), the clips dealt out so that each client streams about the same
  length; the run takes about the set's length divided by N.

Each live figure is the mean of `--repeat` runs (the live path depends on timing), with the
range over runs. WER is pooled over a kind's clips (errors over reference words), after
Whisper's English normalizer, as the other benchmarks count it. The streaming settings are
the process's: set `WHISPER_SERVICE_*` to measure another choice.

    .venv/bin/python bench/accuracy.py [--models tiny.en base] [--clients 1 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jiwer import wer

from server import _english_normalizer, percentile  # bench/ is the script's directory
from streaming import Live, stream_once
from whisper_service.audio import decode_file
from whisper_service.config import get_settings
from whisper_service.engine.decoder import Decoder
from whisper_service.engine.manager import ModelManager
from whisper_service.streaming import StreamOptions
from whisper_service.transcript import DecodeRequest, TranscribeOptions

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "bench" / "data" / "real"


@dataclass(frozen=True)
class Clip:
    name: str
    kind: str
    audio: np.ndarray
    reference: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16000


def normalize(text: str) -> str:
    return _english_normalizer()(text) or "<empty>"


def load_set(directory: Path, kinds: list[str] | None) -> list[Clip]:
    manifest = json.loads((directory / "manifest.json").read_text())
    clips = []
    for entry in manifest:
        if kinds and entry["kind"] not in kinds:
            continue
        path = directory / entry["file"]
        audio = decode_file(path)
        reference = path.with_suffix(".txt").read_text()
        clips.append(Clip(path.stem, entry["kind"], audio, reference))
    return clips


def deal(clips: list[Clip], n: int) -> list[list[Clip]]:
    """The clips dealt to n clients, longest first to the shortest queue."""
    queues: list[list[Clip]] = [[] for _ in range(n)]
    for clip in sorted(clips, key=lambda c: -c.seconds):
        min(queues, key=lambda q: sum(c.seconds for c in q)).append(clip)
    return queues


def live_run(manager: ModelManager, model: str, options: StreamOptions, clips: list[Clip],
             clients: int) -> dict[str, Live]:
    """One run of the live path over the set, at `clients` clients."""
    if clients == 1:
        return {c.name: stream_once(manager, model, options, c.audio) for c in clips}
    out: dict[str, Live] = {}
    errors: list[BaseException] = []

    def client(queue: list[Clip], delay: float) -> None:
        time.sleep(delay)
        try:
            for clip in queue:
                out[clip.name] = stream_once(manager, model, options, clip.audio,
                                              "realtime")
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(q, i / clients))
               for i, q in enumerate(deal(clips, clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def pooled_wer(clips: list[Clip], texts: dict[str, str]) -> float:
    return wer([normalize(c.reference) for c in clips], [normalize(texts[c.name]) for c in clips])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--set", type=Path, default=REAL, help="a directory with manifest.json")
    parser.add_argument("--kinds", nargs="+", help="only these kinds of speech")
    parser.add_argument("--skip", nargs="+", default=[], help="leave out these clips (names)")
    parser.add_argument("--dump", type=Path, help="write every clip's texts here (JSON)")
    args = parser.parse_args()

    clips = [c for c in load_set(args.set, args.kinds) if c.name not in args.skip]
    kinds = sorted({c.kind for c in clips})
    settings = get_settings()
    manager = ModelManager.from_settings(settings, concurrent=True)
    options = StreamOptions.from_settings(language="en")
    where = args.set.relative_to(ROOT) if args.set.is_relative_to(ROOT) else args.set
    minutes = sum(c.seconds for c in clips) / 60
    print(f"accuracy on {where}: {len(clips)} clips, {minutes:.1f} min; stream beam "
          f"{options.beam_size}, step {options.min_chunk_s} s, utterances "
          f"{'on, beam ' + str(options.utterance_beam_size) if options.utterances else 'off'}; "
          f"{args.repeat} runs\n", flush=True)
    print("| model | clients | speech | audio min | offline WER | transcript WER (range) "
          "| finals WER (range) | transcript - offline | finals - offline "
          "| finals latency median s | p90 s | decode s / audio s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    dump = []
    for model in args.models:
        decoder = Decoder(manager.acquire(model))
        offline = {c.name: decoder.decode(DecodeRequest(
            c.audio, TranscribeOptions(language="en"))).text for c in clips}
        for clients in args.clients:
            runs = [live_run(manager, model, options, clips, clients) for _ in range(args.repeat)]
            dump += [{"model": model, "clients": clients, "run": i, "clip": c.name,
                      "reference": c.reference, "offline": offline[c.name],
                      "finals": run[c.name].finals, "transcript": run[c.name].transcript}
                     for i, run in enumerate(runs) for c in clips]
            for kind in [*kinds, "all"]:
                group = [c for c in clips if kind in ("all", c.kind)]
                off = pooled_wer(group, offline)
                tr = [pooled_wer(group, {k: v.transcript for k, v in r.items()}) for r in runs]
                fi = [pooled_wer(group, {k: v.finals for k, v in r.items()}) for r in runs]
                lat = [x for r in runs for c in group for x in r[c.name].latencies]
                compute = sum(r[c.name].stats["decode_s"] + r[c.name].stats["utterance_s"]
                              for r in runs for c in group) / len(runs)
                print(f"| {model} | {clients} | {kind} | {sum(c.seconds for c in group) / 60:.1f} "
                      f"| {off:.3f} | {statistics.mean(tr):.3f} ({min(tr):.3f}-{max(tr):.3f}) "
                      f"| {statistics.mean(fi):.3f} ({min(fi):.3f}-{max(fi):.3f}) "
                      f"| {statistics.mean(tr) - off:+.3f} | {statistics.mean(fi) - off:+.3f} "
                      f"| {statistics.median(lat) if lat else float('nan'):.2f} "
                      f"| {percentile(lat, 0.9):.2f} "
                      f"| {compute / sum(c.seconds for c in group):.2f} |", flush=True)
        manager.release(decoder.loaded)
    if args.dump:
        args.dump.write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
