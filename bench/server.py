"""End-to-end server benchmark: latency, WER and memory of `/v1/stream` under concurrent clients.

Starts `whisper-service serve --model tiny.en` on a free port, waits for `/ready`, measures the
server's RSS at rest, then streams a recording in real time (100 ms pcm_s16le frames paced by
the wall clock) from 1 client and from N concurrent clients. Per client: latency per committed
word (arrival time of the `final`, relative to stream start, minus the word's end in the
audio), median and p90; WER of the joined finals against the reference text. The server's RSS
is sampled every 0.2 s during each run. RSS per extra client is given against 1 client, and
against as many clients as the server has decode workers: each worker holds the working memory
of one decode while it runs, so up to that count, clients also bring a worker into use.
Finally (unless --no-upload) the same file is sent once to `/v1/audio/transcriptions` as a
sanity check, and the server is stopped.

    .venv/bin/python bench/server.py [--clients 1 2 4] [--file tests/data/en_passage.wav]

The reference text is read from the file next to the recording with a `.txt` suffix. A
`WHISPER_SERVICE_API_KEY` in the environment is passed to the server and used by the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import httpx
import psutil
from jiwer import wer
from websockets.asyncio.client import connect

from whisper_service.text import normalize

ROOT = Path(__file__).resolve().parent.parent


MODEL = "tiny.en"
FRAME_S = 0.1
SAMPLE_RATE = 16000
SAMPLE_EVERY_S = 0.2


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    done: dict | None = None
    close_code: int | None = None
    last_final_after_end: float | None = None  # seconds from sending `end` to the last final
    wer: float = float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            sys.exit(f"{path}: need 16 kHz mono 16-bit PCM WAV")
        return w.readframes(w.getnframes())


def rss_mb(proc: psutil.Process) -> float:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def rss_after(setup: str) -> float:
    """RSS in MB of a fresh Python process once it has run `setup`."""
    code = f"import psutil; {setup}; print(psutil.Process().memory_info().rss / 2**20)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=os.environ.copy())
    return float(out.stdout.strip().splitlines()[-1])


def start_server(port: int, log) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("whisper-service")
    cmd = [str(exe), "serve", "--model", MODEL, "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(cmd, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)


def wait_ready(base: str, proc: subprocess.Popen, headers: dict,
               timeout: float = 180) -> tuple[float, int]:
    """Seconds until /ready, and the server's decode workers."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before /ready")
        try:
            res = httpx.get(f"{base}/ready", headers=headers, timeout=2)
            if res.status_code == 200:
                return time.monotonic() - started, res.json()["decode_workers"]
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {timeout:.0f} s")


async def send_paced(ws, pcm: bytes, t0: float, ended_at: list[float]) -> None:
    """Send 16-bit PCM as a microphone delivers it, then `end`; note when `end` went out."""
    frame_bytes = int(FRAME_S * SAMPLE_RATE) * 2
    for i, offset in enumerate(range(0, len(pcm), frame_bytes)):
        # A frame is delivered once it has been recorded: frame i at (i+1)*100 ms.
        delay = t0 + (i + 1) * FRAME_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(pcm[offset:offset + frame_bytes])
    await ws.send(json.dumps({"type": "end"}))
    ended_at.append(time.perf_counter())


async def run_client(url: str, headers: dict, pcm: bytes, reference: str) -> ClientResult:
    result = ClientResult()
    config = {"type": "config", "model": MODEL, "language": "en", "word_timestamps": True}
    async with connect(url, additional_headers=headers, max_size=2**22) as ws:
        await ws.send(json.dumps(config))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"expected ready, got {ready}")
        t0 = time.perf_counter()
        ended_at: list[float] = []
        send_task = asyncio.create_task(send_paced(ws, pcm, t0, ended_at))
        try:
            async for raw in ws:
                arrived = time.perf_counter()
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "final":
                    result.finals.append(message["text"])
                    result.latencies += [arrived - t0 - w["end"] for w in message.get("words", [])]
                    if ended_at:
                        result.last_final_after_end = arrived - ended_at[0]
                elif kind == "error":
                    result.errors.append(message)
                elif kind == "done":
                    result.done = message
        finally:
            if not send_task.done():
                send_task.cancel()
            await asyncio.gather(send_task, return_exceptions=True)
        result.close_code = ws.close_code
    result.wer = wer(reference, normalize(" ".join(result.finals)) or "<empty>")
    return result


async def run_clients(n: int, url: str, headers: dict, pcm: bytes, reference: str,
                      server: psutil.Process) -> tuple[list[ClientResult], float]:
    peak = rss_mb(server)
    stop = asyncio.Event()

    async def sampler() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(server))
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
            except TimeoutError:
                pass

    sampling = asyncio.create_task(sampler())
    try:
        results = await asyncio.gather(*(run_client(url, headers, pcm, reference)
                                         for _ in range(n)))
    finally:
        stop.set()
        await sampling
    peak = max(peak, rss_mb(server))
    return list(results), peak


def upload(base: str, headers: dict, path: Path, reference: str) -> str:
    started = time.perf_counter()
    with path.open("rb") as f:
        response = httpx.post(f"{base}/v1/audio/transcriptions", headers=headers, timeout=300,
                              files={"file": (path.name, f, "audio/wav")},
                              data={"model": MODEL, "language": "en", "response_format": "json"})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        return f"upload: HTTP {response.status_code}: {response.text[:200]}"
    text = response.json()["text"]
    return (f"upload /v1/audio/transcriptions ({path.name}): {elapsed:.2f} s, "
            f"WER {wer(reference, normalize(text) or '<empty>'):.3f}")


def english_wer(reference: str, hypothesis: str) -> float:
    """WER after Whisper's English normalizer, as the tests and Whisper's published WERs
    count it ("$380" = "380 dollars", "4,172" = "4172")."""
    normalizer = _english_normalizer()
    return wer(normalizer(reference), normalizer(hypothesis) or "<empty>")


@lru_cache(maxsize=1)
def _english_normalizer():
    """Built once: it loads a spelling table of its own."""
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--file", type=Path, default=ROOT / "tests" / "data" / "en_passage.wav")
    parser.add_argument("--no-upload", action="store_true", help="skip the HTTP upload check")
    args = parser.parse_args()

    pcm = read_pcm(args.file)
    reference = normalize(args.file.with_suffix(".txt").read_text())
    api_key = os.environ.get("WHISPER_SERVICE_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    port = free_port()
    base, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/stream"
    log = tempfile.NamedTemporaryFile("w+", prefix="whisper-bench-", suffix=".log", delete=False)
    proc = start_server(port, log)
    rows, details, notes = [], [], []
    try:
        startup, workers = wait_ready(base, proc, headers)
        counts = sorted(set(args.clients) | {1, workers})  # the baselines of RSS per client
        server = psutil.Process(proc.pid)
        time.sleep(1.0)
        at_rest = rss_mb(server)
        bare = rss_after("import whisper_service.server")  # the server code, no model
        model_only = rss_after(  # only the model, through raw faster-whisper
            "from faster_whisper import WhisperModel; "
            "from whisper_service.config import get_settings; "
            "from whisper_service.registry import resolve; "
            f"m = WhisperModel(str(resolve({MODEL!r}, get_settings().cache_dir)), "
            "device='cpu', compute_type='int8')")
        peaks: dict[int, float] = {}
        for n in counts:
            results, peak = asyncio.run(run_clients(n, url, headers, pcm, reference, server))
            peaks[n] = peak
            latencies = [x for r in results for x in r.latencies]
            per_client = (peak - peaks[1]) / (n - 1) if n > 1 else None
            # Past the workers' count, another client adds a session but no decode working set.
            base_n = max((m for m in peaks if m <= workers), default=None)
            beyond = (peak - peaks[base_n]) / (n - base_n) \
                if base_n is not None and n > max(base_n, 1) and n > workers else None
            rows.append((n, statistics.median(latencies) if latencies else float("nan"),
                         percentile(latencies, 0.9), statistics.mean(r.wer for r in results),
                         peak, per_client, beyond))
            for i, r in enumerate(results):
                tail = (f"{r.last_final_after_end:.2f} s" if r.last_final_after_end is not None
                        else "-")
                details.append(
                    f"- {n} client(s), #{i + 1}: {len(r.finals)} finals, "
                    f"{len(r.latencies)} words, median {statistics.median(r.latencies or [0]):.2f}"
                    f" s, WER {r.wer:.3f}, last final {tail} after end, "
                    f"done={r.done and r.done.get('reason')!r}, close {r.close_code}"
                    + (f", errors {r.errors}" if r.errors else ""))
            text = " ".join(results[0].finals)
            details.append(f"  text of #1: {text[:300]}{'...' if len(text) > 300 else ''}")
            time.sleep(1.0)
        if not args.no_upload:
            notes.append(upload(base, headers, args.file, reference))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.flush()
        log.seek(0)
        server_log = log.read()
        log.close()
        os.unlink(log.name)
        if proc.returncode not in (0, -signal.SIGTERM) or "Traceback" in server_log:
            print(f"--- server log (exit {proc.returncode}) ---\n{server_log}", file=sys.stderr)

    audio_s = len(pcm) / 2 / SAMPLE_RATE
    print(f"\nserver: whisper-service serve --model {MODEL} (ready after {startup:.1f} s, "
          f"{workers} decode workers); "
          f"{args.file.name} ({audio_s:.1f} s) streamed in real time, {FRAME_S * 1000:.0f} ms "
          "pcm_s16le frames, word_timestamps on\n")
    print("| clients | latency median s | latency p90 s | WER (mean over clients) "
          f"| server peak RSS MB | RSS per extra client MB (vs 1) "
          f"| RSS per extra client MB (vs {workers}, the decode workers) |")
    print("|---|---|---|---|---|---|---|")
    for n, med, p90, mean_wer, peak, extra, beyond in rows:
        extra_s = f"{extra:.1f}" if extra is not None else "-"
        beyond_s = f"{beyond:.1f}" if beyond is not None else "-"
        print(f"| {n} | {med:.2f} | {p90:.2f} | {mean_wer:.3f} | {peak:.0f} | {extra_s} "
              f"| {beyond_s} |")
    print(f"\nserver RSS at rest (model {MODEL} and VAD loaded, no session): {at_rest:.0f} MB; "
          f"a bare process holding only the model (raw faster-whisper): {model_only:.0f} MB; "
          f"server overhead over the model: {at_rest - model_only:.0f} MB (target <= 150); "
          f"a bare Python process importing whisper_service.server: {bare:.0f} MB")
    for note in notes:
        print(note)
    print("\nper client:")
    print("\n".join(details))


if __name__ == "__main__":
    main()
