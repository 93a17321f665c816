"""Unit tests for the streaming guards: invented text (is_hallucination) and loops (loop_start)."""

from __future__ import annotations

import pytest

from whisper_service.streaming.guards import credits_start, is_hallucination, loop_start
from whisper_service.transcript import Segment


def seg(text: str, no_speech_prob: float = 0.01, avg_logprob: float = -0.2) -> Segment:
    return Segment(id=0, start=0.0, end=1.0, text=text, avg_logprob=avg_logprob,
                   no_speech_prob=no_speech_prob)


# -- is_hallucination ----------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    " Subtitles by the Amara.org community",
    " SUBTITLES BY THE AMARA.ORG COMMUNITY!",
    " Thanks for watching!",
    " Please subscribe to my channel.",
    " Transcribed by ESO, translated by —",
    " Captions by GetSubtitled.com",
])
def test_credits_are_always_dropped_even_when_confident(text):
    assert is_hallucination(seg(text, no_speech_prob=0.0, avg_logprob=-0.05))


@pytest.mark.parametrize("text", [" Thank you.", " Thanks!", " you", " Bye-bye.", " Okay.",
                                  " Thank you very much."])
def test_courtesy_dropped_only_when_the_model_is_unsure(text):
    assert is_hallucination(seg(text, no_speech_prob=0.31, avg_logprob=-0.2))
    assert is_hallucination(seg(text, no_speech_prob=0.01, avg_logprob=-0.81))
    assert not is_hallucination(seg(text, no_speech_prob=0.01, avg_logprob=-0.2))
    # The limits themselves are still "sure".
    assert not is_hallucination(seg(text, no_speech_prob=0.3, avg_logprob=-0.8))


def test_courtesy_inside_a_real_sentence_is_kept_when_unsure():
    text = " Thank you for coming to the meeting about the budget."
    assert not is_hallucination(seg(text, no_speech_prob=0.35, avg_logprob=-0.9))


@pytest.mark.parametrize("text", [
    " Speech recognition turns spoken words into written text.",
    " Modern systems learn from thousands of hours of recorded speech.",
    " The subtitle file is attached.",  # "subtitle" alone is not a credit
])
def test_normal_sentences_are_kept(text):
    assert not is_hallucination(seg(text))
    # Unsure, but not Whisper's silence rule and not a courtesy: still kept.
    assert not is_hallucination(seg(text, no_speech_prob=0.5, avg_logprob=-0.9))


@pytest.mark.parametrize("text", ["", "   ", " ...", " !?", " - "])
def test_empty_or_punctuation_only_text_is_dropped(text):
    assert is_hallucination(seg(text, no_speech_prob=0.0, avg_logprob=-0.01))


def test_whisper_silence_rule():
    text = " The quarterly numbers look fine."
    assert is_hallucination(seg(text, no_speech_prob=0.61, avg_logprob=-1.01))
    # Both conditions are needed, and both limits are strict.
    assert not is_hallucination(seg(text, no_speech_prob=0.61, avg_logprob=-0.99))
    assert not is_hallucination(seg(text, no_speech_prob=0.59, avg_logprob=-1.5))
    assert not is_hallucination(seg(text, no_speech_prob=0.6, avg_logprob=-1.01))
    assert not is_hallucination(seg(text, no_speech_prob=0.61, avg_logprob=-1.0))


# -- loop_start ----------------------------------------------------------------------------

def test_phrase_repeated_three_times_is_a_loop_cut_after_first_occurrence():
    words = "we will meet again we will meet again we will meet again".split()
    assert loop_start(words) == 4
    assert words[:loop_start(words)] == ["we", "will", "meet", "again"]


def test_loop_after_normal_words_keeps_the_prefix_and_first_occurrence():
    words = ("so the plan is " + "thank you so much " * 4).split()
    cut = loop_start(words)
    assert cut == 4 + 4
    assert words[:cut] == "so the plan is thank you so much".split()


def test_two_repeats_of_a_phrase_are_not_a_loop():
    words = "we will meet again we will meet again and then".split()
    assert loop_start(words) is None


def test_single_words_need_five_repeats():
    assert loop_start(["no", "no", "no"]) is None
    assert loop_start(["no", "no", "no", "no"]) is None
    assert loop_start(["well", "no", "no", "no", "no", "no"]) == 2
    assert loop_start(["no"] * 5) == 1


def test_no_loop_returns_none():
    assert loop_start([]) is None
    assert loop_start("speech recognition turns spoken words into written text".split()) is None
    # Repeats that are not back-to-back are not a loop.
    assert loop_start("a b c x a b c y a b c z".split()) is None


def test_punctuation_and_case_differences_still_count_as_repeats():
    words = [" Thank", " you.", " thank", " YOU", " Thank", " you!"]
    assert loop_start(words) == 2
    words = ["Go", "home,", "go", "HOME.", "go", "home"]
    assert loop_start(words) == 2


def test_punctuation_only_tokens_never_form_a_loop():
    assert loop_start(["...", "...", "...", "...", "...", "..."]) is None
    assert loop_start(["-", "!", "-", "!", "-", "!"]) is None


def test_repeats_followed_by_other_words_are_speech_not_a_loop():
    assert loop_start("thank you thank you thank you and then we left".split()) is None
    assert loop_start(["yes"] * 6 + ["okay"]) is None
    # Still a loop when the last repetition is cut short by the end of the window.
    assert loop_start("we will meet again we will meet again we will meet again we".split()) == 4


def test_credits_start_finds_where_the_credits_begin():
    assert credits_start(" see you then. Thanks for watching!".split()) == 3
    assert credits_start(["Subtitles", "by", "the", "Amara.org", "community"]) == 0
    assert credits_start("thanks for the help".split()) is None
    assert credits_start([]) is None


def test_a_long_phrase_written_twice_is_a_loop_a_short_one_is_not():
    sentence = "it should also keep memory flat over long sessions".split()
    assert loop_start(["and", *sentence, *sentence]) == 1 + len(sentence)
    # Four words twice can be speech ("I said no to that, I said no to that" is rarer, but
    # "one two three four, one two three four" is counting): three times is needed.
    assert loop_start("one two three four one two three four".split()) is None
    # A long phrase repeated, then speech going on, is not a loop.
    assert loop_start([*sentence, *sentence, "today"]) is None
