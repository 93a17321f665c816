"""The streaming policy: LocalAgreement-2 (Machacek et al., 2023), which decides what of a
re-decoded buffer becomes final. It sees only words; the session owns audio and decodes.
"""

from __future__ import annotations

from dataclasses import replace

from ..text import normalize
from ..transcript import Word

WORD_END = (".", ",", "?", "!", ";", ":")  # after these, the next word starts anew


def starts_inside_word(word: Word) -> bool:
    """Whisper writes the space before a word into the word: one without it continues the
    word before it ("ill" then "-disposed", "didn" then "'t")."""
    return not word.word[:1].isspace()


def detached(word: Word) -> Word:
    """A word that would continue one already final, written as a word of its own: two
    decodes agreed that "cold" ended, and a third wrote "-hearted" after it. Finals never
    change, and joined with spaces they must not read "cold -hearted", so the joining
    hyphen or apostrophe goes: "cold hearted"."""
    return replace(word, word=" " + word.word.lstrip("-'’‐"))


class LocalAgreement:
    """LocalAgreement-2 (Machacek et al., 2023): commit the longest common word prefix of the
    last two hypotheses. Hypotheses hold only words after the committed text (the session
    forces that text as the decode's prefix), so nothing is matched by time.

    `unsure`: after short steps (`update(..., wary=True)`), a word the model gave a
    probability under this in either hypothesis needs a third hypothesis to agree. Such
    words are the ones more audio after them still changes (noise heard as words, a name
    half said); two hypotheses a short step apart have heard about the same audio after
    them. The other words keep LocalAgreement-2's latency (bench/accuracy.py). 0 turns the
    extra agreement off."""

    def __init__(self, unsure: float = 0.0) -> None:
        self.unsure = unsure
        self.last_committed_end = 0.0
        self._previous: list[Word] = []
        self._streaks: list[int] = []  # per tentative word: hypotheses in a row that had it
        self._sure: list[bool] = []  # per tentative word: never under `unsure` in them

    @property
    def tentative(self) -> list[Word]:
        return self._previous

    def update(self, hypothesis: list[Word], wary: bool = True) -> list[Word]:
        """Commit what the hypotheses agree on; `wary`: this one came a short step after the
        last, so unsure words need a third."""
        streaks, sure = [1] * len(hypothesis), [w.probability >= self.unsure for w in hypothesis]
        for i, (a, b) in enumerate(zip(hypothesis, self._previous)):
            if normalize(a.word) != normalize(b.word):
                break
            streaks[i] = self._streaks[i] + 1
            sure[i] = sure[i] and self._sure[i]
        agreed = 0
        while agreed < len(hypothesis) and streaks[agreed] >= (
                3 if wary and not sure[agreed] else 2):
            agreed += 1
        while agreed and not self._boundary(hypothesis, agreed):
            agreed -= 1
        commit = hypothesis[:agreed]
        self._previous = hypothesis[agreed:]
        self._streaks, self._sure = streaks[agreed:], sure[agreed:]
        return self._commit(commit)

    def _boundary(self, hypothesis: list[Word], at: int) -> bool:
        """Whether a final may end before word `at`: only where a new word starts in both
        hypotheses. Clients join finals with spaces, so a final that ended inside a word would
        read "ill -disposed". Where neither hypothesis has a word after `at`, whether the
        word goes on is not known yet, so it waits, unless it ends in punctuation."""
        following = [h[at] for h in (hypothesis, self._previous) if at < len(h)]
        if not following:
            return hypothesis[at - 1].word.rstrip().endswith(WORD_END)
        return not any(map(starts_inside_word, following))

    def commit_all(self, hypothesis: list[Word]) -> list[Word]:
        """End of utterance: everything not yet committed becomes final."""
        self.reset()
        return self._commit(hypothesis)

    def reset(self) -> None:
        self._previous, self._streaks, self._sure = [], [], []

    def _commit(self, words: list[Word]) -> list[Word]:
        """`words` become final: remember where they end, and start them on a word of their
        own (`detached`)."""
        if not words:
            return []
        self.last_committed_end = words[-1].end
        first = detached(words[0]) if starts_inside_word(words[0]) else words[0]
        return [first, *words[1:]]
