"""`whisper-service`: serve, transcribe files, stream a file through a session, list models.

Every user error ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from .config import Settings, describe_error, get_settings

LANGUAGE_HELP = "auto, or a language code such as en, de, es"


def _default(field: str) -> str:
    """A setting's default as `--help` shows it (the value itself comes from Settings)."""
    return str(Settings.model_fields[field].default)


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def _language(value: str) -> str | None:
    from .registry import parse_language

    try:
        return parse_language(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _manager():
    from .engine.manager import ModelManager

    return ModelManager.from_settings(get_settings())


def _load(manager, name: str):
    from .registry import ModelNotFoundError

    try:
        return manager.acquire(name)
    except ModelNotFoundError as exc:
        raise _fail(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Whisper Service: self-hosted real-time speech-to-text."""
    try:
        get_settings()  # an invalid WHISPER_SERVICE_* variable stops here, named in one line
    except ValidationError as exc:
        raise _fail(describe_error(exc)) from None


def run() -> None:
    """The `whisper-service` command. Its heap is set up for file jobs before any thread
    starts (`serve` sets it up for a server instead); tests call `main` in their own
    process, whose heap this leaves alone."""
    from .memory import file_job_heap

    file_job_heap()
    main()


def _file_decode_flags(command):
    """The model and decoding flags `transcribe` and `batch` share (`_file_options` reads
    them)."""
    flags = [
        click.option("--model", "-m", default=lambda: get_settings().default_model,
                     show_default=_default("default_model")),
        click.option("--language", "-l", default="auto", show_default=True, help=LANGUAGE_HELP),
        click.option("--task", type=click.Choice(["transcribe", "translate"]),
                     default="transcribe", show_default=True),
        click.option("--format", "-f", "fmt", default="txt", show_default=True,
                     type=click.Choice(["txt", "srt", "vtt", "json", "verbose_json"])),
        click.option("--word-timestamps/--no-word-timestamps", default=False,
                     show_default=True),
        click.option("--vad/--no-vad", default=True, show_default=True,
                     help="Skip silence with Silero VAD (avoids text invented in silence)."),
        click.option("--beam-size", default=5, show_default=True, type=click.IntRange(1, 20)),
        click.option("--prompt", default=None,
                     help="Initial prompt: names and terms to spell right."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def _file_options(language: str, task: str, beam_size: int, word_timestamps: bool, vad: bool,
                  prompt: str | None):
    from .transcript import TranscribeOptions

    try:
        return TranscribeOptions(language=_language(language), task=task, beam_size=beam_size,
                                 word_timestamps=word_timestamps, vad_filter=vad,
                                 initial_prompt=prompt)
    except ValueError as exc:
        raise _fail(str(exc)) from None


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output-dir", "-o", type=click.Path(path_type=Path),
              help="Write <name>.<ext> files here instead of printing to stdout.")
@_file_decode_flags
def transcribe(files: tuple[Path, ...], model: str, language: str, task: str, fmt: str,
               output_dir: Path | None, word_timestamps: bool, vad: bool, beam_size: int,
               prompt: str | None, quiet: bool) -> None:
    """Transcribe or translate audio files to txt, srt, vtt or json."""
    from .audio import AudioError
    from .engine.decoder import Decoder
    from .formats import EXTENSIONS, render

    options = _file_options(language, task, beam_size, word_timestamps, vad, prompt)
    if output_dir is not None:
        _check_writable(output_dir)
    decoder = Decoder(_load(_manager(), model))
    try:
        decoder.check(options)
    except ValueError as exc:
        raise _fail(str(exc)) from None

    failures = 0
    for path in files:
        try:
            transcript = _decode_with_progress(decoder, path, options, quiet)
        except AudioError as exc:  # not audio, or too long: found before or while decoding
            click.echo(f"Error: {exc}", err=True)
            failures += 1
            continue
        text = render(transcript, fmt, task)
        if output_dir is None:
            click.echo(text, nl=False)
            continue
        out = output_dir / f"{path.stem}.{EXTENSIONS[fmt]}"
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            click.echo(f"Error: {out}: cannot write ({exc.strerror})", err=True)
            failures += 1
            continue
        if not quiet:
            click.echo(f"wrote {out}", err=True)
    if failures:
        raise _fail(f"{failures} of {len(files)} file(s) failed")


def _decode_with_progress(decoder, path: Path, options, quiet: bool):
    """Decode one file a chunk at a time (`file_chunk_s`: memory stays that of a chunk
    however long the file), with a progress bar in audio seconds when stderr is a terminal.
    The bar's total is the duration the container declares; without one, no total."""
    from itertools import chain

    from tqdm import tqdm

    from .audio import declared_duration, iter_audio
    from .batched import decode_file

    settings = get_settings()
    chunks = iter_audio(path, settings.file_chunk_s, settings.max_audio_s)
    first = next(chunks)  # not audio, or declared too long: the error comes before any bar
    total = declared_duration(path)
    show = not quiet and sys.stderr.isatty()
    counts = "{n:.1f}/{total:.1f} audio s [{elapsed}<{remaining}]" if total \
        else "{n:.1f} audio s [{elapsed}]"
    with tqdm(total=round(total, 2) if total else None, unit="s", desc=path.name,
              disable=not show, file=sys.stderr,
              bar_format=("{l_bar}{bar}| " if total else "{desc}: ") + counts) as bar:
        def progress(seconds: float) -> None:
            bar.update(max(0.0, min(seconds, bar.total or seconds) - bar.n))

        return decode_file(decoder, chain([first], chunks), options, settings.file_decoding,
                           on_progress=progress)


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"{directory}: cannot create output directory ({exc.strerror})") from None
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise _fail(f"{directory}: output directory is not writable")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output-dir", "-o", required=True, type=click.Path(path_type=Path),
              help="Write <name>.<ext> files here; inputs whose output exists are skipped, so "
                   "a rerun resumes.")
@_file_decode_flags
@click.option("--ray", "ray_address", metavar="auto|ADDRESS",
              help="Run on a Ray cluster: auto (RAY_ADDRESS, or a cluster started on this "
                   "machine, else a new local one) or the cluster's address. One actor per "
                   "WHISPER_SERVICE_CPU_THREADS (default 1) of the cluster's CPUs. Needs "
                   "pip install 'whisper-service[ray]'.")
@click.option("--workers", "-w", default=0, show_default=True, type=click.IntRange(0, 256),
              help="Without --ray: files decoded at once in this process, on one model; 0: "
                   "one per CPU core. Each decodes with the threads a Ray actor uses, so both "
                   "give the same output.")
def batch(inputs: tuple[Path, ...], output_dir: Path, model: str, language: str, task: str,
          fmt: str, word_timestamps: bool, vad: bool, beam_size: int, prompt: str | None,
          quiet: bool, ray_address: str | None, workers: int) -> None:
    """Transcribe many files into a directory, in this process or on a Ray cluster.

    Outputs are written whole or not at all, so a rerun skips exactly the files that are
    done; a file that fails is reported as one Error line and the others carry on."""
    from . import batch as pipeline
    from .registry import ModelNotFoundError

    options = _file_options(language, task, beam_size, word_timestamps, vad, prompt)
    if ray_address is not None and not pipeline.ray_available():
        raise _fail(pipeline.RAY_MISSING)
    if ray_address is not None and workers:
        raise _fail("--workers is for runs without --ray; on Ray the actors are sized to the "
                    "cluster's CPUs")
    _check_writable(output_dir)
    job = pipeline.Job(model, options, fmt, get_settings())
    try:
        summary = pipeline.run(list(inputs), output_dir, job, ray=ray_address, workers=workers,
                               quiet=quiet)
    except (pipeline.BatchError, ModelNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if not quiet:
        click.echo(summary.line(), err=True)
    if summary.failed:
        raise _fail(f"{summary.failed} of {summary.inputs} file(s) failed")


@main.command()
@click.option("--prepare", is_flag=True,
              help="Resolve every bundled model into the cache directory now (base: joined and "
                   "verified) and print where each is, so that serving does no such work "
                   "(container image builds run this).")
def models(prepare: bool) -> None:
    """List the available models and whether they are loaded in this process."""
    from .registry import BUNDLED, ModelNotFoundError, describe, resolve

    settings = get_settings()
    if prepare:
        for name in BUNDLED:
            try:
                path = resolve(name, settings.cache_dir)
            except ModelNotFoundError as exc:
                raise _fail(str(exc)) from None
            click.echo(f"{name}: {path}")
        return
    rows = [("NAME", "SOURCE", "LANGUAGES", "SIZE", "LOADED")]
    for name in BUNDLED:
        info = describe(name, settings.cache_dir)
        langs = {True: "multilingual", False: "English-only", None: "?"}[info.multilingual]
        size = f"{info.size_bytes / 1e6:.0f} MB" if info.size_bytes else "-"
        rows.append((name, info.source, langs, size, "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    click.echo("Any other name is fetched from the Hugging Face Hub (needs network), "
               "or give a path to a CTranslate2 Whisper model directory.")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--model", "-m", default="tiny.en", show_default=True)
@click.option("--language", "-l", default="auto", show_default=True, help=LANGUAGE_HELP)
@click.option("--task", type=click.Choice(["transcribe", "translate"]), default="transcribe",
              show_default=True)
@click.option("--realtime", "mode", flag_value="realtime", help="Pace pushes at wall-clock speed.")
@click.option("--fast", "mode", flag_value="fast", help="Push as fast as possible.")
@click.option("--simulated", "mode", flag_value="simulated", default=True,
              help="Default: audio clock advances by compute spent (latency includes compute).")
@click.option("--chunk", default=0.1, show_default=True, type=click.FloatRange(0.001, 60),
              help="Seconds of audio per push.")
@click.option("--min-chunk", default=lambda: get_settings().min_chunk_s, type=float,
              show_default=_default("min_chunk_s"),
              help="Seconds of new audio before re-decoding while the model is busy.")
@click.option("--idle-chunk", default=lambda: get_settings().idle_chunk_s, type=float,
              show_default=_default("idle_chunk_s"),
              help="Seconds of new audio before re-decoding while the model is idle.")
@click.option("--beam-size", default=lambda: get_settings().stream_beam_size, type=int,
              show_default=_default("stream_beam_size"))
@click.option("--static-prompt", default="", help="Names and terms; never trimmed.")
@click.option("--words", is_flag=True, help="Include word timestamps in finals and utterances.")
@click.option("--utterances/--no-utterances", default=lambda: get_settings().utterances,
              show_default=_default("utterances"),
              help="Decode each utterance again as a whole after its finals.")
def stream(file: Path, model: str, language: str, task: str, mode: str, chunk: float,
           min_chunk: float, idle_chunk: float, beam_size: int, static_prompt: str,
           words: bool, utterances: bool) -> None:
    """Stream FILE through a live session and print one JSON event per line; the last line
    (`done`) holds the transcript."""
    import json

    from .audio import AudioError, decode_file
    from .registry import ModelNotFoundError
    from .streaming import StreamingSession, StreamOptions, replay

    try:
        options = StreamOptions.from_settings(
            language=_language(language), task=task, min_chunk_s=min_chunk,
            idle_chunk_s=idle_chunk, beam_size=beam_size, static_prompt=static_prompt,
            utterances=utterances)
    except ValidationError as exc:
        flags = {"min_chunk_s": "--min-chunk", "idle_chunk_s": "--idle-chunk",
                 "stream_beam_size": "--beam-size"}
        raise _fail(describe_error(exc, flags)) from None
    try:
        audio = decode_file(file)
        session = StreamingSession.open(_manager(), model, options)
    except (AudioError, ModelNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    finals = 0
    with session:
        for emitted_at, event in replay(session, audio, mode, chunk):
            finals += event.type == "final"
            click.echo(json.dumps({**event.to_dict(words=words),
                                   "emitted_at": round(emitted_at, 3)}, ensure_ascii=False))
        stats = session.stats
    click.echo(json.dumps({"type": "done", "audio_s": round(stats["audio_s"], 3),
                           "finals": finals, "decodes": stats["decodes"],
                           "decode_s": round(stats["decode_s"], 3),
                           "compute_per_audio_s":
                               round(stats["decode_s"] / max(stats["audio_s"], 1e-9), 3),
                           "utterances": stats["utterances"],
                           "utterance_s": round(stats["utterance_s"], 3),
                           "language": session.language, "text": session.transcript},
                          ensure_ascii=False))


@main.command()
@click.option("--host", default=lambda: get_settings().host, show_default=_default("host"))
@click.option("--port", default=lambda: get_settings().port, type=int,
              show_default=_default("port"))
@click.option("--model", "-m", default=lambda: get_settings().default_model,
              show_default=_default("default_model"), help="Default model, loaded at start-up.")
@click.option("--max-sessions", type=int, default=lambda: get_settings().max_sessions,
              show_default=_default("max_sessions"), help="Concurrent streaming sessions.")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, model: str, max_sessions: int, log_level: str) -> None:
    """Start the HTTP and WebSocket server with the live transcription page."""
    from .memory import tune_heap
    from .registry import ModelNotFoundError, resolve
    from .server import run

    tune_heap()  # before any thread exists (a hub download starts some)
    try:
        settings = get_settings().override(host=host, port=port, default_model=model,
                                           max_sessions=max_sessions)
    except ValidationError as exc:
        raise _fail(describe_error(exc, {"port": "--port", "max_sessions": "--max-sessions"})) \
            from None
    try:
        resolve(model, settings.cache_dir)
    except ModelNotFoundError as exc:
        raise _fail(str(exc)) from None
    click.echo(f"Whisper Service: open http://{host}:{port}/ for live transcription "
               f"(model {model})", err=True)
    run(settings, log_level)
