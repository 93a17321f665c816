"""Memory: what a model, a session and a client cost, against the naive design, and over time.

Each figure is measured in a fresh process, so nothing one measurement loaded shows in the
next. RSS is read after `gc` and `malloc_trim` in-process (memory still held, not freed pages
glibc keeps), and sampled from outside for the server.

- **Per model**: RSS of a process after loading the model and decoding once, minus the
  process before the load.
- **Per in-process session** (1 to 50): sessions opened on one shared model, each fed 3 s of
  speech and kept open; against the naive design measured in the same run, a fresh
  `WhisperModel` per session, as several peer servers do by default.
- **Per WebSocket client** (1 to 16, real time): `whisper-service serve`, N clients streaming
  the committed passages at once (as bench/capacity.py does); the server's median and peak
  RSS during the round.
- **A long session**: `--minutes` of speech (the first two minutes of the committed passages,
  repeated, so every even minute hears the same audio) pushed through one session faster
  than real time; RSS and median step time per minute.
- **The test suite's peak RSS** (with `--suite`, which runs `pytest tests/unit
  tests/integration`): the figure the suite prints at its end.

    .venv/bin/python bench/memory.py [--models tiny.en base] [--minutes 20] [--suite]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
PASSAGES = ("en_long", "en_passage", "en_numbers", "en_term", "en_short")
SESSION_COUNTS = (1, 10, 25, 50)
NAIVE_COUNTS = (1, 4, 8)  # each costs a whole model: enough for the slope
CLIENT_COUNTS = (1, 2, 4, 8, 16)


def rss_mb() -> float:
    from whisper_service import memory

    gc.collect()
    memory.trim()
    return psutil.Process().memory_info().rss / 2**20


def speech() -> np.ndarray:
    from whisper_service.audio import decode_file

    return np.concatenate([decode_file(DATA / f"{name}.wav") for name in PASSAGES])


def slope(points: list[tuple[int, float]]) -> float:
    """MB per added unit, least squares over (count, RSS)."""
    counts, values = zip(*points)
    return float(np.polyfit(counts, values, 1)[0])


# -- what runs in a child process (`bench/memory.py --child KIND MODEL [ARG]`) ---------------

def child_model(model: str) -> dict:
    from whisper_service.config import get_settings
    from whisper_service.engine.decoder import Decoder
    from whisper_service.engine.manager import ModelManager
    from whisper_service.transcript import DecodeRequest, TranscribeOptions

    manager = ModelManager.from_settings(get_settings())
    before = rss_mb()
    loaded = manager.acquire(model)
    audio = speech()[:10 * 16000]
    Decoder(loaded).decode(DecodeRequest(audio, TranscribeOptions(language="en")))
    return {"model_mb": rss_mb() - before}


def child_sessions(model: str) -> dict:
    from whisper_service.config import get_settings
    from whisper_service.engine.manager import ModelManager
    from whisper_service.streaming import StreamingSession, StreamOptions
    from whisper_service.vad import get_vad_model

    manager = ModelManager.from_settings(get_settings())
    manager.acquire(model)
    get_vad_model()
    audio, options = speech(), StreamOptions.from_settings(language="en")
    sessions, points = [], []
    for n in range(1, max(SESSION_COUNTS) + 1):
        session = StreamingSession.open(manager, model, options)
        start = (n * 5 * 16000) % (len(audio) - 4 * 16000)
        session.push(audio[start:start + 3 * 16000])
        sessions.append(session)
        if n in SESSION_COUNTS:
            points.append((n, rss_mb()))
    return {"points": points}


def child_naive(model: str) -> dict:
    """A fresh WhisperModel per session, each decoding once (the weights are shared on disk,
    not in memory)."""
    from faster_whisper import WhisperModel

    from whisper_service import registry
    from whisper_service.config import get_settings

    path = registry.resolve(model, get_settings().cache_dir)
    audio = speech()[:3 * 16000]
    models, points = [], []
    for n in range(1, max(NAIVE_COUNTS) + 1):
        m = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=1)
        list(m.transcribe(audio, language="en", word_timestamps=True)[0])
        models.append(m)
        if n in NAIVE_COUNTS:
            points.append((n, rss_mb()))
    return {"points": points}


def child_long(model: str, minutes: float) -> dict:
    from whisper_service.config import get_settings
    from whisper_service.engine.manager import ModelManager
    from whisper_service.streaming import StreamingSession, StreamOptions

    manager = ModelManager.from_settings(get_settings())
    unit = speech()[:120 * 16000]  # two minutes, repeated: every even minute hears the same
    total = int(minutes * 60 * 16000)
    audio = np.tile(unit, total // len(unit) + 1)[:total]
    steps: list[tuple[float, float]] = []
    pushed = 0.0
    session = StreamingSession.open(manager, model, StreamOptions.from_settings(language="en"),
                                    on_decode=lambda s: steps.append((pushed, s)))
    rss: dict[int, list[float]] = {}
    context_max = 0
    with session:
        for i in range(0, len(audio), 1600):
            pushed = i / 16000
            session.push(audio[i:i + 1600])
            context_max = max(context_max, session.context.token_count())
            if i % (10 * 16000) == 0:
                rss.setdefault(int(pushed // 60), []).append(rss_mb())
        session.end_of_stream()
    per_minute = [{"minute": m + 1, "rss": statistics.median(values),
                   "step": statistics.median([s for t, s in steps if m * 60 <= t < m * 60 + 60]
                                             or [float("nan")])}
                  for m, values in sorted(rss.items())]
    return {"minutes": per_minute, "context_max": context_max,
            "context_limit": session.context.max_context_tokens}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, env=os.environ.copy())
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the server rounds --------------------------------------------------------------------

def clients_round(model: str) -> list[dict]:
    """Median and peak server RSS with N real-time clients (bench/capacity.py's rounds)."""
    from capacity import run_round, serving
    from server import rss_mb as tree_rss_mb

    rows = []
    with serving(model, max(CLIENT_COUNTS)) as (host, server):
        idle = tree_rss_mb(server)
        for n in CLIENT_COUNTS:
            _, _, rss = asyncio.run(run_round(f"ws://{host}/v1/stream", model, n, 1, server))
            rows.append({"n": n, "idle": idle, "median": statistics.median(rss),
                         "peak": max(rss), "after": tree_rss_mb(server)})
            time.sleep(1.0)
    return rows


def clients_table(models: list[str]) -> None:
    """Per extra client: each round's RSS against the one-client round's, and the least-squares
    slope over all rounds (which one noisy round moves less)."""
    print("| model | clients | server RSS idle MB | median MB | peak MB | after MB "
          "| per extra client (median) MB | per extra client (peak) MB |")
    print("|---|---|---|---|---|---|---|---|")
    slopes = []
    for model in models:
        rows = clients_round(model)
        first = rows[0]
        for row in rows:
            extra = row["n"] - 1
            per_median = (row["median"] - first["median"]) / extra if extra else 0.0
            per_peak = (row["peak"] - first["peak"]) / extra if extra else 0.0
            print(f"| {model} | {row['n']} | {row['idle']:.0f} | {row['median']:.0f} | "
                  f"{row['peak']:.0f} | {row['after']:.0f} | {per_median:.1f} | "
                  f"{per_peak:.1f} |", flush=True)
        slopes.append(f"{model} {slope([(r['n'], r['median']) for r in rows]):.1f} MB "
                      f"(median), {slope([(r['n'], r['peak']) for r in rows]):.1f} MB (peak)")
    print(f"\nper extra client, least squares over 1-{max(CLIENT_COUNTS)} clients: "
          + "; ".join(slopes))


def suite_peak() -> str:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/unit",
                          "tests/integration", "-p", "no:cacheprovider"], cwd=ROOT,
                         capture_output=True, text=True, env=os.environ.copy())
    found = re.search(r"test process peak RSS: (\d+) MB; models loaded: (.*)", out.stdout)
    return f"{found.group(1)} MB ({found.group(2)})" if found else "not found"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, model, *rest = sys.argv[2:]
        func = {"model": child_model, "sessions": child_sessions, "naive": child_naive,
                "long": child_long}[kind]
        print(json.dumps(func(model, *map(float, rest))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--minutes", type=float, default=20.0, help="the long session")
    parser.add_argument("--no-clients", action="store_true", help="skip the server rounds")
    parser.add_argument("--suite", action="store_true", help="also run the test suite")
    parser.add_argument("--only-clients", action="store_true",
                        help="only the server rounds (per extra real-time client)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))

    print(f"memory: {os.cpu_count()} cores\n")
    if args.only_clients:
        clients_table(args.models)
        return
    print("| model | model in memory MB | per in-process session MB (1-50) | naive: per "
          "session with its own model MB | naive / shared |")
    print("|---|---|---|---|---|")
    for model in args.models:
        own = run_child("model", model)["model_mb"]
        shared = slope(run_child("sessions", model)["points"])
        naive = slope(run_child("naive", model)["points"])
        print(f"| {model} | {own:.0f} | {shared:.2f} | {naive:.0f} | "
              f"{naive / max(shared, 0.01):.0f}x |", flush=True)

    if not args.no_clients:
        print()
        clients_table(args.models)

    model = args.models[0]
    long = run_child("long", model, str(args.minutes))
    print(f"\nlong session, {model}, {args.minutes:g} min of speech (rolling context at most "
          f"{long['context_max']} of {long['context_limit']} tokens):\n")
    print("| minute | RSS MB | median step s |")
    print("|---|---|---|")
    for row in long["minutes"]:
        print(f"| {row['minute']} | {row['rss']:.0f} | {row['step']:.3f} |")

    if args.suite:
        print(f"\ntest suite (tests/unit, tests/integration) peak RSS: {suite_peak()}")


if __name__ == "__main__":
    main()
