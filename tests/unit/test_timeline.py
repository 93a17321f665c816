"""timeline: segments and words repaired into order, inside their audio, never overlapping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from whisper_service.timeline import clamp_words, ordered
from whisper_service.transcript import Segment, Word


def seg(id: int, start: float, end: float, *words: tuple[float, float]) -> Segment:
    return Segment(id, start, end, f" s{id}",
                   tuple(Word(a, b, f" w{id}.{i}", 0.9) for i, (a, b) in enumerate(words)))


def spans(segments) -> list[tuple[float, float]]:
    return [(s.start, s.end) for s in segments]


def test_an_escaping_end_is_clamped_to_the_next_start_and_its_words_with_it():
    # en_long under MKL: a segment ended at 27.82 s, the next one began at 23.82 s.
    out = list(ordered([seg(1, 20.82, 27.82, (20.9, 23.0), (23.1, 27.8)),
                        seg(2, 23.82, 27.42, (23.9, 27.4))], duration=30.0))
    assert spans(out) == [(20.82, 23.82), (23.82, 27.42)]
    assert [(w.start, w.end) for w in out[0].words] == [(20.9, 23.0), (23.1, 23.82)]
    assert out[1] == seg(2, 23.82, 27.42, (23.9, 27.4))  # untouched: nothing wrong with it


def test_an_end_past_the_audio_is_clamped_to_its_end():
    out = list(ordered([seg(1, 1.0, 2.0), seg(2, 21.0, 29.5, (21.0, 24.0), (24.5, 29.0))],
                       duration=23.7))
    assert spans(out) == [(1.0, 2.0), (21.0, 23.7)]
    assert [(w.start, w.end) for w in out[1].words] == [(21.0, 23.7), (23.7, 23.7)]
    assert [w.word for w in out[1].words] == [" w2.0", " w2.1"]  # no text is lost


def test_a_start_before_the_previous_end_moves_up_to_it():
    out = list(ordered([seg(1, 0.0, 5.0), seg(2, 5.0, 9.0), seg(3, 4.0, 10.0)], 12.0))
    assert spans(out) == [(0.0, 5.0), (5.0, 9.0), (9.0, 10.0)]


def test_a_segment_is_given_out_once_the_next_is_known():
    given_out: list[int] = []

    def source():
        for i in range(3):
            given_out.append(i)
            yield seg(i + 1, i, i + 0.5)

    out = ordered(source(), 10.0)
    assert next(out).id == 1 and given_out == [0, 1]
    assert [s.id for s in out] == [2, 3]


def test_words_are_clamped_into_their_span_in_order():
    words = (Word(0.5, 1.5, " a", 1.0), Word(1.0, 0.9, " b", 1.0), Word(3.0, 4.0, " c", 1.0))
    assert [(w.start, w.end) for w in clamp_words(words, 1.0, 3.5)] == \
        [(1.0, 1.5), (1.5, 1.5), (3.0, 3.5)]


times = st.floats(min_value=-5, max_value=40, allow_nan=False)


@given(st.lists(st.tuples(times, times, st.lists(st.tuples(times, times), max_size=4)),
                max_size=8), st.floats(min_value=0, max_value=35))
def test_invariants_hold_whatever_the_model_wrote(raw, duration):
    segments = [seg(i + 1, a, b, *words) for i, (a, b, words) in enumerate(raw)]
    out = list(ordered(segments, duration))
    assert [s.text for s in out] == [s.text for s in segments]
    assert [w.word for s in out for w in s.words] == [w.word for s in segments for w in s.words]
    floor = 0.0
    for s in out:
        assert floor <= s.start <= s.end <= duration
        for w in s.words:
            assert s.start <= w.start <= w.end <= s.end
            assert w.start >= floor
            floor = w.end
        floor = s.end
