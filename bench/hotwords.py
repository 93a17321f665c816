"""Hotwords: does a rare name come out spelled right, and what do long lists cost?

1. tests/data/en_term.wav says "Katelynn Smyth" four times. For each model, the file path and
   a stream (finals and utterances) count the right spellings without and with
   `hotwords="Katelynn Smyth"`, and the stream's decode compute.
2. en_long through the file path with hotword lists of growing length: the WER, to show where
   hotwords crowd out the text (the file path refuses lists over MAX_HOTWORDS_TOKENS).

    .venv/bin/python bench/hotwords.py [--models tiny.en base] [--budget]

Run it under each backend (CT2_USE_MKL=0, CT2_FORCE_CPU_ISA=GENERIC): spelling is where
backends differ.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import DATA, english_wer, read_wav, reference  # noqa: E402

from whisper_service.config import Settings  # noqa: E402
from whisper_service.engine.decoder import Decoder  # noqa: E402
from whisper_service.engine.manager import ModelManager  # noqa: E402
from whisper_service.engine.windows import prompt_tokens  # noqa: E402
from whisper_service.streaming import StreamingSession, StreamOptions, replay  # noqa: E402
from whisper_service.transcript import DecodeRequest, TranscribeOptions  # noqa: E402

NAME = "Katelynn Smyth"
NAMES = ("Katelynn Smyth, Siobhán Ní Bhriain, Jörg Müller, Nguyễn Văn An, CTranslate2, "
         "faster-whisper, Silero VAD, LocalAgreement, WebSocket, Kubernetes, Prometheus, ") * 5


def spelling(manager: ModelManager, model: str) -> None:
    audio = read_wav(DATA / "en_term.wav")
    loaded = manager.acquire(model)
    try:
        for hotwords in ("", NAME):
            file = Decoder(loaded).decode(DecodeRequest(audio, TranscribeOptions(
                language="en", hotwords=hotwords or None)))
            options = StreamOptions.from_settings(language="en", hotwords=hotwords)
            with StreamingSession.open(manager, model, options) as session:
                events = [e for _, e in replay(session, audio, "fast")]
                compute = session.stats["decode_s"] + session.stats["utterance_s"]
            finals = " ".join(e.text for e in events if e.type == "final")
            utterances = " ".join(e.text for e in events if e.type == "utterance")
            print(f"| {model} | {'yes' if hotwords else 'no'} | {file.text.count(NAME)} / 4 | "
                  f"{finals.count(NAME)} / 4 | {utterances.count(NAME)} / 4 | {compute:.1f} |",
                  flush=True)
    finally:
        manager.release(loaded)


def budget(manager: ModelManager, model: str) -> None:
    audio = read_wav(DATA / "en_long.wav")
    loaded = manager.acquire(model)
    try:
        for target in (0, 32, 64, 96, 128, 160):
            hotwords = ""
            for word in NAMES.split(" "):
                longer = f"{hotwords} {word}".strip()
                if len(prompt_tokens(loaded, longer)) > target:
                    break
                hotwords = longer
            tokens = len(prompt_tokens(loaded, hotwords)) if hotwords else 0
            result = Decoder(loaded).decode(DecodeRequest(audio, TranscribeOptions(
                language="en", hotwords=hotwords or None)))
            print(f"| {model} | {tokens} | "
                  f"{english_wer(reference('en_long'), result.text):.3f} |", flush=True)
    finally:
        manager.release(loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--budget", action="store_true", help="also the hotword-length table")
    args = parser.parse_args()
    backend = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("CT2_"))
    manager = ModelManager.from_settings(Settings(cache_dir=Path(
        os.environ.get("WHISPER_SERVICE_CACHE_DIR") or tempfile.mkdtemp())))
    print(f"hotwords: en_term, backend {backend or 'default'}\n")
    print("| model | hotwords | file | stream finals | stream utterances | "
          "stream compute s |\n|---|---|---|---|---|---|")
    for model in args.models:
        spelling(manager, model)
    if args.budget:
        print("\nen_long through the file path (the limit is 96 tokens)\n\n"
              "| model | hotword tokens | WER |\n|---|---|---|")
        for model in args.models:
            budget(manager, model)
    manager.close()


if __name__ == "__main__":
    main()
