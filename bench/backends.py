"""The test suite's WER margins on each CTranslate2 int8 arithmetic this CPU has.

CTranslate2 picks its int8 backend by CPU vendor (Intel MKL on Intel CPUs, oneDNN elsewhere),
and its own kernels, and oneDNN's, by the instruction sets the CPU has (AVX2, AVX-512). Model
outputs differ slightly between them: two fresh-clone failures in a row came from a CPU
generation whose arithmetic the suite had not seen. So every assertion on model output must
hold under all of them. This runs the model-dependent tests once per arithmetic, one after
another, collects every WER the tests assert on (tests/conftest.py `assert_wer` logs them),
and prints the table for tests/README.md: the worst value, the rule-of-thumb bound
2 x worst + 0.05, and the bound the test uses.

    .venv/bin/python bench/backends.py [-k EXPR] [--backends MKL oneDNN AVX512 AVX2 GENERIC]

The arithmetics (those the CPU cannot run are left out):
- MKL: Intel's library, as on Intel CPUs (on AMD about 4.5x slower than oneDNN);
- oneDNN: as on AMD CPUs, at the best instruction set each part picks for itself;
- AVX512: oneDNN, with CTranslate2's own kernels forced to AVX-512 (by default it picks
  them per vendor);
- AVX2: an AVX2-only machine: CTranslate2's kernels and oneDNN's both capped at AVX2;
- GENERIC: CTranslate2's plain kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AVX2_ONLY = {"CT2_USE_MKL": "0", "CT2_FORCE_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
ALL_BACKENDS = {
    "MKL": ({"CT2_USE_MKL": "1"}, ()),
    "oneDNN": ({"CT2_USE_MKL": "0"}, ()),
    "AVX512": ({"CT2_USE_MKL": "0", "CT2_FORCE_CPU_ISA": "AVX512"},
               ("avx512f", "avx512bw", "avx512dq", "avx512vl")),
    "AVX2": (AVX2_ONLY, ("avx2", "fma")),
    "GENERIC": ({"CT2_FORCE_CPU_ISA": "GENERIC"}, ()),
}
ARITHMETIC_VARIABLES = ("CT2_", "ONEDNN_", "DNNL_", "MKL_")
# Every test that runs a model, but the leak tests: they assert on memory, not on model output.
MODEL_TESTS = "(integration or e2e) and not memory"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    lines = [line for line in text.splitlines() if line.startswith("flags")]
    return set(lines[0].split(":", 1)[1].split()) if lines else set()


def available() -> dict[str, dict[str, str]]:
    """The arithmetics this CPU can run."""
    flags = cpu_flags()
    return {name: env for name, (env, needs) in ALL_BACKENDS.items()
            if all(flag in flags for flag in needs)}


BACKENDS = available()


def run(name: str, env: dict[str, str], log: Path, select: list[str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ARITHMETIC_VARIABLES)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-m", MODEL_TESTS, *select],
        cwd=ROOT, env={**clean, **env, "WHISPER_SERVICE_TEST_WER_LOG": str(log)},
        capture_output=True, text=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    print(f"{name}: {summary}", file=sys.stderr)
    return proc.returncode


def read_logs(logs: dict[str, Path]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Worst WER per assertion label and backend, and each label's bound."""
    table: dict[str, dict[str, float]] = defaultdict(dict)
    bounds: dict[str, float] = {}
    for name, log in logs.items():
        for line in log.read_text().splitlines() if log.exists() else []:
            row = json.loads(line)
            label = row["label"]
            table[label][name] = max(table[label].get(name, 0.0), row["wer"])
            bounds[label] = row["bound"]
    return table, bounds


def print_table(names: list[str], table: dict[str, dict[str, float]],
                bounds: dict[str, float]) -> None:
    print(f"| assertion | {' | '.join(names)} | 2 x worst + 0.05 | bound |")
    print(f"|---|{'---|' * len(names)}---|---|")
    for label in sorted(table):
        values = table[label]
        worst = max(values.values())
        cells = " | ".join(f"{values[b]:.3f}" if b in values else "-" for b in names)
        print(f"| {label} | {cells} | {2 * worst + 0.05:.3f} | {bounds[label]} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", help="pytest -k expression to run a subset")
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--logs", nargs="+", metavar="NAME=FILE",
                        help="tabulate WHISPER_SERVICE_TEST_WER_LOG files instead of running")
    args = parser.parse_args()
    if args.logs:
        logs = {n: Path(f) for n, f in (item.split("=", 1) for item in args.logs)}
        print_table(list(logs), *read_logs(logs))
        return 0
    select = ["-k", args.k] if args.k else []
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = {name: Path(tmp) / f"{name}.jsonl" for name in args.backends}
        for name in args.backends:
            if run(name, BACKENDS[name], logs[name], select):
                failed.append(name)
        print_table(args.backends, *read_logs(logs))
    if failed:
        print(f"tests failed under: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
