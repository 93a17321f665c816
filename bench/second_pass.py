"""The utterance second pass offline: which window reads real speech as well as a file does.

On the real-speech dev set (bench/data/real), each clip is cut at the VAD's speech regions as
a stream's session cuts it (the default `VadOptions`), and the regions are decoded again as
the second pass would, one window per group, each prompted with the text decoded before it:

- `u<pad>b<beam>`: each region alone, padded to `pad` s (10: the steps' padding; 30:
  Whisper's own window), at beam `beam`;
- `m<min>p<pad>b<beam>`: regions joined until the group spans `min` s (at most 28 s), the
  pauses between them included, as `utterance_min_s` holds an utterance through pauses;
  `g<s>` after it: never across a pause longer than `s`;
- then, each optional: `w<n>`, the prompt is the last `n` words decoded before (default 100,
  about the rolling context's length; `w0`: no prompt); `c`, a decode that stops more than
  GO_ON_S before its window's end goes on with the rest, prompted with what it wrote; `t`,
  a window that fails Whisper's thresholds is decoded again hotter, as a file's is.

No guards (the live path's loop and lost-words fallbacks), no timing: it isolates what the
window does to the words, in a minute per setting for tiny.en. WER pooled over each kind, as
bench/accuracy.py counts it; `offline` is the file path (its temperature fallback is random,
so that row moves a little between runs, on the conversation kind most).

    .venv/bin/python bench/second_pass.py --model tiny.en --configs u10b2 u30b2 m10p30b5
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

import numpy as np

from accuracy import REAL, load_set, pooled_wer  # bench/ is the script's directory
from whisper_service.config import get_settings
from whisper_service.engine.decoder import Decoder
from whisper_service.engine.manager import ModelManager
from whisper_service.transcript import DecodeRequest, TranscribeOptions
from whisper_service.vad import VADIterator, get_vad_model

SR = 16000
MAX_S = 28.0
PROMPT_WORDS = 100  # the rolling context's length in words, about
FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # `t`: faster-whisper's temperatures, as a file's
GO_ON_S = 1.5  # `c`: speech left after the last word that is decoded again


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


CONFIG = re.compile(r"(?:u(?P<upad>[\d.]+)|m(?P<min>[\d.]+)p(?P<pad>[\d.]+))b(?P<beam>\d+)"
                    r"(?:g(?P<gap>[\d.]+))?(?:w(?P<words>\d+))?(?P<go_on>c)?(?P<hot>t)?$")


@dataclass(frozen=True)
class Config:
    min_s: float
    pad_s: float
    beam: int
    gap_s: float = float("inf")
    prompt_words: int = PROMPT_WORDS
    go_on: bool = False
    hot: bool = False


def parse(config: str) -> Config:
    """A config name: `u<pad>b<beam>` or `m<min>p<pad>b<beam>`, then `g<gap>`, `w<words>`
    (the prompt: the last `words` words decoded before; 0: none) and `c` (go on after an
    early stop), each optional."""
    match = CONFIG.match(config)
    if match is None:
        raise SystemExit(f"not a config: {config}")
    g = match.groupdict()
    return Config(0.0 if g["upad"] else float(g["min"]), float(g["upad"] or g["pad"]),
                  int(g["beam"]), float(g["gap"]) if g["gap"] else float("inf"),
                  int(g["words"]) if g["words"] else PROMPT_WORDS, bool(g["go_on"]),
                  bool(g["hot"]))


def second_pass(decoder: Decoder, audio: np.ndarray, name: str) -> str:
    config = parse(name)
    texts: list[str] = []
    for group in groups(regions(audio), config.min_s, config.gap_s):
        window = audio[group[0][0]:min(group[-1][1], len(audio))]
        step = int(MAX_S * SR)
        for piece in (window[i:i + step] for i in range(0, len(window), step)):
            for _ in range(3 if config.go_on else 1):
                words = " ".join(texts).split()[-config.prompt_words:] if config.prompt_words \
                    else []
                options = TranscribeOptions(language="en", beam_size=config.beam,
                                            word_timestamps=True, vad_filter=False,
                                            initial_prompt=" ".join(words) or None,
                                            condition_on_previous_text=False,
                                            temperature=FALLBACK if config.hot else 0.0)
                result = decoder.decode(DecodeRequest(piece, options, window=True,
                                                      pad_s=config.pad_s))
                texts.append(result.text.strip())
                decoded = [w for s in result.segments for w in s.words]
                end = decoded[-1].end if decoded else 0.0
                if len(piece) / SR - end <= GO_ON_S:
                    break
                piece = piece[int(end * SR):]  # the model stopped early: decode the rest
    return " ".join(t for t in texts if t)


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
