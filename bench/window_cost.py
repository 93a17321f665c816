"""Where a streaming window's time goes: one decode worker (one thread), tiny.en by default.

Tables:
- window decode by prompt length (0-208 tokens), with and without word timestamps;
- window decode by window length (1-8 s of speech, padded to 10 s, a full prompt);
- per window in batches of 1, 2, 4 and 8 (2.5 s windows, a full prompt);
- the encoder alone, the features alone, and what `malloc_trim` gives back after a batch.

    .venv/bin/python bench/window_cost.py [--model tiny.en] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from faster_whisper.transcribe import get_ctranslate2_storage

from streaming import read  # bench/ is the script's directory
from whisper_service import memory
from whisper_service.engine.manager import ModelManager
from whisper_service.engine.windows import decode_windows, prepare_window, prompt_tokens
from whisper_service.transcript import DecodeRequest, TranscribeOptions

ROOT = Path(__file__).resolve().parent.parent
SPEECH = "en_long"  # 66 s of continuous reading: windows are cut from it
PROMPT_TOKENS = 208  # a full rolling context, as context.tokens() sends it


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    loaded = ModelManager(cpu_threads=args.threads, window_pad_s=10.0).get(args.model)
    audio = read(SPEECH)
    text = (ROOT / "tests" / "data" / f"{SPEECH}.txt").read_text()
    prompt = prompt_tokens(loaded, text)[:PROMPT_TOKENS]

    def windows(count: int, seconds: float, tokens: int, words: bool = True) -> list:
        options = TranscribeOptions(beam_size=1, word_timestamps=words, vad_filter=False,
                                    temperature=0.0, language="en",
                                    initial_prompt=tuple(prompt[:tokens]) or None)
        return [prepare_window(loaded, DecodeRequest(
            audio[int((5 + 4 * i) * 16000):int((5 + 4 * i + seconds) * 16000)], options,
            window=True)) for i in range(count)]

    def decode(batch: list) -> Callable[[], object]:
        return lambda: decode_windows(loaded, batch)

    print(f"window cost: {args.model}, {args.threads} thread(s), windows padded to 10 s\n")
    print("| prompt tokens | with word timestamps ms | without ms |")
    print("|---|---|---|")
    for tokens in (0, 64, 128, PROMPT_TOKENS):
        print(f"| {tokens} | {median_ms(decode(windows(1, 2.5, tokens)), args.repeats):.0f} | "
              f"{median_ms(decode(windows(1, 2.5, tokens, False)), args.repeats):.0f} |")

    print("\n| speech in the window s | decode ms |")
    print("|---|---|")
    for seconds in (1.0, 2.5, 4.0, 8.0):
        ms = median_ms(decode(windows(1, seconds, PROMPT_TOKENS)), args.repeats)
        print(f"| {seconds:g} | {ms:.0f} |")

    print("\n| windows in the batch | per window ms |")
    print("|---|---|")
    for count in (1, 2, 4, 8):
        ms = median_ms(decode(windows(count, 2.5, PROMPT_TOKENS)), max(3, args.repeats // 2))
        print(f"| {count} | {ms / count:.0f} |")

    window = windows(1, 2.5, 0)[0]
    model = loaded.model
    encode = median_ms(lambda: model.model.encode(
        get_ctranslate2_storage(window.features[None]), to_cpu=True), args.repeats)
    features = median_ms(lambda: model.feature_extractor(audio[:int(2.5 * 16000)]),
                         args.repeats)
    print(f"\nencoder alone: {encode:.0f} ms; features of 2.5 s: {features:.1f} ms")

    for _ in range(2):
        decode_windows(loaded, windows(8, 2.5, PROMPT_TOKENS))
        before = psutil.Process().memory_info().rss / 2**20
        started = time.perf_counter()
        memory.trim()
        took = (time.perf_counter() - started) * 1000
        after = psutil.Process().memory_info().rss / 2**20
        print(f"after a batch of 8: malloc_trim took {took:.0f} ms, RSS {before:.0f} -> "
              f"{after:.0f} MB")


if __name__ == "__main__":
    main()
