"""The streaming policy: LocalAgreement-2 (Machacek et al., 2023), which decides what of a
re-decoded buffer becomes final. It sees only words; the session owns audio and decodes.
"""

from __future__ import annotations

from ..text import normalize
from ..transcript import Word

WORD_END = (".", ",", "?", "!", ";", ":")  # after these, the next word starts anew


def starts_inside_word(word: Word) -> bool:
    """Whisper writes the space before a word into the word: one without it continues the
    word before it ("ill" then "-disposed", "didn" then "'t")."""
    return not word.word[:1].isspace()


class LocalAgreement:
    """LocalAgreement-2 (Machacek et al., 2023): commit the longest common word prefix of the
    last two hypotheses. Hypotheses hold only words after the committed text (the session
    forces that text as the decode's prefix), so nothing is matched by time."""

    def __init__(self) -> None:
        self.last_committed_end = 0.0
        self._previous: list[Word] = []

    @property
    def tentative(self) -> list[Word]:
        return self._previous

    def update(self, hypothesis: list[Word]) -> list[Word]:
        agreed = 0
        for a, b in zip(hypothesis, self._previous):
            if normalize(a.word) != normalize(b.word):
                break
            agreed += 1
        while agreed and not self._boundary(hypothesis, agreed):
            agreed -= 1
        commit = hypothesis[:agreed]
        self._previous = hypothesis[agreed:]
        self._remember(commit)
        return commit

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
        self._previous = []
        self._remember(hypothesis)
        return hypothesis

    def reset(self) -> None:
        self._previous = []

    def _remember(self, commit: list[Word]) -> None:
        if commit:
            self.last_committed_end = commit[-1].end
