"""`whisper-service batch`: many files into one directory, in process or on a Ray cluster.

One pipeline, two runners. `plan` splits the inputs into files still to do and files done;
`transcribe_one` turns one file into its rendered output or its error, and never raises, so a
corrupt file costs only itself; the driver (`run`) writes each output and reports each error as
the results arrive, whichever runner made them: `run_local` (threads on one shared model) or
`run_ray` (Ray Data over the file list, an actor pool with one model per actor).

Resume: a file is done when its output exists. Outputs are written to a temporary file in the
output directory and renamed into place (`os.replace`, atomic on one filesystem), so an
interrupted run leaves either a whole output or none, never a partial one that a rerun would
skip. A run killed mid-write may leave a hidden `.<name>.*.tmp` file; it never counts as done.
Failed files have no output, so a rerun tries them again.

Errors: one `Error: <file>: <reason>` line on stderr per failed file, as they happen; the
exit status is non-zero when any file failed. Nothing else is written to the output directory.

Ray: input paths must be readable at the same path on every node (a shared filesystem);
the driver writes the outputs, so the output directory only needs to be the driver's. Actors
decode with the driver's settings (WHISPER_SERVICE_*), except the model cache, each node's own.
Ray is imported only here, and only for `--ray`.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .config import Settings

if TYPE_CHECKING:  # at run time imported where used: `--help` needs no ctranslate2
    from .engine.decoder import Decoder
    from .transcript import TranscribeOptions

RAY_MISSING = "--ray needs Ray: pip install 'whisper-service[ray]'"
# Threads per file decode, on Ray and in process alike, unless WHISPER_SERVICE_CPU_THREADS
# says otherwise: one file per CPU gets the most files through (bench/batch.py compares).
DEFAULT_DECODE_THREADS = 1


def decode_threads(settings: Settings) -> int:
    """CPU threads per file decode, the same for both runners. CTranslate2 splits its matrix
    products by thread, and the sums then round differently (on AVX-512, a probability's
    digit differed), so a file gives byte-identical output in process and on Ray only when
    both decode it with the same threads."""
    return settings.cpu_threads or DEFAULT_DECODE_THREADS


class BatchError(Exception):
    """A problem that stops the whole batch before it starts (the CLI prints one line)."""


@dataclass(frozen=True)
class Job:
    """What every worker needs to turn a path into an output: picklable, sent to actors."""

    model: str
    options: TranscribeOptions
    fmt: str
    settings: Settings

    def output_name(self, path: str | Path) -> str:
        from .formats import EXTENSIONS

        return f"{Path(path).stem}.{EXTENSIONS[self.fmt]}"


@dataclass(frozen=True)
class FileResult:
    """One file's outcome: its rendered output, or the one-line reason it has none."""

    path: str
    output: str  # the output's file name in the output directory
    audio_s: float = 0.0
    text: str | None = None
    error: str | None = None

    def to_row(self) -> dict[str, Any]:
        """A Ray Data row: no None in the columns (Arrow would have to guess their type)."""
        return {"path": self.path, "output": self.output, "audio_s": self.audio_s,
                "text": self.text or "", "error": self.error or "", "ok": self.error is None}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FileResult:
        ok = bool(row["ok"])
        return cls(str(row["path"]), str(row["output"]), float(row["audio_s"]),
                   str(row["text"]) if ok else None, None if ok else str(row["error"]))


@dataclass
class Plan:
    todo: list[Path] = field(default_factory=list)
    done: list[Path] = field(default_factory=list)  # output already there: skipped
    refused: list[FileResult] = field(default_factory=list)  # e.g. two inputs, one output name

    @property
    def files(self) -> int:
        """Distinct inputs (a file named twice counts once)."""
        return len(self.todo) + len(self.done) + len(self.refused)


@dataclass
class Summary:
    inputs: int = 0
    transcribed: int = 0
    skipped: int = 0
    failed: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0

    def line(self) -> str:
        rate = f" ({self.audio_s / self.wall_s:.1f}x real time)" if self.wall_s and \
            self.audio_s else ""
        return (f"batch: {self.transcribed} transcribed, {self.skipped} skipped (output exists), "
                f"{self.failed} failed; {self.audio_s:.1f} audio s in {self.wall_s:.1f} s{rate}")


def plan(inputs: Iterable[Path], output_dir: Path, job: Job) -> Plan:
    """Which inputs still need work. An input whose output exists is done (resume). Two inputs
    that would write the same output name (a/x.wav, b/x.mp3) cannot both be right: the later
    ones are refused rather than silently overwriting or skipping each other."""
    result = Plan()
    owners: dict[str, Path] = {}
    seen: set[str] = set()
    for path in inputs:
        key = os.path.abspath(path)
        if key in seen:  # the same file named twice
            continue
        seen.add(key)
        name = job.output_name(path)
        if name in owners:
            result.refused.append(FileResult(str(path), name, error=(
                f"{path}: same output name {name} as {owners[name]}; rename one of them")))
            continue
        owners[name] = path
        (result.done if (output_dir / name).exists() else result.todo).append(path)
    return result


def transcribe_one(decoder: Decoder, path: str | Path, job: Job) -> FileResult:
    """One file, a chunk at a time (`file_chunk_s`), rendered. Never raises: in a batch of
    thousands, one file's problem is that file's error line, not the end of the job."""
    from .audio import AudioError, iter_audio
    from .batched import decode_file
    from .formats import render

    name = job.output_name(path)
    try:
        chunks = iter_audio(path, job.settings.file_chunk_s, job.settings.max_audio_s)
        transcript = decode_file(decoder, chunks, job.options, job.settings.file_decoding)
        return FileResult(str(path), name, transcript.duration,
                          render(transcript, job.fmt, job.options.task))
    except AudioError as exc:  # not audio, too long, empty: the message names the file
        return FileResult(str(path), name, error=str(exc))
    except Exception as exc:  # anything else still stays this file's problem
        return FileResult(str(path), name, error=f"{path}: failed ({type(exc).__name__}: {exc})")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename: a reader (or a rerun's
    `plan`) sees the whole output or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_model(job: Job) -> None:
    """Refuse an unknown model, or settings it cannot honour (tiny.en with -l de), before any
    actor starts: on Ray the model is loaded only in the actors. Raises ModelNotFoundError
    or ValueError with a one-line message."""
    from .engine.decoder import Decoder
    from .registry import is_multilingual, resolve

    path = resolve(job.model, job.settings.cache_dir)
    # Decoder.check needs only these two attributes of a loaded model: the same rule as the
    # actors apply, without loading the weights here.
    stub = SimpleNamespace(multilingual=is_multilingual(path),
                           key=SimpleNamespace(name=job.model))
    Decoder(stub).check(job.options)  # type: ignore[arg-type]


def load_decoder(job: Job, workers: int, threads: int) -> Decoder:
    """A Decoder on a model of its own: `workers` decodes at once, `threads` each
    (0: the settings' rule, see ModelManager.from_settings)."""
    from .engine.decoder import Decoder
    from .engine.manager import ModelManager

    settings = job.settings.override(num_workers=workers,
                                     cpu_threads=threads or job.settings.cpu_threads)
    decoder = Decoder(ModelManager.from_settings(settings).acquire(job.model))
    decoder.check(job.options)
    return decoder


def run_local(todo: list[Path], job: Job, workers: int = 0) -> Iterator[FileResult]:
    """In process: one model, `workers` files at once (one CTranslate2 worker each; 0: one
    per CPU core, as Ray sizes its actors), each decoded with the threads a Ray actor uses,
    results as they finish. At most two files per worker are queued, however many there are."""
    from .engine.manager import cpu_cores

    threads = decode_threads(job.settings)
    workers = workers or max(1, cpu_cores() // threads)
    decoder = load_decoder(job, workers, threads)
    if workers <= 1:
        for path in todo:
            yield transcribe_one(decoder, path, job)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="batch") as pool:
        pending: set[Future[FileResult]] = set()
        paths = iter(todo)
        while True:
            for path in paths:
                pending.add(pool.submit(transcribe_one, decoder, path, job))
                if len(pending) >= 2 * workers:
                    break
            if not pending:
                return
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()


class RayTranscriber:
    """A Ray Data actor: loads the model once (`threads` CPU threads, one decode at a time)
    and transcribes one file per batch. Module-level so workers import it by name."""

    def __init__(self, job: Job, threads: int) -> None:
        from .config import get_settings

        # The driver's settings, but this node's own model cache (its user, its disk).
        self.job = replace(job, settings=job.settings.override(cache_dir=get_settings().cache_dir))
        self.decoder = load_decoder(self.job, 1, threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [transcribe_one(self.decoder, str(p), self.job).to_row() for p in batch["path"]]
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


@dataclass(frozen=True)
class RaySizing:
    cpus: int
    actors: int
    threads: int


def ray_sizing(cpus: float, files: int, threads: int) -> RaySizing:
    """Actors x threads = the cluster's CPUs (at least one actor, no more than files)."""
    threads = max(1, threads)
    return RaySizing(int(cpus), max(1, min(int(cpus) // threads, files)), threads)


def ray_available() -> bool:
    from importlib.util import find_spec

    return find_spec("ray") is not None


def connect_ray(address: str) -> Any:
    """`auto`: the cluster RAY_ADDRESS or `ray start` names on this machine, else a new local
    one with this machine's CPUs; otherwise the address given. Ray's own logs and progress
    bars stay out of the CLI's output."""
    import logging

    try:
        import ray
    except ImportError:
        raise BatchError(RAY_MISSING) from None
    from ray.data import DataContext

    # Ray's C++ core logs an alarming line to stderr at ERROR level for every Ray Data actor
    # pool ("constructor arguments in the object store ... restart will fail", ray issue
    # 53727). At FATAL it logs one benign INFO line saying so instead. Failures still reach
    # the driver as exceptions and end as one line; set the variable to see everything.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    target = os.environ.get("RAY_ADDRESS") if address == "auto" else address
    problem = _unreachable(target) if target else None
    if problem:  # Ray itself retries an address nobody answers at for many minutes
        raise BatchError(f"--ray {address}: cannot connect to {target} ({problem})")
    try:
        ray.init(address=None if address == "auto" else address, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError, ...
        raise BatchError(f"--ray {address}: cannot connect ({_reason(exc)})") from None
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.enable_auto_log_stats = False
    context.print_on_execution_start = False
    # Ray Data logs a failed job's whole remote traceback; `run_ray` reports it in one line.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    return ray


def run_ray(todo: list[Path], job: Job, address: str,
            on_sizing: Callable[[RaySizing], None] | None = None) -> Iterator[FileResult]:
    """On Ray: the file list as a dataset of one file per block, mapped by a fixed pool of
    actors sized to the cluster's CPUs, results streamed back to the driver as they finish."""
    ray = connect_ray(address)
    try:
        from ray.data import ActorPoolStrategy

        sizing = ray_sizing(ray.cluster_resources().get("CPU", 1), len(todo),
                            decode_threads(job.settings))
        if on_sizing:
            on_sizing(sizing)
        dataset = ray.data.from_items([{"path": str(p)} for p in todo],
                                      override_num_blocks=len(todo))
        results = dataset.map_batches(
            RayTranscriber, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"job": job, "threads": sizing.threads},
            # One file in flight per actor: files take seconds to minutes, so a queue on an
            # actor only makes another actor idle at the end.
            compute=ActorPoolStrategy(size=sizing.actors, max_tasks_in_flight_per_actor=1),
            num_cpus=sizing.threads)
        try:
            for row in results.iter_rows():
                yield FileResult.from_row(row)
        except Exception as exc:  # an actor that cannot start, a lost node: one line
            raise BatchError(f"Ray job failed: {_reason(exc)}") from None
    finally:
        ray.shutdown()


def _unreachable(address: str, timeout_s: float = 10.0) -> str | None:
    """Why no TCP connection opens to a host:port address (ray:// too), or None if one
    does, or if the address has another form (Ray judges those)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout_s).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def _reason(exc: BaseException) -> str:
    """The line that says what went wrong. Ray's errors carry the remote traceback as text:
    its last `SomeError: message` line is the cause (without its module path)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [m for line in lines if (m := _EXCEPTION_LINE.match(line))]
    if causes:
        return f"{causes[-1]['name']}: {causes[-1]['message']}"[:300]
    return lines[-1][:300] if lines else type(exc).__name__


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception)): "
                             r"(?P<message>.*)$")


def run(inputs: list[Path], output_dir: Path, job: Job, *, ray: str | None = None,
        workers: int = 0, quiet: bool = False) -> Summary:
    """The driver: plan, run the files still to do on one runner, write each output as it
    arrives, report each failure as one `Error:` line on stderr. Raises BatchError, and
    ModelNotFoundError or ValueError for a model or options that cannot work."""
    from tqdm import tqdm

    started = time.perf_counter()
    work = plan(inputs, output_dir, job)
    summary = Summary(inputs=work.files, skipped=len(work.done))
    if work.todo and ray is not None:
        check_model(job)  # before any actor starts; in process, loading the model checks
    show = not quiet and sys.stderr.isatty()
    with tqdm(total=len(work.todo) + len(work.refused), unit="file", desc="batch",
              disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
        def say(line: str) -> None:
            """A line on stderr that does not tear the progress bar."""
            if bar.disable:
                print(line, file=sys.stderr, flush=True)
            else:
                bar.write(line, file=sys.stderr)

        def record(result: FileResult) -> None:
            if result.error is None:
                try:
                    write_atomic(output_dir / result.output, result.text or "")
                except OSError as exc:
                    result = FileResult(result.path, result.output, result.audio_s,
                                        error=f"{output_dir / result.output}: cannot write "
                                              f"({exc.strerror or exc})")
            if result.error is not None:
                summary.failed += 1
                say(f"Error: {result.error}")
            else:
                summary.transcribed += 1
                summary.audio_s += result.audio_s
            elapsed = time.perf_counter() - started
            bar.set_postfix_str(f"{summary.audio_s:.0f} audio s, "
                                f"{summary.audio_s / max(elapsed, 1e-9):.1f}x real time",
                                refresh=False)
            bar.update(1)

        for refused in work.refused:
            record(refused)
        if work.todo:
            if ray is None:
                results = run_local(work.todo, job, workers)
            else:
                def sized(s: RaySizing) -> None:
                    if not quiet:
                        say(f"batch: Ray cluster with {s.cpus} CPU(s): {s.actors} actor(s) "
                            f"x {s.threads} thread(s), {len(work.todo)} file(s) to do")

                results = run_ray(work.todo, job, ray, sized)
            for result in results:
                record(result)
    summary.wall_s = time.perf_counter() - started
    return summary
