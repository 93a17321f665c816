"""`whisper-service batch`: in process against local Ray, same files, same run.

The files are the committed passages (tests/data: en_short, en_passage, en_term, en_numbers,
en_long), each copied `--copies` times under new names. Every run is a fresh
`whisper-service batch` process into an empty output directory, timed end to end (interpreter,
model load, Ray start or connect, decode, writes): what a user waits for. Runs:

- in process, `--workers 1` and `--workers 2` (the default on 2 cores), one thread per file,
  as a Ray actor decodes;
- `--ray ADDRESS` on a local cluster already running (`ray.init(num_cpus=N)` here): the
  per-job cost of Ray (connect, actors, a model per actor, Ray Data) without cluster start;
- `--ray auto` with no cluster running: the CLI starts a local one, as a first user would.

Ray's fixed cost per job comes from one short file (en_short) on the running cluster, minus
the same file in process. The N-node estimate is on paper: nodes like this one, each
decoding at the rate measured on the running cluster once that fixed cost is taken off;
time(N) = fixed + audio / (N x per-node rate). Every output must be byte-equal to the first
in-process run's.

    .venv/bin/python bench/batch.py [--model tiny.en] [--copies 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
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
CLIPS = ("en_short", "en_passage", "en_term", "en_numbers", "en_long")
NODES = (1, 2, 4, 8, 16, 64)
WORKLOAD_H = 1000.0  # audio hours in the paper estimate


def seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def make_files(directory: Path, copies: int) -> list[Path]:
    files = []
    for i in range(copies):
        for name in CLIPS:
            target = directory / f"{name}_{i}.wav"
            shutil.copyfile(DATA / f"{name}.wav", target)
            files.append(target)
    return files


def batch(files: list[Path], out: Path, model: str, *args: str) -> float:
    """Wall seconds of one `whisper-service batch` into an empty directory."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run([EXE, "batch", *map(str, files), "-m", model, "-o", str(out),
                           "--quiet", *args], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: batch {' '.join(args)}\n{proc.stderr}")
    return wall


def same_outputs(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and \
        all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--copies", type=int, default=2, help="copies of each committed clip")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (median)")
    args = parser.parse_args()
    import logging

    import ray

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        files = make_files(tmp, args.copies)
        audio = sum(seconds(f) for f in files)
        short = [tmp / "en_short_0.wav"]
        reference = tmp / "reference"
        batch(files, reference, args.model)  # warm the disk and the model cache; reference
        rows: list[tuple[str, float, bool]] = []

        def measure(label: str, *flags: str) -> float:
            walls = []
            same = True
            for i in range(args.repeat):
                out = tmp / f"out-{len(rows)}-{i}"
                walls.append(batch(files, out, args.model, *flags))
                same = same and same_outputs(out, reference)
            wall = statistics.median(walls)
            rows.append((label, wall, same))
            return wall

        local_1 = measure("in process, --workers 1", "--workers", "1")
        measure("in process, --workers 2 (the default here)", "--workers", "2")
        local_short = statistics.median(batch(short, tmp / "short", args.model)
                                        for _ in range(args.repeat))

        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        address = ray.get_runtime_context().gcs_address
        try:
            ray_wall = measure(f"Ray, running local cluster ({cpus} actors x 1 thread)",
                               "--ray", address)
            ray_short = statistics.median(batch(short, tmp / "short", args.model,
                                                "--ray", address)
                                          for _ in range(args.repeat))
        finally:
            ray.shutdown()
        measure(f"Ray, --ray auto starts a local cluster ({cpus} actors x 1 thread)",
                "--ray", "auto")

    print(f"\n{len(files)} files, {audio:.0f} s of audio ({audio / 3600:.3f} h), model "
          f"{args.model}, {cpus} CPUs, int8; each run a fresh `whisper-service batch` process "
          f"(median of {args.repeat})\n")
    print("| run | wall s | files/min | audio h/h | vs in process, 1 worker | outputs equal |")
    print("|---|---|---|---|---|---|")
    for label, wall, same in rows:
        print(f"| {label} | {wall:.1f} | {len(files) / wall * 60:.1f} | {audio / wall:.1f} "
              f"| {local_1 / wall:.2f}x | {'yes' if same else 'NO'} |")

    fixed = max(0.0, ray_short - local_short)
    node_rate = audio / max(ray_wall - fixed, 1e-9)  # audio s per wall s, one node, steady
    files_per_s = len(files) / max(ray_wall - fixed, 1e-9)
    print(f"\nRay's fixed cost per job: {fixed:.1f} s (one {seconds(DATA / 'en_short.wav'):.1f} s "
          f"file: {ray_short:.1f} s on the running cluster, {local_short:.1f} s in process). "
          f"Per node once running: {node_rate:.1f} audio h/h, {files_per_s * 60:.1f} files/min "
          f"of these.\n")
    print(f"Paper estimate, {WORKLOAD_H:.0f} audio hours on N nodes like this one "
          f"({cpus} CPUs each; time = {fixed:.0f} s + audio / (N x {node_rate:.1f})):\n")
    print("| nodes | audio h/h | files/min (these files) | wall for the workload |")
    print("|---|---|---|---|")
    for n in NODES:
        wall = fixed + WORKLOAD_H * 3600 / (n * node_rate)
        print(f"| {n} | {WORKLOAD_H * 3600 / wall:.0f} | {files_per_s * n * 60:.0f} "
              f"| {wall / 3600:.1f} h |")
    print("\nAssumes: inputs on storage every node reads at least this fast, files small "
          "against the job (no straggler at the end), the driver's writes (a few KB a file) "
          "not a limit, and the fixed cost not growing with N (actors start in parallel).")


if __name__ == "__main__":
    main()
