"""The Realtime transcription protocol without a model: configs, session objects and `Turns`,
fed with made-up session events. Shapes are checked against the official `openai` types."""

from __future__ import annotations

import base64

import pytest

from whisper_service.server.realtime_protocol import (
    RealtimeConfig,
    RealtimeError,
    Turns,
    audio_bytes,
)
from whisper_service.streaming import StreamEvent

realtime_types = pytest.importorskip("openai.types.realtime")
beta_types = pytest.importorskip("openai.types.beta.realtime")

DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


def start(t: float) -> StreamEvent:
    return StreamEvent("speech_start", t, t, "")


def end(t: float) -> StreamEvent:
    return StreamEvent("speech_end", t, t, "")


def final(s: float, e: float, text: str) -> StreamEvent:
    return StreamEvent("final", s, e, text)


def utterance(s: float, e: float, text: str) -> StreamEvent:
    return StreamEvent("utterance", s, e, text)


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


# -- Turns ----------------------------------------------------------------------------------

def test_a_server_vad_turn_sends_deltas_then_commit_then_the_utterance_text():
    turns = Turns(server_vad=True, utterances=True)
    out = turns.events([start(0.5), final(0.6, 1.2, "the quick"), final(1.2, 2.0, "brown fox")])
    assert kinds(out) == ["input_audio_buffer.speech_started", DELTA, DELTA]
    assert out[0]["audio_start_ms"] == 500
    item = out[0]["item_id"]
    assert {e["item_id"] for e in out} == {item}
    assert "".join(e["delta"] for e in out[1:]) == "the quick brown fox"

    out = turns.events([end(2.6)])  # the utterance's second decode is still running
    assert kinds(out) == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    assert out[0]["audio_end_ms"] == 2600 and out[1]["previous_item_id"] is None

    out = turns.events([utterance(0.6, 2.0, "The quick brown fox.")])
    assert kinds(out) == [COMPLETED]
    assert out[0]["item_id"] == item and out[0]["transcript"] == "The quick brown fox."
    assert out[0]["usage"] == {"type": "duration", "seconds": 2.1}
    for event in out:  # the official client's types accept what we send
        realtime_types.ConversationItemInputAudioTranscriptionCompletedEvent.model_validate(
            event)


def test_without_utterances_completed_joins_the_finals_at_once():
    turns = Turns(server_vad=True, utterances=False)
    out = turns.events([start(0.0), final(0.1, 1.0, "hello"), final(1.0, 1.5, "world."),
                        end(2.0)])
    assert kinds(out)[-1] == COMPLETED and out[-1]["transcript"] == "hello world."


def test_items_complete_in_order_each_with_its_own_utterances():
    turns = Turns(server_vad=True, utterances=True)
    out = turns.events([start(0.0), final(0.1, 1.0, "one"), final(1.0, 9.0, "long"),
                        utterance(0.1, 1.0, "One."),  # a long turn closed an utterance early
                        end(9.5), start(10.0), final(10.1, 11.0, "two"), end(11.5)])
    first, second = [e["item_id"] for e in out if e["type"] == "input_audio_buffer.committed"]
    assert COMPLETED not in kinds(out)  # the first item still waits for its last utterance
    out = turns.events([utterance(1.0, 9.0, "Long."), utterance(10.1, 11.0, "Two.")])
    assert [(e["item_id"], e["transcript"]) for e in out] == [(first, "One. Long."),
                                                             (second, "Two.")]


def test_a_turn_without_words_completes_empty():
    turns = Turns(server_vad=True, utterances=True)
    out = turns.events([start(0.0), end(0.8)])
    assert kinds(out)[-1] == COMPLETED and out[-1]["transcript"] == ""


def test_manual_turns_end_at_commits_and_ignore_the_vad():
    turns = Turns(server_vad=False, utterances=True)
    out = turns.events([start(0.0), final(0.1, 1.0, "first part"), end(1.5),
                        utterance(0.1, 1.0, "First part."), start(2.0),
                        final(2.1, 3.0, "second part")])
    assert kinds(out) == [DELTA, DELTA]  # no speech_started / stopped without server VAD
    out = turns.commit([end(3.2), utterance(2.1, 3.0, "Second part.")], at_s=3.2)
    assert kinds(out) == ["input_audio_buffer.committed", COMPLETED]
    assert out[1]["transcript"] == "First part. Second part."


def test_a_commit_during_server_vad_speech_ends_that_turn_once():
    turns = Turns(server_vad=True, utterances=False)
    turns.events([start(0.0), final(0.1, 1.0, "hello")])
    out = turns.commit([final(1.0, 1.4, "there"), end(1.4)], at_s=1.4)
    assert kinds(out) == [DELTA, "input_audio_buffer.speech_stopped",
                          "input_audio_buffer.committed", COMPLETED]
    assert out[-1]["transcript"] == "hello there"


def test_a_commit_of_silence_makes_an_empty_item_after_the_previous_one():
    turns = Turns(server_vad=False, utterances=False, offset_s=10.0, previous_item="item_x")
    out = turns.commit([], at_s=0.5)
    assert kinds(out) == ["input_audio_buffer.committed", COMPLETED]
    assert out[0]["previous_item_id"] == "item_x" and out[1]["transcript"] == ""


def test_a_cleared_turn_is_never_committed_and_its_utterance_is_not_the_next_ones():
    turns = Turns(server_vad=True, utterances=True)
    turns.events([start(0.0), final(0.1, 1.0, "scratch that")])
    turns.clear()
    out = turns.events([end(1.2), start(2.0), final(2.1, 3.0, "real words"), end(3.5),
                        utterance(0.1, 1.0, "Scratch that."), utterance(2.1, 3.0, "Real words.")])
    assert kinds(out).count("input_audio_buffer.committed") == 1
    assert [e["transcript"] for e in out if e["type"] == COMPLETED] == ["Real words."]


def test_offsets_carry_times_across_sessions():
    turns = Turns(server_vad=True, utterances=False, offset_s=30.0)
    out = turns.events([start(1.0), end(2.0)])
    assert out[0]["audio_start_ms"] == 31000 and out[1]["audio_end_ms"] == 32000


# -- configs and session objects -------------------------------------------------------------

def test_ga_update_maps_onto_our_settings_and_renders_for_the_official_types():
    config, dialect = RealtimeConfig().updated({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1", "language": "de", "prompt": "Katelynn",
                              "keywords": ["Smyth", " CTranslate2 "]},
            "turn_detection": {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
                               "silence_duration_ms": 800}}}}})
    assert dialect == "ga"
    assert (config.format, config.rate, config.language, config.prompt) == \
        ("pcm16", 24000, "de", "Katelynn")
    assert config.hotwords == "Smyth, CTranslate2"  # keywords are our hotwords
    vad = config.vad
    assert (vad.threshold, vad.speech_pad_ms, vad.min_silence_duration_ms) == (0.6, 200, 800)
    session = config.session("ga", "sess_1", "base")
    parsed = realtime_types.RealtimeTranscriptionSessionCreateRequest.model_validate(session)
    assert parsed.audio.input.turn_detection.silence_duration_ms == 800
    assert parsed.audio.input.transcription.language == "de"


def test_beta_update_and_manual_turns():
    config, dialect = RealtimeConfig().updated({"type": "transcription_session.update",
                                                "session": {"input_audio_format": "g711_ulaw",
                                                            "turn_detection": None}})
    assert dialect == "beta"
    assert (config.format, config.rate, config.turn_detection) == ("g711_ulaw", 8000, None)
    session = config.session("beta", "sess_1", "whisper-1")
    # The beta type also requires the ephemeral key a REST-created session carries; its own
    # docs say it is absent from sessions made over the WebSocket, as ours are.
    secret = {"client_secret": {"value": "", "expires_at": 0}}
    parsed = beta_types.TranscriptionSession.model_validate({**session, **secret})
    assert parsed.input_audio_format == "g711_ulaw" and parsed.turn_detection is None


def test_an_update_changes_only_what_it_names():
    config, _ = RealtimeConfig().updated({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"transcription": {"language": "en"}}}}})
    config, _ = config.updated({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"turn_detection": None}}}})
    assert config.language == "en" and config.turn_detection is None and config.rate == 24000


@pytest.mark.parametrize("session, param", [
    ({"type": "realtime"}, "session.type"),
    ({"type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}},
     "session.audio.input.format.type"),
    ({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm",
                                                              "rate": 96000}}}},
     "session.audio.input.format.rate"),
    ({"type": "transcription", "audio": {"input": {"transcription": {"language": "xx"}}}},
     "session.audio.input.transcription.language"),
    ({"type": "transcription", "audio": {"input": {"turn_detection": {"threshold": 2}}}},
     "session.audio.input.turn_detection.threshold"),
    ({"type": "transcription", "audio": "loud"}, "session.audio"),
])
def test_bad_updates_name_the_parameter(session, param):
    with pytest.raises(RealtimeError) as info:
        RealtimeConfig().updated({"type": "session.update", "session": session})
    assert info.value.param == param
    event = info.value.event("evt_1")
    assert event["type"] == "error" and event["error"]["event_id"] == "evt_1"
    realtime_types.RealtimeErrorEvent.model_validate(event)


def test_audio_must_be_base64():
    assert audio_bytes({"audio": base64.b64encode(b"\x01\x02").decode()}) == b"\x01\x02"
    for bad in ({"audio": "not base64!"}, {"audio": 3}, {}):
        with pytest.raises(RealtimeError):
            audio_bytes(bad)
