"""Where a live session cuts its buffer (`trimming.choose_cut`) and the buffer it cuts."""

from __future__ import annotations

import numpy as np

from whisper_service.streaming.buffer import PREROLL, SessionBuffer
from whisper_service.streaming.trimming import PREFIX_S, TRIM_FROM_S, choose_cut
from whisper_service.transcript import Word

SR = 16000


def buffer_of(seconds: float, start_s: float = 0.0, committed: list[Word] | None = None,
              ) -> SessionBuffer:
    buffer = SessionBuffer()
    buffer.start = int(start_s * SR)
    buffer.extend(np.zeros(int(seconds * SR), np.float32))
    buffer.committed = committed or []
    return buffer


def words(*spans: tuple[str, float, float]) -> list[Word]:
    return [Word(start, end, text, 0.9) for text, start, end in spans]


def test_a_short_buffer_is_kept_whole():
    buffer = buffer_of(TRIM_FROM_S - 0.5, committed=words((" Hello.", 0.0, 1.0)))
    assert choose_cut(buffer, 1.0, [1.0], [], 10.0, 0.6).at is None


def test_the_cut_is_the_latest_committed_sentence_end():
    committed = words((" One.", 0.0, 0.8), (" Two", 0.9, 1.3), (" three.", 1.4, 2.0),
                      (" Four", 2.2, 2.6))
    cut = choose_cut(buffer_of(4.0, committed=committed), 2.6, [], [], 10.0, 0.6)
    assert cut.at == 2.0 and cut.force == ()


def test_continuous_speech_is_cut_prefix_s_behind_the_last_committed_word():
    committed = words(*[(f" w{i}", i * 0.4, i * 0.4 + 0.3) for i in range(10)])
    done = committed[-1].end
    cut = choose_cut(buffer_of(5.0, committed=committed), done, [], [], 10.0, 0.6)
    assert cut.at is not None and cut.at <= done - PREFIX_S
    assert cut.at == max(w.end for w in committed if w.end <= done - PREFIX_S)


def test_segment_ends_past_the_committed_words_are_not_cuts():
    committed = words((" a", 0.0, 0.5), (" b", 0.6, 1.0))
    cut = choose_cut(buffer_of(4.0, committed=committed), 1.0, [0.9, 3.5], [], 10.0, 0.6)
    assert cut.at == 0.9  # 3.5 s lies past what is committed


def test_a_full_buffer_without_agreement_forces_its_older_half_final_at_a_word_end():
    tentative = words((" so", 1.0, 1.4), (" un", 4.2, 4.7), ("believable", 4.9, 5.6),
                      (" later", 6.0, 6.5))
    cut = choose_cut(buffer_of(9.8), 0.0, [], tentative, 10.0, 0.6)
    # The half mark (4.8 s) falls inside "un-believable": the final takes the whole word.
    assert [w.word for w in cut.force] == [" so", " un", "believable"]
    assert cut.at == 5.6


def test_a_full_buffer_with_an_old_committed_word_cuts_there():
    committed = words((" one", 0.2, 0.6))
    cut = choose_cut(buffer_of(9.8, committed=committed), 0.6, [], [], 10.0, 0.6)
    # Over the cap any committed word will do, as no sentence or segment end was heard.
    assert cut.at == 0.6 and cut.force == ()


def test_the_buffer_keeps_stream_time_and_the_committed_prefix():
    buffer = buffer_of(3.0, start_s=10.0, committed=words((" Hi", 10.0, 10.4),
                                                          (" there.", 10.5, 11.0)))
    assert buffer.prefix() == " Hi there"  # without its stop: the decode writes it again
    audio, offset, stop = buffer.window(int(12.0 * SR))
    assert (len(audio), offset, stop) == (2 * SR, 10.0, 12 * SR)
    assert buffer.forget(10.45) == " Hi"
    buffer.drop_until(int(11.0 * SR))
    assert buffer.start == 11 * SR and buffer.seconds == 2.0
    assert buffer.decoded_until == buffer.start


def test_outside_speech_only_the_preroll_stays():
    buffer = buffer_of(5.0)
    buffer.keep_preroll()
    assert len(buffer.audio) == PREROLL and buffer.end == 5 * SR
