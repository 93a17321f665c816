"""`whisper-service`: serve, transcribe files, stream a file through a session, list models.

Every user error ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .config import get_settings

LANGUAGE_HELP = "auto, or a language code such as en, de, es"


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def _language(value: str) -> str | None:
    from .registry import check_language

    lang = None if value in ("auto", "") else value
    try:
        check_language(lang)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    return lang


def _manager():
    from .models import ModelManager

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


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "-m", default=lambda: get_settings().default_model, show_default="base")
@click.option("--language", "-l", default="auto", show_default=True, help=LANGUAGE_HELP)
@click.option("--task", type=click.Choice(["transcribe", "translate"]), default="transcribe",
              show_default=True)
@click.option("--format", "-f", "fmt", default="txt", show_default=True,
              type=click.Choice(["txt", "srt", "vtt", "json", "verbose_json"]))
@click.option("--output-dir", "-o", type=click.Path(path_type=Path),
              help="Write <name>.<ext> files here instead of printing to stdout.")
@click.option("--word-timestamps/--no-word-timestamps", default=False, show_default=True)
@click.option("--vad/--no-vad", default=True, show_default=True,
              help="Skip silence with Silero VAD (avoids text invented in silence).")
@click.option("--beam-size", default=5, show_default=True, type=click.IntRange(1, 20))
@click.option("--prompt", default=None, help="Initial prompt: names and terms to spell right.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def transcribe(files: tuple[Path, ...], model: str, language: str, task: str, fmt: str,
               output_dir: Path | None, word_timestamps: bool, vad: bool, beam_size: int,
               prompt: str | None, quiet: bool) -> None:
    """Transcribe or translate audio files to txt, srt, vtt or json."""
    from tqdm import tqdm

    from .audio import AudioError, decode_file
    from .formats import EXTENSIONS, render
    from .transcribe import Decoder, DecodeRequest, TranscribeOptions

    try:
        options = TranscribeOptions(language=_language(language), task=task, beam_size=beam_size,
                                    word_timestamps=word_timestamps, vad_filter=vad,
                                    initial_prompt=prompt)
    except ValueError as exc:
        raise _fail(str(exc)) from None
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
            audio = decode_file(path)
        except AudioError as exc:
            click.echo(f"Error: {exc}", err=True)
            failures += 1
            continue
        duration = len(audio) / 16000
        show = not quiet and sys.stderr.isatty()
        with tqdm(total=round(duration, 2), unit="s", desc=path.name, disable=not show,
                  file=sys.stderr, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} audio s "
                  "[{elapsed}<{remaining}]") as bar:
            transcript = decoder.decode(
                DecodeRequest(audio, options),
                on_progress=lambda s: bar.update(max(0.0, min(s, bar.total) - bar.n)))
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


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"{directory}: cannot create output directory ({exc.strerror})") from None
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise _fail(f"{directory}: output directory is not writable")


@main.command()
def models() -> None:
    """List the available models and whether they are loaded in this process."""
    from .registry import BUNDLED, describe

    settings = get_settings()
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
