"""Files: our path against faster-whisper's sequential and batched pipelines, in one run.

Each run is a fresh child process; wall time and peak RSS come from os.wait4, so every path
pays for interpreter start, model load and decode alike. Paths:

- `ours`: `whisper-service transcribe` as it ships (`file_decoding=batched`);
- `ours sequential`: the same with `WHISPER_SERVICE_FILE_DECODING=sequential` (the path
  before the batched one: chunk after chunk, each prompted with the text before it);
- `fw sequential`: faster-whisper's `WhisperModel.transcribe` (beam 5, VAD);
- `fw batched`: faster-whisper's `BatchedInferencePipeline` (beam 5, batch 8);
- `idle`: a process that loads the model and stops, for the peak RSS a file job adds.

Files, each long enough that batches fill:

- `real`: the real-speech dev set (bench/data/real) joined, a second of silence between clips
  (13.9 min, 19 speakers), WER against the joined references;
- `synthetic`: tests/data/en_long ten times over (10.9 min, one neural voice), WER against its
  text ten times;
- `names`: en_long followed by en_term ("Katelynn Smyth" four times), five times over (6.6
  min), so that the name comes back in many windows. Its last column gives how the file
  spells the name: the share of its 40 words (first and last name, 20 times each) written as
  the file writes them most often, and the number of spellings. Without a prompt no path can
  know the spelling; a path that prompts each window with the text before it carries the
  first spelling on, where windows decoded side by side each guess.

Reports the median wall time of --repeat runs (interleaved, so drift hits all alike), the
throughput against `fw batched`'s, peak RSS, and WER after Whisper's English normalizer.

    .venv/bin/python bench/transcribe.py [--repeat 3] [--models tiny.en base] [--files names]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from pathlib import Path

import numpy as np
from jiwer import process_words, wer

from accuracy import REAL, load_set, normalize  # bench/ is the script's directory
from whisper_service.audio import decode_file

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
EXE = str(Path(sys.executable).parent / "whisper-service")
SR = 16000

LOAD = """
import sys
from faster_whisper import BatchedInferencePipeline, WhisperModel
from whisper_service.config import get_settings
from whisper_service.registry import resolve
path, model_name, mode = sys.argv[1], sys.argv[2], sys.argv[3]
model = WhisperModel(str(resolve(model_name, get_settings().cache_dir)), device="cpu",
                     compute_type="int8")
"""
RAW = LOAD + """
if mode == "batched":
    segments, _ = BatchedInferencePipeline(model).transcribe(path, language="en", beam_size=5,
                                                             batch_size=8)
elif mode == "sequential":
    segments, _ = model.transcribe(path, language="en", beam_size=5, vad_filter=True)
else:
    segments = []
print(" ".join(s.text.strip() for s in segments))
"""
PATHS = ("ours", "ours sequential", "fw sequential", "fw batched", "idle")


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB, and stdout of one child process."""
    out = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    out.seek(0)
    return wall, usage.ru_maxrss / 1024, out.read().decode()


def command(path: str, model: str, file: Path) -> tuple[list[str], dict[str, str]]:
    ours = [EXE, "transcribe", "--quiet", "-m", model, "-l", "en", "--beam-size", "5",
            str(file)]
    raw = [sys.executable, "-c", RAW, str(file), model]
    return {
        "ours": (ours, {"WHISPER_SERVICE_FILE_DECODING": "batched"}),
        "ours sequential": (ours, {"WHISPER_SERVICE_FILE_DECODING": "sequential"}),
        "fw sequential": (raw + ["sequential"], {}),
        "fw batched": (raw + ["batched"], {}),
        "idle": (raw + ["idle"], {}),
    }[path]


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


NAMES = ("katelynn", "smyth")


def files(tmp: Path) -> list[tuple[str, Path, float, str]]:
    """(name, path, seconds, reference) of the three long files, written as 16 kHz WAV."""
    clips = load_set(REAL, None)
    gap = np.zeros(SR, np.float32)
    real = np.concatenate([x for c in clips for x in (c.audio, gap)])
    long, term = decode_file(DATA / "en_long.wav"), decode_file(DATA / "en_term.wav")
    synthetic = np.concatenate([long] * 10)
    names = np.concatenate([long, gap, term, gap] * 5)
    text = (DATA / "en_long.txt").read_text().strip()
    term_text = (DATA / "en_term.txt").read_text().strip()
    return [("real", write_wav(tmp / "real.wav", real), len(real) / SR,
             " ".join(c.reference for c in clips)),
            ("synthetic", write_wav(tmp / "synthetic.wav", synthetic), len(synthetic) / SR,
             " ".join([text] * 10)),
            ("names", write_wav(tmp / "names.wav", names), len(names) / SR,
             " ".join([text, term_text] * 5))]


def spellings(reference: str, hypothesis: str) -> str:
    """How consistently the hypothesis spells NAMES: the share of their words in the
    reference written as the hypothesis writes each most often, and how many spellings."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    out = process_words(ref, hyp)
    ref_words, hyp_words = out.references[0], out.hypotheses[0]
    heard: dict[str, Counter[str]] = {name: Counter() for name in NAMES}
    for chunk in out.alignments[0]:
        for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
            if ref_words[i] not in heard:
                continue
            j = chunk.hyp_start_idx + (i - chunk.ref_start_idx)
            spelled = hyp_words[j] if chunk.type in ("equal", "substitute") \
                and j < chunk.hyp_end_idx else "(missing)"
            heard[ref_words[i]][spelled] += 1
    total = sum(sum(c.values()) for c in heard.values())
    usual = sum(c.most_common(1)[0][1] for c in heard.values() if c)
    kinds = sum(len(c) for c in heard.values())
    return f"{usual / max(1, total):.2f} ({kinds} spellings)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--files", nargs="+", default=["real", "synthetic", "names"],
                        choices=["real", "synthetic", "names"])
    args = parser.parse_args()
    print("| model | file | audio s | path | wall s | throughput vs fw batched | audio s per s "
          "| peak RSS MB | over idle MB | WER | names spelled alike |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            run(command("ours", model, DATA / "en_short.wav")[0])  # the cache, the disk
            for name, file, duration, reference in files(Path(tmp)):
                if name not in args.files:
                    continue
                results: dict[str, list[tuple[float, float, str]]] = {p: [] for p in args.paths}
                for _ in range(args.repeat):
                    for path in args.paths:
                        results[path].append(run(*command(path, model, file)))
                wall = {p: statistics.median(r[0] for r in rs) for p, rs in results.items()}
                rss = {p: statistics.median(r[1] for r in rs) for p, rs in results.items()}
                for path in args.paths:
                    if path == "idle":
                        continue
                    error = wer(normalize(reference), normalize(results[path][0][2]))
                    alike = spellings(reference, results[path][0][2]) if name == "names" \
                        else "–"
                    ratio = f"{wall['fw batched'] / wall[path]:.2f}" \
                        if "fw batched" in wall else "–"
                    over = f"{rss[path] - rss['idle']:.0f}" if "idle" in rss else "–"
                    print(f"| {model} | {name} | {duration:.0f} | {path} | {wall[path]:.1f} "
                          f"| {ratio} | {duration / wall[path]:.1f} | {rss[path]:.0f} | {over} "
                          f"| {error:.3f} | {alike} |", flush=True)


if __name__ == "__main__":
    main()
