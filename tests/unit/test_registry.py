import pytest

from whisper_service import registry
from whisper_service.registry import ModelNotFoundError, check_language, resolve


def test_tiny_en_is_bundled(tmp_path):
    path = resolve("tiny.en", tmp_path)
    assert (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()
    assert registry.is_multilingual(path) is False


def test_base_is_assembled_once_and_verified(tmp_path):
    path = resolve("base", tmp_path)
    model_bin = path / "model.bin"
    assert model_bin.stat().st_size == registry._BASE_SIZE
    assert registry.is_multilingual(path) is True
    mtime = model_bin.stat().st_mtime_ns
    assert resolve("base", tmp_path) == path
    assert model_bin.stat().st_mtime_ns == mtime  # reused, not reassembled
    # Damage it: the stamp no longer matches, so it is rebuilt and verified again.
    with open(model_bin, "r+b") as f:
        f.write(b"garbage")
    resolve("base", tmp_path)
    import hashlib

    assert hashlib.sha256(model_bin.read_bytes()).hexdigest() == registry._BASE_SHA256


def test_base_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelNotFoundError, match="WHISPER_SERVICE_CACHE_DIR"):
        resolve("base", blocker)


def test_local_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model.bin"):
        resolve(str(tmp_path), tmp_path)


def test_unknown_names_fail_clearly_offline(tmp_path):
    with pytest.raises(ModelNotFoundError, match="Bundled models: tiny.en, base"):
        resolve("no-such-model", tmp_path)


def test_languages():
    check_language(None)
    check_language("de")
    with pytest.raises(ValueError, match="unsupported language code 'xx'"):
        check_language("xx")
