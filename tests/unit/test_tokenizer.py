"""Tokenizers: round trips, save/load, fingerprints, errors, and GPT-2's known ids."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmforge.data.sources import fetch
from lmforge.errors import UserError
from lmforge.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    EOS_TOKEN,
    Tokenizer,
    gpt2_tokenizer,
    load_gpt2_tokenizer,
    load_tokenizer,
    train_bpe,
    train_char,
)

TINY_SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
) * 20

TRICKY = [
    "",
    "Hello world",
    "  leading spaces and trailing  ",
    "\n\nnew\r\nlines\n",
    "tabs\tand\u00a0nbsp",
    "emoji 🙂👍🏽 and CJK 漢字 and accents éàü",
    "don't we'll I'M",
    "ends with eos" + EOS_TOKEN,
]


def random_unicode(rng: random.Random, n: int) -> str:
    pools = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x4E00, 0x4E40), range(0x1F600, 0x1F640)]
    chars = []
    for _ in range(n):
        pool = rng.choice(pools + [[0x0A, 0x20, 0x09, 0x0D]])
        chars.append(chr(rng.choice(list(pool))))
    return "".join(chars)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe([CORPUS], vocab_size=300, show_progress=False)


@pytest.fixture(scope="module")
def gpt2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    fetch("gpt2-tokenizer", cache_dir=cache, quiet=True)
    return cache


@pytest.fixture(scope="module")
def gpt2(gpt2_cache: Path) -> Tokenizer:
    return gpt2_tokenizer(cache_dir=gpt2_cache)


needs_tiny_shakespeare = pytest.mark.skipif(
    not TINY_SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare.txt is not present"
)


# ------------------------------------------------------------------------------------------- BPE
def test_bpe_round_trips_arbitrary_unicode(bpe: Tokenizer) -> None:
    rng = random.Random(0)
    for text in TRICKY + [random_unicode(rng, rng.randint(1, 60)) for _ in range(200)]:
        assert bpe.decode(bpe.encode(text)) == text
    assert bpe.encode_batch(TRICKY) == [bpe.encode(t) for t in TRICKY]


def test_bpe_layout(bpe: Tokenizer) -> None:
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == 300
    assert bpe.special_tokens == list(DEFAULT_SPECIAL_TOKENS)
    assert [bpe.token_to_id(t) for t in DEFAULT_SPECIAL_TOKENS] == [0, 1, 2]
    assert bpe.eos_id == 0
    assert bpe.id_to_token(0) == EOS_TOKEN
    assert len(bpe.encode("speak, speak")) < len("speak, speak")  # merges were learned
    assert bpe.decode(bpe.encode("a" + EOS_TOKEN), skip_special_tokens=True) == "a"


def test_bpe_trains_from_files(tmp_path: Path) -> None:
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text(CORPUS, encoding="utf-8")
    files[1].write_text("Second document 🙂\n" * 10, encoding="utf-8")
    tok = train_bpe(files, vocab_size=280, special_tokens=[EOS_TOKEN], show_progress=False)
    assert tok.vocab_size == 280
    assert tok.special_tokens == [EOS_TOKEN]
    assert tok.decode(tok.encode("Second document 🙂")) == "Second document 🙂"


def test_bpe_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least 259"):
        train_bpe([CORPUS], vocab_size=258, show_progress=False)
    with pytest.raises(UserError, match="no training text"):
        train_bpe([], vocab_size=300, show_progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        train_bpe([empty], vocab_size=300, show_progress=False)
    with pytest.raises(UserError, match="not found"):
        train_bpe([tmp_path / "missing.txt"], vocab_size=300, show_progress=False)


# ------------------------------------------------------------------------------------------ char
@needs_tiny_shakespeare
def test_char_matches_nanogpt_on_tiny_shakespeare() -> None:
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    tok = train_char(text)
    assert tok.kind == "char"
    assert tok.vocab_size == 65 + 1
    assert tok.eos_id == 65
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}  # nanoGPT's prepare.py
    ids = tok.encode(text)
    assert ids[:1000] == [stoi[c] for c in text[:1000]]
    assert len(ids) == len(text) == 1115394
    assert tok.decode(ids) == text
    assert train_char(text, special_tokens=()).vocab_size == 65


def test_char_round_trips_whitespace() -> None:
    tok = train_char("ab \n\t\r")
    for text in [" ", "  ", "\n", "\n\n", " a \n b\t\r\n", "ba" + EOS_TOKEN + " a"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("a" + EOS_TOKEN) == [tok.token_to_id("a"), tok.eos_id]
    assert tok.encode_batch(["ab", " "]) == [tok.encode("ab"), tok.encode(" ")]


def test_char_unknown_character_is_named() -> None:
    tok = train_char("abc")
    with pytest.raises(UserError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(UserError, match="'é'"):
        tok.encode("a" + EOS_TOKEN + "é")  # through the Rust path (special token present)
    with pytest.raises(UserError, match="'!'"):
        tok.encode_batch(["ab", "c!"])
    with pytest.raises(UserError, match="empty"):
        train_char("")


# ----------------------------------------------------------------------------- files, identities
def test_save_load_keeps_everything(tmp_path: Path, bpe: Tokenizer) -> None:
    char = train_char(CORPUS)
    for name, tok in {"bpe": bpe, "char": char}.items():
        path = tok.save(tmp_path / name)
        assert path == tmp_path / name / "tokenizer.json"
        for source in (path, path.parent):
            loaded = Tokenizer.from_file(source)
            assert loaded.kind == tok.kind
            assert loaded.fingerprint() == tok.fingerprint()
            assert loaded.vocab_size == tok.vocab_size
            assert loaded.special_tokens == tok.special_tokens
            assert loaded.encode(CORPUS[:200]) == tok.encode(CORPUS[:200])
        assert load_tokenizer(path.parent).fingerprint() == tok.fingerprint()
    assert not list(tmp_path.glob("**/*.tmp"))


def test_fingerprints_differ(bpe: Tokenizer) -> None:
    prints = {
        bpe.fingerprint(),
        train_bpe([CORPUS], vocab_size=290, show_progress=False).fingerprint(),
        train_char(CORPUS).fingerprint(),
        train_char(CORPUS, special_tokens=()).fingerprint(),
    }
    assert len(prints) == 4
    assert len(bpe.fingerprint()) == 16
    assert train_char(CORPUS).fingerprint() == train_char(CORPUS).fingerprint()


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="tokenizer not found"):
        Tokenizer.from_file(tmp_path / "nope.json")
    with pytest.raises(UserError, match="tokenizer not found"):
        Tokenizer.from_file(tmp_path)  # a directory without tokenizer.json
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(bad)
    bad.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(UserError, match="cannot read"):
        Tokenizer.from_file(bad)


# ------------------------------------------------------------------------------------------ GPT-2
def test_gpt2_known_ids(gpt2: Tokenizer) -> None:
    assert gpt2.kind == "gpt2"
    assert gpt2.vocab_size == 50257
    assert gpt2.eos_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("the") == [1169]
    assert gpt2.encode(" The") == [383]
    assert gpt2.encode("\n") == [198]
    assert gpt2.encode("!") == [0]
    assert gpt2.encode(EOS_TOKEN) == [50256]
    assert gpt2.decode([15496, 995]) == "Hello world"


def test_gpt2_round_trips(gpt2: Tokenizer) -> None:
    rng = random.Random(1)
    texts = TRICKY + [random_unicode(rng, rng.randint(1, 80)) for _ in range(200)]
    for text, ids in zip(texts, gpt2.encode_batch(texts), strict=True):
        assert gpt2.decode(ids) == text


@needs_tiny_shakespeare
def test_gpt2_matches_tiktoken(gpt2: Tokenizer, gpt2_cache: Path) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks_file = gpt2_cache / "sources" / "gpt2-tokenizer" / "gpt2.tiktoken"
    encoding = tiktoken.Encoding(
        "gpt2",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=load_tiktoken_bpe(str(ranks_file)),
        special_tokens={EOS_TOKEN: 50256},
    )
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")[:100_000]
    assert gpt2.encode(text) == encoding.encode_ordinary(text)
    rng = random.Random(2)
    for _ in range(200):
        sample = random_unicode(rng, rng.randint(1, 40))
        assert gpt2.encode(sample) == encoding.encode_ordinary(sample)


def test_gpt2_save_load_and_by_name(
    gpt2: Tokenizer, gpt2_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = Tokenizer.from_file(gpt2.save(tmp_path))
    assert loaded.kind == "gpt2"
    assert loaded.fingerprint() == gpt2.fingerprint()
    monkeypatch.setenv("LMFORGE_CACHE", str(gpt2_cache))
    assert load_tokenizer("gpt2").fingerprint() == gpt2.fingerprint()


def test_gpt2_bad_ranks_file(tmp_path: Path) -> None:
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_text("not base64!! x\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 1"):
        load_gpt2_tokenizer(bad)
    with pytest.raises(UserError, match="not found"):
        load_gpt2_tokenizer(tmp_path / "missing.tiktoken")
