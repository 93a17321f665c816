"""File transcription with real models on real speech (Piper's neural voice for English,
espeak-ng for German and Spanish)."""

import dataclasses

import pytest
from faster_whisper import WhisperModel

from tests.conftest import DATA, assert_wer, duration, english_wer, read_wav, reference
from whisper_service.audio import iter_audio
from whisper_service.batched import decode_batched, decode_file
from whisper_service.chunked import decode_chunks
from whisper_service.context import init_context
from whisper_service.engine import windows
from whisper_service.engine.decoder import Decoder
from whisper_service.engine.windows import decode_windows, prepare_window
from whisper_service.text import normalize
from whisper_service.transcript import DecodeRequest, TranscribeOptions, Transcript

pytestmark = pytest.mark.integration


def decode(loaded, name, **options):
    return Decoder(loaded).decode(DecodeRequest(read_wav_data(name), TranscribeOptions(**options)))


def read_wav_data(name):
    from tests.conftest import DATA

    return read_wav(DATA / f"{name}.wav")


# Bounds: about twice the worst WER seen on MKL, oneDNN and GENERIC, plus 0.05 (tests/README.md).
@pytest.mark.parametrize("model, name, bound", [
    ("tiny.en", "en_short", 0.15),
    ("tiny.en", "en_passage", 0.2),
    ("tiny.en", "en_numbers", 0.2),
    ("tiny.en", "en_long", 0.1),
    ("base", "en_passage", 0.15),
    ("base", "en_numbers", 0.2),
])
def test_english_wer(request, model, name, bound):
    loaded = request.getfixturevalue(model.replace(".", "_"))
    result = decode(loaded, name, language="en")
    assert_wer(f"offline {model} {name}", reference(name), result.text, bound)
    assert result.language == "en"


@pytest.mark.parametrize("model", ["tiny_en", "base"])
def test_numbers_come_out_as_digits(request, model):
    """Whisper writes numbers as digits; the order number and amounts must survive."""
    result = decode(request.getfixturevalue(model), "en_numbers", language="en")
    words = set(normalize(result.text.replace(",", "")).split())
    assert {"4172", "25", "12", "380"} <= words, result.text


def test_hard_voice_is_robot_speech_not_noise(tiny_en):
    """espeak-ng's robotic voice is at the edge of what tiny.en hears (its words flip with the
    CTranslate2 backend), so only behaviour is asserted: speech is found and most of it heard."""
    result = decode(tiny_en, "en_hard_espeak")
    assert result.segments and result.text
    assert english_wer(reference("en_hard_espeak"), result.text) < 0.9, result.text


def test_prompt_sets_a_rare_spelling(base):
    plain = decode(base, "en_term", language="en")
    prompted = decode(base, "en_term", language="en", initial_prompt="Katelynn Smyth")
    assert plain.text.count("Katelynn Smyth") == 0, plain.text
    assert prompted.text.count("Katelynn Smyth") >= 3, prompted.text  # said four times


@pytest.mark.parametrize("name, language", [("de_short", "de"), ("es_short", "es")])
def test_language_detection_with_base(base, name, language):
    # No temperature fallback: espeak-ng German sends it through all six (20 s), and the
    # language is detected before any text is decoded.
    result = decode(base, name, temperature=0.0)
    assert result.language == language
    assert result.language_probability > 0.2


def test_translate_returns_english(base):
    result = decode(base, "es_short", task="translate")
    words = set(normalize(result.text).split())
    assert {"good", "morning", "madrid", "park"} & words, result.text
    assert not {"buenos", "parque", "tarde"} & words, result.text


def test_word_timestamps_are_ordered(base):
    result = decode(base, "en_short", word_timestamps=True)
    words = [w for s in result.segments for w in s.words]
    assert len(words) >= len(reference("en_short").split()) - 3
    assert all(a.end <= b.start + 1e-3 for a, b in zip(words, words[1:]))
    assert words[-1].end <= result.duration + 0.05


@pytest.mark.once  # what is checked does not depend on the arithmetic
def test_english_only_model_rejects_other_languages(tiny_en):
    with pytest.raises(ValueError, match="English-only"):
        decode(tiny_en, "en_short", language="de")
    with pytest.raises(ValueError, match="cannot translate"):
        decode(tiny_en, "en_short", task="translate")


def test_thin_layer_gives_faster_whispers_text(base):
    """Same settings through our Decoder and straight through faster-whisper: same text."""
    audio = read_wav_data("en_short")
    raw: WhisperModel = base.model
    segments, _ = raw.transcribe(audio, language="en", beam_size=5, vad_filter=True)
    ours = decode(base, "en_short", language="en")
    assert ours.text == "".join(s.text for s in segments).strip()


# `decode_windows` calls faster-whisper internals (encode, get_prompt, generate_with_fallback,
# add_word_timestamps), so the pin in pyproject.toml is to the tested minor version and this
# checks that the window path still agrees with faster-whisper's own `transcribe`.
@pytest.mark.parametrize("name, prompt, prefix", [
    ("en_short", None, None),
    ("en_passage", "Speech recognition, LocalAgreement.", None),
    ("en_short", "Foxes and dogs.", "The quick brown fox"),
])
def test_window_path_matches_faster_whisper(tiny_en, name, prompt, prefix):
    audio = read_wav_data(name)
    settings = dict(language="en", beam_size=5, word_timestamps=True, vad_filter=False,
                    initial_prompt=prompt, prefix=prefix, temperature=0.0,
                    condition_on_previous_text=False)
    # At faster-whisper's own padding (30 s; the service pads streaming windows less).
    at_30 = dataclasses.replace(tiny_en, window_pad_s=30.0, scheduler=None)
    ours = Decoder(at_30).decode(DecodeRequest(audio, TranscribeOptions(**settings),
                                               window=True))
    # faster-whisper decodes what is left after the window's last timestamp as one more
    # window (here trailing silence, where it may invent "Thanks for watching"); the window
    # path leaves that out on purpose, so only the first window's segments are compared.
    theirs = [seg for seg in tiny_en.model.transcribe(audio, **settings)[0] if seg.seek == 0]
    assert ours.text == "".join(s.text for s in theirs).strip()
    assert len(ours.segments) == len(theirs)
    for a, b in zip(ours.segments, theirs):
        assert abs(a.start - b.start) <= 0.02 and abs(a.end - b.end) <= 0.02, (a, b)
        assert [w.word for w in a.words] == [w.word for w in b.words]


@pytest.mark.once  # what is checked does not depend on the arithmetic
def test_a_window_generates_no_more_tokens_than_its_audio_can_hold(tiny_en, monkeypatch):
    """The cap on generated tokens (windows.max_new_tokens) reaches the search: with room
    for 3 tokens, a 7.9 s window of clear speech stops after 3, text token or timestamp."""
    audio = read_wav_data("en_short")
    options = TranscribeOptions(language="en", beam_size=1, vad_filter=False, temperature=0.0)
    alone = dataclasses.replace(tiny_en, scheduler=None)
    whole = Decoder(alone).decode(DecodeRequest(audio, options, window=True))
    assert len(whole.text.split()) >= 10  # the speech, uncut
    monkeypatch.setattr(windows, "MIN_NEW_TOKENS", 3)
    monkeypatch.setattr(windows, "TOKENS_PER_SECOND", 0)
    capped = Decoder(alone).decode(DecodeRequest(audio, options, window=True))
    assert sum(len(seg.tokens) for seg in capped.segments) <= 3
    assert len(capped.text.split()) <= 2 and whole.text.startswith(capped.text.strip())


def test_batched_windows_equal_windows_decoded_alone(tiny_en):
    """Four sessions' windows (different audio, lengths, forced prefixes, one prompt length)
    in one batch give what each gives alone: same text, word times within 20 ms."""
    context = init_context(tiny_en.model.hf_tokenizer, "Speech, LocalAgreement.")
    context.append("Automatic speech recognition turns spoken words into written text. Modern")
    prompt = context.tokens()
    cuts = [("en_passage", 0, 6, None), ("en_passage", 4, 12, "Modern systems"),
            ("en_long", 10, 19, None), ("en_numbers", 0, 9, "The order")]
    windows = []
    for name, start, end, prefix in cuts:
        audio = read_wav_data(name)[start * 16000:end * 16000]
        options = TranscribeOptions(language="en", beam_size=5, word_timestamps=True,
                                    vad_filter=False, initial_prompt=prompt, prefix=prefix,
                                    temperature=0.0, condition_on_previous_text=False)
        windows.append(prepare_window(tiny_en, DecodeRequest(audio, options, window=True)))
    assert len({w.key for w in windows}) == 1, "precondition: one batch"

    def assert_same(alone: Transcript, together: Transcript) -> None:
        assert together.text == alone.text and len(alone.text.split()) >= 10
        a = [w for s in alone.segments for w in s.words]
        b = [w for s in together.segments for w in s.words]
        assert [w.word for w in a] == [w.word for w in b]
        assert all(abs(x.start - y.start) <= 0.02 and abs(x.end - y.end) <= 0.02
                   for x, y in zip(a, b))

    own_beam = dataclasses.replace(tiny_en, batch_beam_size=0, scheduler=None)
    batched = decode_windows(own_beam, windows)
    for window, together in zip(windows, batched):
        assert_same(decode_windows(own_beam, [window])[0], together)
    # By default each window keeps its own beam; with batch_beam_size=1 a batch is decoded
    # greedily: each window as it decodes alone at beam 1.
    assert tiny_en.batch_beam_size == 0
    greedy_batches = dataclasses.replace(tiny_en, batch_beam_size=1, scheduler=None)
    for window, together in zip(windows, decode_windows(greedy_batches, windows)):
        greedy = dataclasses.replace(window, options=dataclasses.replace(window.options,
                                                                         beam_size=1))
        assert_same(decode_windows(own_beam, [greedy])[0], together)
    # A live step's own beam for a busy model (`busy_beam_size`) applies in a batch, as the
    # model's cap does, and not to a window decoded alone.
    stepping = [dataclasses.replace(w, options=dataclasses.replace(w.options, busy_beam_size=1))
                for w in windows]
    for window, together in zip(stepping, decode_windows(own_beam, stepping)):
        greedy = dataclasses.replace(window, options=dataclasses.replace(window.options,
                                                                         beam_size=1))
        assert_same(decode_windows(own_beam, [greedy])[0], together)
    for window, alone in zip(stepping, windows):
        assert_same(decode_windows(own_beam, [alone])[0],
                    decode_windows(own_beam, [window])[0])
    # A batch shares one search: windows that would search differently when busy never meet.
    assert {w.key for w in stepping}.isdisjoint({w.key for w in windows})
    # Through the model's scheduler, as sessions call it, the results are the same again.
    requests = [DecodeRequest(read_wav_data(n)[s * 16000:e * 16000], w.options, window=True)
                for (n, s, e, _), w in zip(cuts, windows)]
    assert [Decoder(tiny_en).decode(r).text for r in requests] == [t.text for t in batched]


def test_long_file_in_chunks_reads_like_the_whole(tiny_en):
    """en_long (65.6 s) decoded 20 s at a time from the file, as uploads and the CLI decode
    long files `file_chunk_s` at a time: four chunks, each cut in a pause and prompted with
    the text before it, read as well as the whole, on one timeline from start to end."""
    path = DATA / "en_long.wav"
    options = TranscribeOptions(language="en", word_timestamps=True)
    result = decode_chunks(Decoder(tiny_en), iter_audio(path, chunk_s=20), options)
    # The bound is set by the margins table in tests/README.md.
    assert_wer("chunked tiny.en en_long", reference("en_long"), result.text, 0.12)
    assert result.duration == pytest.approx(duration("en_long"), abs=0.01)
    segments = result.segments
    assert [s.id for s in segments] == list(range(1, len(segments) + 1))
    assert all(a.end <= b.start + 1e-3 for a, b in zip(segments, segments[1:]))
    words = [w for s in segments for w in s.words]
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    assert all(s.start - 0.5 <= w.start and w.end <= s.end + 0.5 for s in segments
               for w in s.words)
    # Speech runs from the first second to the last, with pauses under a second: so must
    # the text, across every seam (a chunk whose text went missing leaves a gap).
    assert segments[0].start < 1.0 and segments[-1].end > result.duration - 2.0
    assert max(b.start - a.end for a, b in zip(segments, segments[1:])) < 2.0


def batched_file(loaded, name, chunk_s=30, **options):
    return decode_batched(Decoder(loaded), iter_audio(DATA / f"{name}.wav", chunk_s=chunk_s),
                          TranscribeOptions(**options))


def test_long_file_batched_reads_like_the_whole(tiny_en):
    """en_long (65.6 s) through the batched file path, read 30 s at a time: its speech cut
    into windows, decoded side by side without timestamp tokens, the segments cut at
    sentences from the aligned words, on one timeline from start to end, none overlapping."""
    result = batched_file(tiny_en, "en_long", language="en", word_timestamps=True)
    # The bound is set by the margins table in tests/README.md.
    assert_wer("batched tiny.en en_long", reference("en_long"), result.text, 0.12)
    assert result.duration == pytest.approx(duration("en_long"), abs=0.01)
    segments = result.segments
    assert [s.id for s in segments] == list(range(1, len(segments) + 1))
    assert all(s.start <= s.end and a.end <= b.start + 1e-3
               for a, b in zip(segments, segments[1:]) for s in (a, b))
    words = [w for s in segments for w in s.words]
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    assert all(s.start <= w.start and w.end <= s.end for s in segments for w in s.words)
    # Sentences, not windows: en_long has about 17 of them.
    assert 10 <= len(segments) <= 40, [s.text for s in segments]
    assert segments[0].start < 1.0 and segments[-1].end > result.duration - 2.0
    assert max(b.start - a.end for a, b in zip(segments, segments[1:])) < 2.0


def test_batched_file_detects_one_language_and_translates(base):
    detected = batched_file(base, "de_short", temperature=0.0)
    assert detected.language == "de" and detected.language_probability > 0.2
    translated = batched_file(base, "es_short", task="translate")
    words = set(normalize(translated.text).split())
    assert {"good", "morning", "madrid", "park"} & words, translated.text
    assert not {"buenos", "parque", "tarde"} & words, translated.text


def test_a_prompted_file_takes_the_sequential_path(base):
    """A prompt or hotwords send a file down the sequential path: without timestamp tokens
    base followed the prompt's spelling less ("Caitlyn Smyth" in all four places)."""
    def transcribe(**options):
        return decode_file(Decoder(base), iter_audio(DATA / "en_term.wav", chunk_s=30),
                           TranscribeOptions(language="en", **options)).text

    for text in (transcribe(initial_prompt="Katelynn Smyth"),
                 transcribe(hotwords="Katelynn Smyth")):
        assert text.count("Katelynn Smyth") >= 3, text  # said four times
