"""Text helpers shared by the streaming guards, tests and benchmarks."""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s']", re.UNICODE)


def normalize(text: str) -> str:
    """Lower-case and drop punctuation, so word error rates compare words, not styling."""
    text = unicodedata.normalize("NFKC", text).lower().replace("-", " ")
    return " ".join(_PUNCT.sub(" ", text).split())
