import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.model import text as text_module
from app.model.text import EmptyTextError, normalize
from app.model.tokenizer import BYTE_PIECES, UNK_ID, Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_corpus_rows) -> Tokenizer:
    return Tokenizer.train([r["text"] for r in tiny_corpus_rows], vocab_size=300, max_tokens=8)


def test_normalisation_folds_case_unicode_and_whitespace():
    assert normalize("  Where is   MY\tcard?\n") == "where is my card?"
    assert normalize("ﬁnance ＡＢＣ") == "finance abc"  # NFKC ligature and full-width letters
    assert normalize("STRASSE") == normalize("straße")  # case folding, not just lower()


def normalized_char_by_char(text: str) -> str:
    """normalize's general path (every character looked at), the reference for its ASCII shortcut."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    visible = "".join(" " if c.isspace() else c for c in folded if c.isspace() or not text_module._is_invisible(c))
    return text_module._WHITESPACE.sub(" ", visible).strip()


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_ascii_text_normalises_as_the_character_by_character_rule_does(text):
    expected = normalized_char_by_char(text)
    if expected:
        assert normalize(text) == expected
    else:
        with pytest.raises(EmptyTextError):
            normalize(text)


def test_ascii_controls_are_dropped_and_ascii_whitespace_separates():
    assert normalize("Card\x00 \x07blocked\x1c\x1fnow\x7f") == "card blocked now"


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_or_whitespace_text_is_a_clear_error(tokenizer, text):
    with pytest.raises(EmptyTextError, match="empty or whitespace"):
        tokenizer.encode([text])


def test_round_trip_gives_back_the_normalised_text(tiny_corpus_rows):
    texts = [r["text"] for r in tiny_corpus_rows]
    roomy = Tokenizer.train(texts, vocab_size=300, max_tokens=256)
    for text, ids in zip(texts, roomy.encode(texts), strict=True):
        assert roomy.decode(ids) == normalize(text)


def test_training_and_query_time_normalise_the_same_way(tokenizer):
    assert tokenizer.encode(["Where is MY card?"]) == tokenizer.encode(["where   is my card?"])


def test_over_long_text_is_truncated_to_max_tokens(tokenizer):
    ids = tokenizer.encode(["card " * 100])[0]
    assert len(ids) == tokenizer.max_tokens == 8


def test_training_is_deterministic_and_saves_to_bytes(tokenizer, tiny_corpus_rows, tmp_path):
    again = Tokenizer.train([r["text"] for r in tiny_corpus_rows], vocab_size=300, max_tokens=8)
    assert again.model_proto == tokenizer.model_proto
    tokenizer.save(tmp_path / "tok.model")
    loaded = Tokenizer.load(tmp_path / "tok.model", max_tokens=8)
    assert loaded.encode(["my card is lost"]) == tokenizer.encode(["my card is lost"])


def test_bpe_is_selectable(tiny_corpus_rows):
    bpe = Tokenizer.train([r["text"] for r in tiny_corpus_rows], vocab_size=200, model_type="bpe")
    assert 0 < bpe.vocab_size <= 200 + BYTE_PIECES  # the byte-fallback pieces come on top


def test_scripts_the_corpus_never_showed_are_byte_pieces_not_unknown(tiny_corpus_rows):
    tokenizer = Tokenizer.train([r["text"] for r in tiny_corpus_rows], vocab_size=300)
    ids = tokenizer.encode(["我的卡丢了", "Моя карта", "🙂"])
    assert all(ids) and UNK_ID not in {i for row in ids for i in row}
    assert all(tokenizer.is_byte(i) for row in ids for i in row if tokenizer.piece(i) != "\u2581")


def test_coverage_is_the_share_of_characters_the_tokenizer_learned(tiny_corpus_rows):
    tokenizer = Tokenizer.train([r["text"] for r in tiny_corpus_rows], vocab_size=300)
    assert tokenizer.coverage(["how do I top up my card"]) == [1.0]
    assert tokenizer.coverage(["我的卡丢了", "🙂🙂"]) == [0.0, 0.0]
    mixed = tokenizer.coverage(["card 我的"])[0]
    assert mixed == pytest.approx(4 / 6)


def test_coverage_counts_every_piece_of_a_text_longer_than_max_tokens(tokenizer):
    # max_tokens 8: the encoder reads 8 pieces, but coverage is about the whole question.
    long_known = "how do i top up my card and when will my new card arrive please"
    assert len(tokenizer.encode([long_known])[0]) == 8
    assert tokenizer.coverage([long_known]) == [1.0]
    assert tokenizer.coverage([long_known + " 我的卡丢了我的卡丢了我的卡丢了"])[0] < 1.0


def test_the_encoder_reports_the_coverage_of_the_tokenization_it_encoded(tiny_encoder):
    texts = ["How do I top up my card?", "我的卡丢了", "card 我的", "  spaced \t out\nquestion  "]
    encoded = tiny_encoder.encode(texts, k=2, coverage=True)
    assert encoded.coverage == tiny_encoder.coverage(texts)
    assert tiny_encoder.encode(texts, k=2).coverage is None
