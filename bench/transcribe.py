"""Raw faster-whisper vs `whisper-service transcribe`: same files, same settings, same run.

Each run is a fresh child process; wall time and peak RSS come from os.wait4, so both sides
pay for interpreter start, model load and decode alike. Reports the median of --repeat runs.

    .venv/bin/python bench/transcribe.py [--repeat 3] [--models tiny.en base]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
EXE = str(Path(sys.executable).parent / "whisper-service")

RAW = """
import sys
from faster_whisper import WhisperModel
from whisper_service.registry import resolve
from whisper_service.config import get_settings
path, model_name = sys.argv[1], sys.argv[2]
model = WhisperModel(str(resolve(model_name, get_settings().cache_dir)), device="cpu",
                     compute_type="int8")
segments, info = model.transcribe(path, language="en", beam_size=5, vad_filter=True)
print("".join(s.text for s in segments).strip())
"""


def run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB, and stdout of one child process."""
    out = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    out.seek(0)
    return wall, usage.ru_maxrss / 1024, out.read().decode()


def long_file(tmp: Path) -> Path:
    """About 70 s of speech: the passage three times, to show behaviour past one window."""
    path = tmp / "en_passage_x3.wav"
    with wave.open(str(DATA / "en_passage.wav")) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(frames * 3)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        files = [DATA / "en_passage.wav", long_file(Path(tmp))]
        # Assemble the base cache and warm the disk first.
        run([EXE, "transcribe", "--quiet", "-m", "base", str(files[0])])
        rows = []
        for model in args.models:
            for path in files:
                with wave.open(str(path)) as w:
                    duration = w.getnframes() / w.getframerate()
                raw_cmd = [sys.executable, "-c", RAW, str(path), model]
                ours_cmd = [EXE, "transcribe", "--quiet", "-m", model, "-l", "en", "--vad",
                            "--beam-size", "5", str(path)]
                raw, ours = [], []
                for _ in range(args.repeat):  # interleaved, so drift hits both alike
                    raw.append(run(raw_cmd))
                    ours.append(run(ours_cmd))
                same = raw[0][2].strip() == ours[0][2].strip()
                rw, rr = (statistics.median(r[i] for r in raw) for i in (0, 1))
                ow, orss = (statistics.median(r[i] for r in ours) for i in (0, 1))
                rows.append((model, path.name, duration, rw, ow, rr, orss, same))

    print(f"\nmedian of {args.repeat} runs, each a fresh process (load + decode), int8 on CPU\n")
    print("| model | file | audio s | raw wall s | ours wall s | time ratio | raw RTF | ours RTF "
          "| raw peak RSS MB | ours peak RSS MB | RSS ratio | same text |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, name, dur, rw, ow, rr, orss, same in rows:
        print(f"| {model} | {name} | {dur:.1f} | {rw:.2f} | {ow:.2f} | {ow / rw:.3f} "
              f"| {rw / dur:.3f} | {ow / dur:.3f} | {rr:.0f} | {orss:.0f} | {orss / rr:.3f} "
              f"| {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
