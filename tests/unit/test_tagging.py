"""Token classification pieces: word -> first-sub-word label alignment for each tokenizer kind,
CoNLL and JSONL reading with BIO repair, the generated `shakespeare-names` data, seqeval metrics
on a case worked by hand, the loss and the tagger wrapper (unused parameters, save/load)."""

import json
from fractions import Fraction

import pytest
import torch
from helpers import tiny_gpt

from lmforge.data.classification import Framing
from lmforge.data.shakespeare_names import generate_shakespeare_names, split_words
from lmforge.data.tagging import (
    IGNORE_INDEX,
    TagBatches,
    TaggedSentences,
    WordEncoder,
    read_tagged_file,
    repair_bio,
    split_sentences,
    tag_set,
)
from lmforge.errors import UserError
from lmforge.eval.tagging import tagging_metrics
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.token_heads import TokenClassifier, load_token_classifier, save_tagger
from lmforge.tasks.tag import bracketed, tagging_loss
from lmforge.tokenizer import train_bpe, train_unigram, train_wordpiece

CORPUS = [
    "Hamlet met Ophelia in Denmark , and the king spoke of Elsinore .",
    "the queen of Denmark saw Horatio by the river at night .",
] * 30
WORDS = ["Ophelianna", "met", "vying", "Hamlet", "in", "Denmark", ",", "Horatioking", "spoke", "."]
TAGS = ["B-PER", "O", "B-PER", "B-PER", "O", "B-LOC", "O", "O", "O", "O"]


def make_tokenizer(kind: str):
    if kind == "bpe":
        return train_bpe(CORPUS, 280, show_progress=False)
    if kind == "wordpiece":
        return train_wordpiece(CORPUS, 100, show_progress=False)
    return train_unigram(CORPUS, 60, num_sentinels=0, show_progress=False)


FRAMES = {"bpe": ((), ("<|endoftext|>",)), "wordpiece": (("[CLS]",), ("[SEP]",))}


def framing_for(kind: str, tokenizer) -> Framing:
    prefix, suffix = FRAMES.get(kind, ((), ("</s>",)))
    pad = tokenizer.token_to_id("[PAD]" if kind == "wordpiece" else "<pad>") or 0
    ids = (
        tuple(tokenizer.token_to_id(t) for t in prefix),
        tuple(tokenizer.token_to_id(t) for t in suffix),
    )
    return Framing(ids[0], ids[1], pad)


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_first_subword_carries_the_tag_for_each_tokenizer_kind(kind):
    tokenizer = make_tokenizer(kind)
    framing = framing_for(kind, tokenizer)
    encoded = WordEncoder(tokenizer, framing, 64).encode(WORDS)
    body = encoded.ids[len(framing.prefix) : len(encoded.ids) - len(framing.suffix)]
    # word by word, the ids are those of the running text: byte-level BPE got its spaces back
    assert body == tokenizer.encode(" ".join(WORDS))
    assert encoded.ids[: len(framing.prefix)] == list(framing.prefix)
    assert encoded.ids[len(encoded.ids) - len(framing.suffix) :] == list(framing.suffix)
    assert len(encoded.positions) == len(WORDS)
    ends = [*encoded.positions[1:], len(encoded.ids) - len(framing.suffix)]
    lone_marker = 0
    for word, start, end in zip(WORDS, encoded.positions, ends):
        assert tokenizer.decode(encoded.ids[start:end]).strip().replace(" ", "") == (
            word.lower() if kind == "wordpiece" else word
        )
        assert tokenizer.decode([encoded.ids[start]]).strip(), "the tag sits on visible text"
        if start > len(framing.prefix) and not tokenizer.decode([encoded.ids[start - 1]]).strip():
            lone_marker += 1  # a lone space / "▁" piece in front was skipped
    if kind != "wordpiece":
        assert lone_marker > 0, "the words should include one that starts with a lone marker"
    assert sum(e - s > 1 for s, e in zip(encoded.positions, ends)) >= 2  # multi-piece words

    tag_names = ["O", "B-LOC", "B-PER"]
    batches = TagBatches(
        {"train": [encoded]},
        {"train": [[tag_names.index(t) for t in TAGS]]},
        tag_names,
        framing.pad_id,
        64,
    )
    input_ids, mask, labels = batches.collate("train", torch.tensor([0]))
    assert input_ids[0].tolist() == encoded.ids and bool(mask.all())
    expected = torch.full_like(labels[0], IGNORE_INDEX)
    expected[encoded.positions] = torch.tensor([tag_names.index(t) for t in TAGS])
    assert torch.equal(labels[0], expected)  # other sub-words and special tokens: -100


def test_truncation_drops_the_words_whose_first_subword_does_not_fit():
    tokenizer = make_tokenizer("wordpiece")
    framing = framing_for("wordpiece", tokenizer)
    full = WordEncoder(tokenizer, framing, 64).encode(WORDS)
    max_length = full.positions[4] + 1 + 1  # room for word 4's first sub-word and [SEP]
    cut = WordEncoder(tokenizer, framing, max_length).encode(WORDS)
    assert len(cut.ids) == max_length and cut.ids[-1] == framing.suffix[0]
    assert cut.positions == full.positions[:5]
    batches = TagBatches({"test": [cut]}, {"test": [[0] * len(WORDS)]}, ["O", "B-X"], 0, 8)
    assert batches.kept["test"] == [5] and batches.truncated_words("test") == len(WORDS) - 5


def test_split_words_keeps_names_apart_from_punctuation_and_possessives():
    assert split_words("Hamlet's sword--reliev'd, 'tis heir-apparent!") == [
        "Hamlet",
        "'s",
        "sword",
        "--",
        "reliev'd",
        ",",
        "'tis",
        "heir-apparent",
        "!",
    ]


# ------------------------------------------------------------------------------------ reading
def test_conll_reading_takes_first_and_last_columns_and_repairs_iob1(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\ncall NN I-NP O\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n",
        encoding="utf-8",
    )
    data = read_tagged_file(path)
    assert data.words == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert data.tags == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    assert data.repaired == 2  # the IOB1 I-ORG and I-MISC that begin entities
    assert tag_set(data.tags) == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]


def test_jsonl_reading_with_field_names_and_integer_tags(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"words": ["Romeo", "of", "Verona"], "ner": [2, 0, 1]}, {"words": ["hi"], "ner": [0]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    declared = ["O", "B-LOC", "B-PER"]
    data = read_tagged_file(path, "words", "ner", declared)
    assert data.tags == [["B-PER", "O", "B-LOC"], ["O"]]
    with pytest.raises(UserError, match="integer tags need data.tags"):
        read_tagged_file(path, "words", "ner")
    with pytest.raises(UserError, match="no field 'tokens'"):
        read_tagged_file(path)


def test_repair_and_tag_set_rules():
    assert repair_bio(["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"], "x") == (
        ["O", "B-PER", "I-PER", "B-LOC", "B-LOC", "I-LOC"],
        2,
    )
    with pytest.raises(UserError, match="row 3: tag 'PER' is not a BIO tag"):
        repair_bio(["PER"], "row 3")
    assert tag_set([["O", "I-PER", "B-PER"]], ["O", "B-PER", "I-PER"]) == ["O", "B-PER", "I-PER"]
    with pytest.raises(UserError, match="must include 'O'"):
        tag_set([["B-PER"]], ["B-PER"])
    with pytest.raises(UserError, match="no entity tags"):
        tag_set([["O", "O"]])


def test_split_is_seeded_and_maps_tags_to_indices():
    data = TaggedSentences(
        [[f"w{i}"] for i in range(20)], [["B-X"] if i % 2 else ["O"] for i in range(20)]
    )
    a = split_sentences(data, ["O", "B-X"], seed=3)
    b = split_sentences(data, ["O", "B-X"], seed=3)
    assert a.words == b.words and {s: a.size(s) for s in a.words} == {
        "train": 16,
        "val": 2,
        "test": 2,
    }
    for split in a.words:
        for words, tags in zip(a.words[split], a.tags[split]):
            assert tags == [int(words[0][1:]) % 2]
    assert split_sentences(data, ["O", "B-X"], seed=4).words != a.words


# ------------------------------------------------------------------------- generated data
PLAY = """THE TRAGEDY OF TESTING

PERSONS REPRESENTED.

Hamlet, Prince of Denmark.
Sir John Falstaff, a knight.
Earl of Kent.
Page, a servant.
Ophelia, Daughter to Polonius.

SCENE. Denmark.

ACT I.

Scene I. A platform.

[Enter Hamlet and Ophelia.]

Ham.
Ophelia, the page is here; a page, a page! [Aside] The page.
I go to Verona with John Falstaff tonight.

Oph.
My lord, the weather is fair and the sky is clear.
Go to Kent, good Page.

KENT.
Denmark's a prison, and so is all the world here.
"""
POEM = "A LOVER'S COMPLAINT\n\nFrom off a hill whose concave womb reworded Hamlet.\n"


def test_generated_names_are_deterministic_and_well_formed(tmp_path):
    (tmp_path / "test_play_gut.txt").write_text(PLAY, encoding="utf-8")
    (tmp_path / "poem_gut.txt").write_text(POEM, encoding="utf-8")
    files = sorted(tmp_path.glob("*_gut.txt"))
    words, tags, facts = generate_shakespeare_names(files, entity_sentences=3)
    assert (words, tags, facts) == generate_shakespeare_names(files, entity_sentences=3)
    assert facts["plays"] == 1 and facts["person_names"] == 4  # Hamlet John Falstaff Ophelia
    assert facts["sentences_with_entities"] == 3 and facts["sentences_without_entities"] == 1
    tagged = {" ".join(w): t for w, t in zip(words, tags)}
    assert tagged["I go to Verona with John Falstaff tonight ."] == [
        *("O", "O", "O", "B-LOC", "O", "B-PER", "I-PER", "O", "O")
    ]
    assert tagged["Denmark 's a prison , and so is all the world here ."][:2] == ["B-LOC", "O"]
    for w, t in zip(words, tags):
        assert len(w) == len(t) and repair_bio(t, "generated")[1] == 0  # valid IOB2
        assert "Aside" not in w and "Ham" not in w and "KENT" not in w  # no directions, headings
        assert "Page" not in [x for x, y in zip(w, t) if y != "O"]  # "page" is a common word
        assert "Kent" not in [x for x, y in zip(w, t) if y != "O"]  # a title, not a name
    assert sum(any(x != "O" for x in t) for t in tags) == 3


@pytest.mark.slow
def test_shakespeare_names_from_the_fetched_plays():
    from lmforge.data.tagging import read_shakespeare_names

    data = read_shakespeare_names()
    assert len(data.words) == 4000 and data.source["name"] == "shakespeare-names"
    assert data.source["package"] == "shakespeare" and data.source["plays"] == 37
    names = {w for ws, ts in zip(data.words, data.tags) for w, t in zip(ws, ts) if t == "B-PER"}
    assert {"Hamlet", "Ophelia", "Romeo", "Caesar"} <= names and "English" not in names
    assert read_shakespeare_names().tags == data.tags


# ------------------------------------------------------------------------------------ metrics
def test_seqeval_metrics_on_a_case_worked_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O", "B-PER"], ["B-PER", "I-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O", "B-LOC"], ["O", "I-PER"]]
    # gold entities: PER[0-1] LOC[3] | LOC[0] PER[2] | PER[0-1]                 -> 5
    # predicted:     PER[0-1]        | LOC[0] LOC[2] | PER[1] (I- after O opens) -> 4, 2 correct
    m = tagging_metrics(gold, pred, truncated_words=7)
    p, r = Fraction(2, 4), Fraction(2, 5)
    assert m.precision == pytest.approx(float(p)) and m.recall == pytest.approx(float(r))
    assert m.f1 == pytest.approx(float(2 * p * r / (p + r)))  # 4/9
    assert m.accuracy == pytest.approx(6 / 9)  # words right: 3 + 2 + 1 of 9
    assert m.per_type["PER"] == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 3, "f1": 0.4, "support": 3}
    )
    assert m.per_type["LOC"] == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 2, "f1": 0.5, "support": 2}
    )
    assert (m.sentences, m.words, m.truncated_words) == (3, 9, 7)
    assert m.as_dict("test_")["test_entity_f1"] == pytest.approx(4 / 9)
    assert bracketed(["Romeo", "Montague", "of", "Verona"], ["B-PER", "I-PER", "O", "B-LOC"]) == (
        "[Romeo Montague]PER of [Verona]LOC"
    )


# -------------------------------------------------------------------------- model and loss
def tiny_bert(vocab_size: int = 50) -> Bert:
    torch.manual_seed(0)
    shape = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_seq_len=16)
    return Bert(BertConfig(vocab_size=vocab_size, dropout=0.0, **shape))


@torch.no_grad()
def test_loss_counts_only_labelled_positions():
    model = TokenClassifier(tiny_bert(), 3)
    ids = torch.randint(5, 50, (2, 6))
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 1], labels[1, 4] = 2, 0
    logits = model(ids).float()  # (2, 6, 3)
    expected = -(logits[0, 1].log_softmax(-1)[2] + logits[1, 4].log_softmax(-1)[0]) / 2
    loss = tagging_loss(model, (ids, torch.ones_like(ids), labels))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    none = torch.full_like(labels, IGNORE_INDEX)
    assert float(tagging_loss(model, (ids, torch.ones_like(ids), none))) == 0.0


def test_tagger_unused_parameters_and_save_load(tmp_path):
    bert = TokenClassifier(tiny_bert(), 3, tags=["O", "B-X", "I-X"])
    unused = {id(p) for p in bert.unused_parameters()}
    for name, p in bert.backbone.named_parameters():  # the tied MLM decoder shows as embed_tokens
        assert (id(p) in unused) == name.startswith(("pooler.", "mlm_head.")), name
    gpt = TokenClassifier(tiny_gpt("gpt2-tiny", 50), 3)
    assert gpt.backbone.embed_tokens.weight not in gpt.unused_parameters()  # tied: in use

    save_tagger(bert, tmp_path, info={"max_length": 16})
    loaded, info = load_token_classifier(tmp_path)
    assert info["tags"] == ["O", "B-X", "I-X"] and loaded.tags == bert.tags
    ids = torch.randint(5, 50, (2, 7))
    bert.eval()
    assert torch.allclose(loaded(ids), bert(ids), atol=1e-6)
    with pytest.raises(UserError, match="not a fine-tuned tagger"):
        load_token_classifier(tmp_path / "nothing")
