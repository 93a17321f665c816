"""The stream protocol's messages: what a config accepts, and the codes of what it refuses."""

from __future__ import annotations

import pytest

from whisper_service.config import Settings
from whisper_service.protocol import ProtocolError, StreamConfig, parse_config, parse_json
from whisper_service.vad import VadOptions


def refused(message: dict) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_config(message)
    return caught.value


def test_defaults_and_a_full_config():
    assert parse_config({"type": "config"}) == StreamConfig()
    config = parse_config({"type": "config", "model": "tiny.en", "language": "de",
                           "task": "translate", "sample_rate": 44100, "encoding": "pcm_f32le",
                           "static_prompt": "Katelynn", "word_timestamps": True,
                           "vad": {"threshold": 0.6, "min_silence_duration_ms": 300}})
    assert config.vad == VadOptions(threshold=0.6, min_silence_duration_ms=300)
    assert (config.sample_rate, config.encoding, config.word_timestamps) == (
        44100, "pcm_f32le", True)


@pytest.mark.parametrize("message, code, where", [
    ({"type": "end"}, "config_required", "first message must be a config"),
    ({"type": "config", "sample_rate": 96000}, "unsupported_sample_rate", "sample_rate"),
    ({"type": "config", "language": "xx"}, "invalid_config", "unsupported language code"),
    ({"type": "config", "task": "summarize"}, "invalid_config", "task"),
    ({"type": "config", "encoding": "mp3"}, "invalid_config", "encoding"),
    ({"type": "config", "colour": "blue"}, "invalid_config", "colour: Extra inputs"),
    ({"type": "config", "vad": {"threshold": 1.5}}, "invalid_config", "vad.threshold"),
    ({"type": "config", "vad": {"speech_pad_ms": -1}}, "invalid_config", "vad.speech_pad_ms"),
    ({"type": "config", "vad": {"window": 3}}, "invalid_config", "vad.window"),
    ({"type": "config", "vad": {"threshold": 0.3, "neg_threshold": 0.4}}, "invalid_config",
     "neg_threshold must be at most threshold"),
    ({"type": "config", "static_prompt": "x" * 2001}, "invalid_config", "static_prompt"),
])
def test_refused_configs_have_codes_and_name_the_field(message, code, where):
    error = refused(message)
    assert error.code == code and where in error.message, error.message
    assert error.close_code == 1008
    assert error.to_dict() == {"type": "error", "code": code, "message": error.message}


@pytest.mark.parametrize("text, code", [
    ("{not json", "invalid_json"), ("[1, 2]", "invalid_message"),
    ('{"type": 3}', "invalid_message"),
])
def test_bad_json(text, code):
    with pytest.raises(ProtocolError) as caught:
        parse_json(text)
    assert caught.value.code == code


def test_stream_options_take_the_servers_settings_and_the_clients_choices():
    settings = Settings(min_chunk_s=1.0, stream_beam_size=2, max_context_tokens=100)
    config = parse_config({"type": "config", "language": "auto", "static_prompt": "Smyth",
                           "vad": {"min_silence_duration_ms": 200}})
    options = config.stream_options(settings)
    assert (options.min_chunk_s, options.beam_size, options.max_context_tokens) == (1.0, 2, 100)
    assert options.language is None and options.static_prompt == "Smyth"
    assert options.vad.min_silence_duration_ms == 200
    assert parse_config({"type": "config", "language": "de"}).stream_options(
        settings).language == "de"
