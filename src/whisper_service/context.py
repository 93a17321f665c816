"""Per-session rolling context used as Whisper's ``initial_prompt``.

Whisper conditions each decode on at most 223 prompt tokens (half of the 448-token text
context, minus one). A streaming session keeps a static prompt (domain terms, names) that
is never trimmed, followed by recently committed text that is trimmed oldest-first at word
boundaries so the whole prompt, as faster-whisper sends it, fits ``max_context_tokens``.
"""

from __future__ import annotations

from collections import deque

import tokenizers

WHISPER_MAX_PROMPT_TOKENS = 223
# Batched decodes need the same prompt length (CTranslate2 wants <|startoftranscript|> at one
# position in a batch), so `tokens()` rounds the committed text down to a multiple of this.
# At the cap (215-223 tokens at word boundaries) every session then sends 208 tokens.
PROMPT_STEP = 16


class RollingContext:
    """Static prompt plus a bounded, oldest-first-trimmed tail of committed words."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        static_prompt: str = "",
        max_context_tokens: int = WHISPER_MAX_PROMPT_TOKENS,
    ) -> None:
        if not 1 <= max_context_tokens <= WHISPER_MAX_PROMPT_TOKENS:
            raise ValueError(
                f"max_context_tokens must be between 1 and {WHISPER_MAX_PROMPT_TOKENS}, "
                f"got {max_context_tokens}"
            )
        self._tokenizer = tokenizer
        self._static_prompt = static_prompt.strip()
        self._max_context_tokens = max_context_tokens
        self._static_tokens = self._count(self._static_prompt) if self._static_prompt else 0
        if self._static_tokens > max_context_tokens:
            raise ValueError(
                f"static_prompt: {self._static_tokens} tokens, more than "
                f"max_context_tokens={max_context_tokens} (hotwords, if any, count with it)"
            )
        # (word, tokens of " " + word); the running sum avoids re-encoding on every trim.
        self._words: deque[tuple[str, int]] = deque()
        self._words_tokens = 0
        self._appended = 0  # words ever appended: the position of the next one

    @property
    def static_prompt(self) -> str:
        return self._static_prompt

    @property
    def max_context_tokens(self) -> int:
        return self._max_context_tokens

    @property
    def committed_words(self) -> tuple[str, ...]:
        return tuple(word for word, _ in self._words)

    @property
    def position(self) -> int:
        """Words appended so far: marks a place in the committed text for `tokens(until=)`
        and `revise`, valid however much was trimmed or reset since."""
        return self._appended

    def _first(self) -> int:
        """The position of the oldest word still held."""
        return self._appended - len(self._words)

    def _count(self, text: str) -> int:
        """Tokens of ``text`` as faster-whisper encodes an initial_prompt string."""
        return len(self._tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids)

    def _drop_oldest(self) -> None:
        self._words_tokens -= self._words.popleft()[1]

    def append(self, text: str) -> None:
        """Add committed text, then drop the oldest committed words until the prompt fits."""
        budget = self._max_context_tokens - self._static_tokens
        for word in text.split():
            self._words.append((word, self._count(word)))
            self._words_tokens += self._words[-1][1]
            self._appended += 1
            # Every word costs >= 1 token, so more than `budget` words can never fit:
            # this keeps memory bounded however much text a session appends.
            if len(self._words) > budget:
                self._drop_oldest()
        # Whisper's byte-level BPE pre-tokenizer (GPT-2 regex) never merges across a single
        # space before a non-space, so per-word counts add up to the exact prompt count and
        # trimming needs no re-encoding.
        while self._words_tokens + self._static_tokens > self._max_context_tokens:
            self._drop_oldest()

    def revise(self, start: int, stop: int, text: str) -> int:
        """Replace the words appended at positions [start, stop) with `text` (what a second
        look at the same audio wrote); the words after them stay. Returns where the revised
        words now end (positions after it move by the change in length)."""
        first = self._first()
        words = list(self._words)
        lo, hi = max(0, start - first), max(0, stop - first)
        later = [word for word, _ in words[hi:]]
        self._words = deque(words[:lo])
        self._words_tokens = sum(n for _, n in self._words)
        self._appended = first + lo
        self.append(text)
        stop_now = self._appended
        self.append(" ".join(later))
        return stop_now

    def prompt(self, until: int | None = None) -> str | None:
        """The next decode's initial_prompt, or None when there is nothing to condition on;
        with `until`, only the committed words before that position."""
        words = self.committed_words
        if until is not None:
            words = words[:max(0, until - self._first())]
        text = " ".join([self._static_prompt, *words]).strip()
        return text or None

    def tokens(self, until: int | None = None,
               recent: int | None = None) -> tuple[int, ...] | None:
        """The prompt as tokens, static prompt whole, with the oldest committed tokens cut so
        that the length is a multiple of PROMPT_STEP (a few tokens of the oldest context
        matter little; a shared length lets sessions' decodes share a batch); with `recent`,
        at most that many committed tokens."""
        text = self.prompt(until)
        if text is None:
            return None
        ids = self._tokenizer.encode(" " + text, add_special_tokens=False).ids
        if recent is not None and len(ids) - self._static_tokens > recent:
            ids = ids[:self._static_tokens] + ids[len(ids) - recent:]
        keep = len(ids) // PROMPT_STEP * PROMPT_STEP
        if keep <= self._static_tokens:  # no committed text would be left: send it all
            return tuple(ids)
        return tuple(ids[:self._static_tokens]) + tuple(ids[len(ids) - keep
                                                            + self._static_tokens:])

    def token_count(self) -> int:
        """Tokens of prompt() as faster-whisper will send it (0 if there is no prompt)."""
        text = self.prompt()
        return self._count(text) if text is not None else 0

    def reset(self) -> None:
        """Forget committed text (e.g. a new utterance) but keep the static prompt."""
        self._words.clear()
        self._words_tokens = 0


def with_hotwords(hotwords: str, static_prompt: str) -> str:
    """A stream's never-trimmed static prompt: its hotwords, then its static prompt.

    faster-whisper puts `hotwords` before the previous text, but only in prompts without a
    forced prefix, and a stream forces one in most decodes. As static prompt they are in every
    decode's prompt, in the same place, and count against `max_context_tokens` with it."""
    return " ".join(part for part in (hotwords.strip(), static_prompt.strip()) if part)


def init_context(
    tokenizer: tokenizers.Tokenizer,
    static_prompt: str = "",
    max_context_tokens: int = WHISPER_MAX_PROMPT_TOKENS,
) -> RollingContext:
    """Create a session's rolling context; the ModelManager wraps this with its tokenizer."""
    return RollingContext(tokenizer, static_prompt, max_context_tokens)
