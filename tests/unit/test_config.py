"""Settings: the one place for defaults and bounds, and the docs that list them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from whisper_service.config import Settings, describe_error, settings_table
from whisper_service.context import WHISPER_MAX_PROMPT_TOKENS
from whisper_service.streaming import StreamOptions
from whisper_service.streaming.options import TUNABLES

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_reach_stream_options():
    settings = Settings()
    options = StreamOptions.from_settings(settings)
    for field, setting in TUNABLES.items():
        assert getattr(options, field) == getattr(settings, setting), field
    assert options.max_context_tokens == WHISPER_MAX_PROMPT_TOKENS
    assert options.beam_size > options.busy_beam_size == 1  # beam search only when idle
    assert options.language is None and options.static_prompt == ""


def test_a_tunable_given_overrides_its_setting_and_is_validated_as_settings_are():
    options = StreamOptions.from_settings(Settings(), beam_size=3, busy_beam_size=2,
                                          language="en")
    assert (options.beam_size, options.busy_beam_size, options.language) == (3, 2, "en")
    with pytest.raises(ValueError, match="stream_beam_size"):
        StreamOptions.from_settings(Settings(), beam_size=11)


@pytest.mark.parametrize("variable, value, needle", [
    ("MAX_BUFFER_S", "40", "WHISPER_SERVICE_MAX_BUFFER_S: Input should be less than or equal"),
    ("MIN_CHUNK_S", "0.05", "WHISPER_SERVICE_MIN_CHUNK_S: Input should be greater than or equal"),
    ("MAX_CONTEXT_TOKENS", "300", "WHISPER_SERVICE_MAX_CONTEXT_TOKENS"),
    ("STREAM_BEAM_SIZE", "0", "WHISPER_SERVICE_STREAM_BEAM_SIZE"),
    ("PORT", "http", "WHISPER_SERVICE_PORT: Input should be a valid integer"),
])
def test_a_bad_variable_is_named_in_one_line(monkeypatch, variable, value, needle):
    monkeypatch.setenv(f"WHISPER_SERVICE_{variable}", value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_error(caught.value)
    assert message.startswith(needle) and "\n" not in message, message


def test_chunk_must_fit_the_buffer(monkeypatch):
    monkeypatch.setenv("WHISPER_SERVICE_MIN_CHUNK_S", "3")
    monkeypatch.setenv("WHISPER_SERVICE_MAX_BUFFER_S", "4")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "at most half of max_buffer_s" in describe_error(caught.value)


def test_overrides_are_validated_like_the_environment():
    settings = Settings()
    assert settings.override(max_sessions=3).max_sessions == 3
    with pytest.raises(ValidationError):
        settings.override(max_sessions=0)
    with pytest.raises(ValidationError):
        StreamOptions.from_settings(settings, min_chunk_s=0.01)
    options = StreamOptions.from_settings(settings, beam_size=1, max_buffer_s=6, language="de")
    assert (options.beam_size, options.max_buffer_s, options.language) == (1, 6, "de")


def test_the_settings_table_is_the_one_in_the_docs():
    """docs/configuration.md holds the table made from the settings' declarations, so a
    setting's default, bounds and meaning are written once, in config.py."""
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert settings_table() in page, "regenerate: .venv/bin/python -m whisper_service.config"
    table = settings_table()
    assert all(f"`WHISPER_SERVICE_{name.upper()}`" in table for name in Settings.model_fields)
    for other in ("README.md", "docs/protocol.md", "docs/deploy.md", "docs/security.md"):
        rows = [line for line in (ROOT / other).read_text(encoding="utf-8").splitlines()
                if line.startswith("| `WHISPER_SERVICE_")]
        assert not rows, f"{other} writes settings out again: {rows[:2]}"


def test_the_table_shows_defaults_and_bounds_as_declared():
    table = settings_table()
    assert "| `WHISPER_SERVICE_MIN_CHUNK_S` | `0.6` | ≥ 0.1, ≤ 5 |" in table
    assert "| `WHISPER_SERVICE_API_KEY` | unset | – |" in table
    assert "| `WHISPER_SERVICE_UTTERANCES` | `true` | – |" in table
