"""The utterance second pass offline: which window reads real speech as well as a file does.

On the real-speech dev set (bench/data/real), each clip is cut at the VAD's speech regions as
a stream's session cuts it (the default `VadOptions`), and the regions are decoded again as
the second pass would, one window per group, each prompted with the text decoded before it:

- `u<pad>b<beam>`: each region alone, padded to `pad` s (10: the steps' padding; 30:
  Whisper's own window), at beam `beam`;
- `m<min>p<pad>b<beam>`: regions joined until the group spans `min` s (at most 28 s), the
  pauses between them included, as `utterance_min_s` holds an utterance through pauses;
  `g<s>` after it: never across a pause longer than `s`.

No guards (the live path's loop and lost-words fallbacks), no timing: it isolates what the
window does to the words, in a minute per setting for tiny.en. WER pooled over each kind, as
bench/accuracy.py counts it; `offline` is the file path (its temperature fallback is random,
so that row moves a little between runs, on the conversation kind most).

    .venv/bin/python bench/second_pass.py --model tiny.en --configs u10b2 u30b2 m10p30b5
"""

from __future__ import annotations

import argparse

import numpy as np

from accuracy import REAL, load_set, pooled_wer  # bench/ is the script's directory
from whisper_service.config import get_settings
from whisper_service.engine.decoder import Decoder
from whisper_service.engine.manager import ModelManager
from whisper_service.transcript import DecodeRequest, TranscribeOptions
from whisper_service.vad import VADIterator, get_vad_model

SR = 16000
MAX_S = 28.0


def regions(audio: np.ndarray) -> list[tuple[int, int]]:
    """The VAD's speech regions (samples), fed in 100 ms blocks as a session feeds them."""
    vad, events = VADIterator(get_vad_model()), []
    for i in range(0, len(audio), 1600):
        events += vad(audio[i:i + 1600])
    events += vad.flush()
    out, start = [], 0
    for event in events:
        if event.kind == "start":
            start = event.sample
        else:
            out.append((start, event.sample))
    return out


def groups(spans: list[tuple[int, int]], min_s: float,
           gap_s: float) -> list[list[tuple[int, int]]]:
    out: list[list[tuple[int, int]]] = []
    group: list[tuple[int, int]] = []
    for span in spans:
        too_long = (span[1] - group[0][0]) / SR > MAX_S if group else False
        if group and (too_long or (span[0] - group[-1][1]) / SR > gap_s):
            out.append(group)
            group = []
        group.append(span)
        if (group[-1][1] - group[0][0]) / SR >= min_s:
            out.append(group)
            group = []
    return out + [group] if group else out


def parse(config: str) -> tuple[float, float, int, float]:
    """(min_s, pad_s, beam, gap_s) of a config name."""
    body, _, gap = config.partition("g")
    beam = int(body.split("b")[-1])
    if body.startswith("u"):
        return 0.0, float(body[1:].split("b")[0]), beam, float("inf")
    min_s, pad = body[1:].split("b")[0].split("p")
    return float(min_s), float(pad), beam, float(gap) if gap else float("inf")


def second_pass(decoder: Decoder, audio: np.ndarray, config: str) -> str:
    min_s, pad, beam, gap = parse(config)
    texts: list[str] = []
    for group in groups(regions(audio), min_s, gap):
        window = audio[group[0][0]:min(group[-1][1], len(audio))]
        step = int(MAX_S * SR)
        for piece in (window[i:i + step] for i in range(0, len(window), step)):
            prompt = " ".join(" ".join(texts).split()[-100:]) or None
            options = TranscribeOptions(language="en", beam_size=beam, word_timestamps=True,
                                        vad_filter=False, initial_prompt=prompt,
                                        condition_on_previous_text=False, temperature=0.0)
            texts.append(decoder.decode(DecodeRequest(piece, options, window=True,
                                                      pad_s=pad)).text.strip())
    return " ".join(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--configs", nargs="+", default=["u10b2", "u30b2", "m10p10b2",
                                                          "m10p30b2", "m10p30b5"])
    args = parser.parse_args()
    clips = load_set(REAL, None)
    manager = ModelManager.from_settings(get_settings(), concurrent=True)
    decoder = Decoder(manager.acquire(args.model))
    rows = {"offline": {c.name: decoder.decode(DecodeRequest(
        c.audio, TranscribeOptions(language="en"))).text for c in clips}}
    for config in args.configs:
        rows[config] = {c.name: second_pass(decoder, c.audio, config) for c in clips}
    kinds = [*sorted({c.kind for c in clips}), "all"]
    print(f"| {args.model} | " + " | ".join(kinds) + " |")
    print("|---" * (len(kinds) + 1) + "|")
    for name, texts in rows.items():
        cells = [f"{pooled_wer([c for c in clips if k in ('all', c.kind)], texts):.3f}"
                 for k in kinds]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
