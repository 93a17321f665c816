"""Capacity: how many real-time streams one server holds, with batching on and off.

For each model and each batching mode, starts `whisper-service serve` on a free port, then for
each N runs N concurrent WebSocket clients over loopback. Client i streams a different
sequence of the committed passages (tests/data: en_passage, en_numbers, en_term, en_short,
rotated by i, `--clips` of them with 1 s of silence between) in 100 ms pcm_s16le frames paced
by the wall clock, starting within the first second. Per N: latency of every committed word
(arrival of its `final` minus the moment the word's audio was sent), median, p90 and max; each
client's WER against its own reference, of its finals and of the transcript `done` carries
(what a client keeps: utterances where they came); the server's CPU use (share of all cores)
and peak RSS; and the longest wait for the last final after `end` (a client that fell behind
waits long). Capacity is the largest N with p90 <= 2.0 s and every client's transcript WER at
most its single-client transcript WER + 0.02: before the rounds, each sequence is streamed by
one client alone. WER is counted after Whisper's English normalizer, as the tests count it.

    .venv/bin/python bench/capacity.py [--models tiny.en base] [--clients 1 2 4 8 12 16]

With `--burst`, it measures instead what one client that does not pace its audio does to the
real-time ones (a reconnect replaying its buffer, a file pushed through a stream): for each
N, a round of N real-time clients alone, then the same round with a burst client that sends
en_long (66 s) at once 0.5 s before them, with admission by lateness on (the default
`WHISPER_SERVICE_MAX_LAG_S`). It gives the real-time clients' p90 latency without and with
the burst, the refusals, and when the burst client's `done` came and its WER.

    .venv/bin/python bench/capacity.py --burst [--models tiny.en] [--clients 4 8]

With `--upload FILE`, it measures what a long upload does to the real-time clients (files
and streams share the model's decode workers and batch scheduler): for each N, a round of N
real-time clients alone, then the same round while FILE is uploaded to
/v1/audio/transcriptions again and again, from 0.5 s before the clients start until they
end. It gives the clients' p90 latency without and with the uploads, and the uploads' audio
seconds decoded per second meanwhile.

    .venv/bin/python bench/capacity.py --upload long.wav [--models tiny.en] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from server import english_wer, free_port, percentile, read_pcm, rss_mb, send_paced, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
PASSAGES = ("en_passage", "en_numbers", "en_term", "en_short")
SAMPLE_RATE = 16000
GAP_S = 1.0
P90_TARGET_S = 2.0
WER_SLACK = 0.02


@dataclass
class Stream:
    pcm: bytes
    reference: str


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    tail_s: float = float("nan")  # from sending `end` to `done`
    text: str | None = None  # the transcript `done` carries (utterances where they came)
    wer: float = float("nan")  # of the transcript: what a client keeps
    finals_wer: float = float("nan")


def stream_for(client: int, clips: int) -> Stream:
    names = [PASSAGES[(client + k) % len(PASSAGES)] for k in range(clips)]
    gap = bytes(int(GAP_S * SAMPLE_RATE) * 2)
    pcm = gap.join(read_pcm(DATA / f"{n}.wav") for n in names)
    return Stream(pcm, " ".join((DATA / f"{n}.txt").read_text() for n in names))


async def run_client(url: str, model: str, stream: Stream, delay: float) -> ClientResult:
    await asyncio.sleep(delay)
    result = ClientResult()
    config = {"type": "config", "model": model, "language": "en", "word_timestamps": True}
    async with connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps(config))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            result.errors.append(ready)
            return result
        t0 = time.perf_counter()
        ended: list[float] = []
        sending = asyncio.create_task(send_paced(ws, stream.pcm, t0, ended))
        try:
            async for raw in ws:
                arrived = time.perf_counter()
                message = json.loads(raw)
                if message["type"] == "final":
                    result.finals.append(message["text"])
                    result.latencies += [arrived - t0 - w["end"] for w in message["words"]]
                elif message["type"] == "error":
                    result.errors.append(message)
                elif message["type"] == "done" and ended:
                    result.tail_s = arrived - ended[0]
                    result.text = message.get("text")
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
    result.finals_wer = english_wer(stream.reference, " ".join(result.finals))
    result.wer = result.finals_wer if result.text is None else \
        english_wer(stream.reference, result.text)
    return result


async def run_burst(url: str, model: str, stream: Stream) -> ClientResult:
    """A client that sends its whole stream at once, then `end`; `tail_s` is from its first
    byte to `done`."""
    result = ClientResult()
    async with connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"type": "config", "model": model, "language": "en"}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            result.errors.append(ready)
            return result
        t0 = time.perf_counter()
        frame = int(0.1 * SAMPLE_RATE) * 2

        async def send_all() -> None:
            for offset in range(0, len(stream.pcm), frame):
                await ws.send(stream.pcm[offset:offset + frame])
            await ws.send(json.dumps({"type": "end"}))

        sending = asyncio.create_task(send_all())
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "error":
                result.errors.append(message)
            elif message["type"] == "done":
                result.tail_s, result.text = time.perf_counter() - t0, message.get("text")
        await sending
    result.wer = english_wer(stream.reference, result.text or "")
    return result


async def run_round(url: str, model: str, n: int, clips: int, server: psutil.Process,
                    first: int = 0, burst: Stream | None = None,
                    ) -> tuple[list[ClientResult], float, list[float]]:
    """N clients at once (streaming sequences `first`, `first` + 1, ...); their results, the
    server's CPU share of all cores, and its RSS (MB) sampled every 0.2 s. With `burst`, one
    more client sends that stream at once, 0.5 s before the others start; its result is
    last."""
    samples, stop = [rss_mb(server)], asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            samples.append(rss_mb(server))
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass

    cpu0, wall0 = sum(server.cpu_times()[:2]), time.monotonic()
    sampling = asyncio.create_task(sampler())
    lead = 0.5 if burst is not None else 0.0
    try:
        results = await asyncio.gather(*(
            run_client(url, model, stream_for(first + i, clips), delay=lead + i / max(n, 1))
            for i in range(n)), *([run_burst(url, model, burst)] if burst else []))
    finally:
        stop.set()
        await sampling
    cpu = (sum(server.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0) / os.cpu_count()
    samples.append(rss_mb(server))
    return list(results), cpu, samples


def batch_counts(base: str) -> tuple[float, float, float]:
    """(batches, windows, seconds queued) so far, summed over models, from /metrics."""
    batches = windows = waited = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name == "whisper_batch_size_count":
                batches += sample.value
            elif sample.name == "whisper_batch_size_sum":
                windows += sample.value
            elif sample.name == "whisper_decode_queue_wait_seconds_total":
                waited += sample.value
    return batches, windows, waited


@contextmanager
def serving(model: str, max_sessions: int, **env: str) -> Iterator[tuple[str, psutil.Process]]:
    """`serve --model MODEL` on a free port, with admission by lag off (every N is measured,
    past where admission would stop); yields its base URL and process, stops it after."""
    port = free_port()
    env = {**os.environ, "WHISPER_SERVICE_MAX_SESSIONS": str(max_sessions),
           "WHISPER_SERVICE_MAX_LAG_S": "1000", "WHISPER_SERVICE_MAX_STREAMS_PER_CLIENT": "0",
           **env}
    env.pop("WHISPER_SERVICE_API_KEY", None)
    exe = Path(sys.executable).with_name("whisper-service")
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([str(exe), "serve", "--model", model, "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, {})
        yield f"127.0.0.1:{port}", psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        text = log.read()
        if "Traceback" in text or os.environ.get("SHOWLOG"):
            print(f"--- server log ({model}, {env}) ---\n{text}", file=sys.stderr)


def serve(model: str, batching: bool, counts: list[int],
          clips: int) -> tuple[list[dict], dict[int, float]]:
    """The rounds of N clients, and each sequence's WER streamed by one client alone."""
    rows, alone = [], {}
    with serving(model, max(counts),
                 WHISPER_SERVICE_BATCHING="true" if batching else "false") as (host, server):
        for seq in range(1, len(PASSAGES)):  # sequence 0 streams alone in the 1-client round
            results, _, _ = asyncio.run(run_round(f"ws://{host}/v1/stream", model, 1, clips,
                                                  server, first=seq))
            alone[seq] = results[0].wer
            time.sleep(1.0)
        for n in counts:
            before = batch_counts(f"http://{host}")
            results, cpu, rss = asyncio.run(run_round(f"ws://{host}/v1/stream", model, n, clips,
                                                      server))
            batches, windows, waited = (b - a for a, b in
                                        zip(before, batch_counts(f"http://{host}")))
            rows.append({"n": n, "results": results, "cpu": cpu, "rss": max(rss),
                         "batch": windows / batches if batches else float("nan"),
                         "queued": waited / windows if windows else float("nan")})
            if n == 1:
                alone[0] = results[0].wer
            time.sleep(1.0)
    return rows, alone


def burst_rounds(model: str, counts: list[int], clips: int) -> None:
    """Real-time clients alone, then next to a burst client, with admission by lateness on."""
    burst = Stream(read_pcm(DATA / "en_long.wav"), (DATA / "en_long.txt").read_text())
    print("| model | real-time clients | p90 s alone | p90 s next to the burst | ratio "
          "| refused alone / next to it | burst: done after s | burst transcript WER |")
    print("|---|---|---|---|---|---|---|---|")
    with serving(model, max(counts) + 1,
                 WHISPER_SERVICE_MAX_LAG_S=os.environ.get("WHISPER_SERVICE_MAX_LAG_S", "3")) \
            as (host, server):
        for n in counts:
            p90s, refused = [], []
            for with_burst in (None, burst):
                results, _, _ = asyncio.run(run_round(f"ws://{host}/v1/stream", model, n,
                                                      clips, server, burst=with_burst))
                live = results[:n]
                p90s.append(percentile([x for r in live for x in r.latencies], 0.9))
                refused.append(sum(bool(r.errors) for r in results))
                time.sleep(1.0)
            fast = results[-1]
            print(f"| {model} | {n} | {p90s[0]:.2f} | {p90s[1]:.2f} | {p90s[1] / p90s[0]:.2f} "
                  f"| {refused[0]} / {refused[1]} | {fast.tail_s:.1f} | {fast.wer:.3f} |",
                  flush=True)


def upload_rounds(model: str, counts: list[int], clips: int, file: Path) -> None:
    """Real-time clients alone, then next to uploads of `file` that run until they end."""
    data = file.read_bytes()
    print("| model | real-time clients | p90 s alone | p90 s next to the upload | ratio "
          "| median s alone / next to it | uploads done | upload audio s per s |")
    print("|---|---|---|---|---|---|---|---|")
    with serving(model, max(counts)) as (host, server):
        for n in counts:
            p90s, medians = [], []
            for uploading in (False, True):
                stop, done = asyncio.Event(), []

                async def upload() -> None:
                    async with httpx.AsyncClient(timeout=3600) as client:
                        while not stop.is_set():
                            started = time.perf_counter()
                            reply = await client.post(
                                f"http://{host}/v1/audio/transcriptions",
                                files={"file": (file.name, data)},
                                data={"model": model, "language": "en",
                                      "response_format": "verbose_json"})
                            reply.raise_for_status()
                            done.append((reply.json()["duration"],
                                         time.perf_counter() - started))

                async def round_with_upload() -> list[ClientResult]:
                    task = asyncio.create_task(upload()) if uploading else None
                    try:
                        results, _, _ = await run_round(f"ws://{host}/v1/stream", model, n,
                                                        clips, server, first=0)
                    finally:
                        stop.set()
                        if task:
                            await task  # the upload under way finishes
                    return results

                results = asyncio.run(round_with_upload())
                latencies = [x for r in results for x in r.latencies]
                p90s.append(percentile(latencies, 0.9))
                medians.append(statistics.median(latencies))
                time.sleep(1.0)
            audio, wall = sum(d for d, _ in done), sum(w for _, w in done)
            print(f"| {model} | {n} | {p90s[0]:.2f} | {p90s[1]:.2f} | {p90s[1] / p90s[0]:.2f} "
                  f"| {medians[0]:.2f} / {medians[1]:.2f} | {len(done)} "
                  f"| {audio / wall if wall else float('nan'):.1f} |", flush=True)


def wer_rise(row: dict, alone: dict[int, float]) -> float:
    """The largest rise of a client's WER over its sequence's baseline in this round."""
    return max(r.wer - alone[i % len(PASSAGES)] for i, r in enumerate(row["results"]))


def capacity(rows: list[dict], alone: dict[int, float]) -> int:
    """The largest N such that it and every smaller N meet the targets."""
    best = 0
    for row in rows:
        lat = [x for r in row["results"] for x in r.latencies]
        if not lat or percentile(lat, 0.9) > P90_TARGET_S or wer_rise(row, alone) > WER_SLACK \
                or any(r.errors for r in row["results"]):
            break
        best = row["n"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4, 8, 12, 16])
    parser.add_argument("--clips", type=int, default=2,
                        help="passages each client streams, one after another")
    parser.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off"],
                        help="batching modes to run")
    parser.add_argument("--dump", type=Path, help="write every client's finals here (JSON)")
    parser.add_argument("--burst", action="store_true",
                        help="measure a burst client's effect on the real-time ones instead")
    parser.add_argument("--upload", type=Path,
                        help="measure a long upload's effect on the real-time clients instead")
    args = parser.parse_args()
    if args.upload:
        for model in args.models:
            upload_rounds(model, args.clients, args.clips, args.upload)
        return
    if args.burst:
        for model in args.models:
            burst_rounds(model, args.clients, args.clips)
        return
    counts = sorted(set(args.clients) | {1})

    print(f"capacity: {os.cpu_count()} cores; each client streams {args.clips} passage(s) in "
          f"real time; targets: p90 <= {P90_TARGET_S} s, WER <= single-client + {WER_SLACK}\n")
    print("| model | batching | clients | latency median s | p90 s | max s "
          "| finals WER mean / worst | transcript WER mean / worst "
          "| worst transcript WER rise over single-client | CPU % of all cores | windows per batch "
          "| queued per window s | server peak RSS MB "
          "| longest wait for done after end s | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary, dump = [], []
    for model in args.models:
        for mode in args.modes:
            rows, alone = serve(model, mode == "on", counts, args.clips)
            for row in rows:
                res = row["results"]
                lat = [x for r in res for x in r.latencies]
                wers = [r.wer for r in res]
                finals_wers = [r.finals_wer for r in res]
                tails = [r.tail_s for r in res if not np.isnan(r.tail_s)]
                errors = sum(len(r.errors) for r in res)
                print(f"| {model} | {mode} | {row['n']} | "
                      f"{statistics.median(lat) if lat else float('nan'):.2f} | "
                      f"{percentile(lat, 0.9):.2f} | {max(lat, default=float('nan')):.2f} | "
                      f"{statistics.mean(finals_wers):.3f} / {max(finals_wers):.3f} | "
                      f"{statistics.mean(wers):.3f} / {max(wers):.3f} | "
                      f"{wer_rise(row, alone):+.3f} | {100 * row['cpu']:.0f} "
                      f"| {row['batch']:.2f} | {row['queued']:.2f} | {row['rss']:.0f} "
                      f"| {max(tails, default=float('nan')):.2f} "
                      f"| {errors} |", flush=True)
                dump += [{"model": model, "batching": mode, "clients": row["n"], "client": i,
                          "wer": r.wer, "finals_wer": r.finals_wer, "finals": r.finals,
                          "text": r.text}
                         for i, r in enumerate(res)]
            summary.append((model, mode, capacity(rows, alone)))
    if args.dump:
        args.dump.write_text(json.dumps(dump, indent=1))
    print()
    for model, mode, n in summary:
        print(f"capacity of {model}, batching {mode}: {n} clients")
    for model in args.models:
        caps = {mode: n for m, mode, n in summary if m == model}
        if caps.get("on") and caps.get("off"):
            print(f"{model}: batching on / off = {caps['on'] / caps['off']:.1f}x")


if __name__ == "__main__":
    main()
