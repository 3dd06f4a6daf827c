"""WordPiece (BERT) tokenizer training: specials, ## pieces, [MASK] in text, save/load, prepare."""

import numpy as np
import pytest

from lmforge.data.shards import TokenData, prepare
from lmforge.errors import UserError
from lmforge.tokenizer import WORDPIECE_SPECIAL_TOKENS, Tokenizer, train_wordpiece

TEXT = (
    "The King and the Queen spoke to their people about war and peace.\n"
    "While the river ran past the castle walls, the night was long and full of stars.\n"
) * 30


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return train_wordpiece([TEXT], vocab_size=150, min_frequency=1, show_progress=False)


def test_specials_come_first_and_kind_is_inferred(wordpiece):
    assert wordpiece.kind == "wordpiece"
    assert wordpiece.special_tokens == list(WORDPIECE_SPECIAL_TOKENS)
    assert [wordpiece.token_to_id(t) for t in WORDPIECE_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert wordpiece.document_separator_id == wordpiece.token_to_id("[SEP]")
    assert wordpiece.vocab_size <= 150


def test_lowercased_pieces_mask_and_decode(wordpiece):
    ids = wordpiece.encode("The KING spoke of [MASK] rivers")
    tokens = [wordpiece.id_to_token(i) for i in ids]
    assert tokens[:3] == ["the", "king", "spoke"] and "[MASK]" in tokens
    assert any(t.startswith("##") for t in tokens)  # an unseen word is cut into pieces
    assert wordpiece.decode(ids) == "the king spoke of [MASK] rivers"
    assert wordpiece.token_to_id("[CLS]") not in ids  # encode adds no special tokens
    framed = wordpiece.backend.encode("the king", add_special_tokens=True).tokens
    assert framed == ["[CLS]", "the", "king", "[SEP]"]  # the post-processor, for transformers


def test_save_load_keeps_the_tokenizer(tmp_path, wordpiece):
    wordpiece.save(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    assert again.kind == "wordpiece" and again.fingerprint() == wordpiece.fingerprint()


def test_prepare_separates_documents_with_sep(tmp_path, wordpiece):
    files = []
    for i in range(2):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(TEXT, encoding="utf-8")
    meta = prepare(files, wordpiece, tmp_path / "data", show_progress=False)
    assert meta["tokenizer_kind"] == "wordpiece" and meta["eos_id"] == 3
    data = TokenData.open(tmp_path / "data")
    stream = np.concatenate([data.split("train"), data.split("val")])
    assert (stream == 3).sum() == 2  # one [SEP] after each document


def test_bad_vocab_size():
    with pytest.raises(UserError, match="too small"):
        train_wordpiece([TEXT], vocab_size=5, show_progress=False)
