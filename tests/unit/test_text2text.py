"""Text-to-text fine-tuning pieces: the generated Shakespeare data (substitutions, sentences,
speeches, determinism, provenance), JSONL reading, framing and truncation per family, the losses
(a decoder counts the target tokens only; T5 is teacher-forced on the shifted target) and the
metrics (ROUGE, BLEU, chrF against hand-checked values and the libraries themselves)."""

import json

import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from helpers import tiny_gpt
from rouge_score import rouge_scorer

from lmforge.data.shakespeare_pairs import (
    ARCHAIC_WORDS,
    has_archaic_word,
    lead_pairs,
    modern_english_pairs,
    modernize,
    sentences,
    speeches,
)
from lmforge.data.text2text import (
    BUILTIN,
    IGNORE_INDEX,
    GenerationSettings,
    Text2TextBatches,
    load_pair_splits,
    make_framing,
    read_pair_file,
    split_pairs,
)
from lmforge.errors import UserError
from lmforge.eval.text2text import text2text_metrics
from lmforge.models.t5 import T5, T5Config
from lmforge.tasks.text2text import Text2TextTask
from lmforge.tokenizer import train_bpe, train_unigram


# ------------------------------------------------------------------------------ generated data
@pytest.mark.parametrize(
    "line, modern",
    [
        ("Thou art a villain, 'tis true!", "You are a villain, it is true!"),
        ("'TIS DONE; HATH he?", "IT IS DONE; HAS he?"),
        ("Nay, prithee, stay.", "No, please, stay."),
        ("Methinks the lady doth protest too much.", "I think the lady does protest too much."),
        ("I ne'er saw aught o'er the hill, ay,--", "I never saw aught over the hill, yes,--"),
        ("Wherefore art thou Romeo?", "Why are you Romeo?"),
        (
            "Give me thy hand; 'twas thine ere I knew thee.",
            "Give me your hand; it was your before I knew you.",
        ),
    ],
)
def test_modernize_replaces_whole_words_keeping_case_and_punctuation(line, modern):
    assert has_archaic_word(line)
    assert modernize(line) == modern


def test_modernize_leaves_other_words_alone():
    untouched = "Arthur's heart, the artist's thou'rt, a mayday yesterday; Thee-ward? THOUGHT"
    assert modernize(untouched) == untouched.replace("Thee-ward", "You-ward")
    assert not has_archaic_word("A line in plain modern English.")
    assert len({w for w, _ in ARCHAIC_WORDS}) == len(ARCHAIC_WORDS) >= 30


def test_sentences_cut_at_end_marks_before_capitals():
    text = "O, farewell! Who hath reliev'd you? Bernardo has my place.--Give you good-night."
    assert sentences(text) == [
        "O, farewell!",
        "Who hath reliev'd you?",
        "Bernardo has my place.",
        "Give you good-night.",
    ]
    assert sentences("How! poor? look upon his face. Ay.") == [
        "How! poor? look upon his face.",
        "Ay.",
    ]


PLAY = """THE TRAGEDY OF NOBODY

by William Shakespeare



ACT I.

Scene I. A room.

[Enter Ham and Hor.]

Ham.
Thou art welcome, friend. [Aside.] I hath no wine.
'Tis late. Go hence.

Hor.
Ay, my lord.

FIRST CLOWN.
A plain speech. It has three sentences. None is old.

Ham.
[Exit.
"""


@pytest.fixture
def plays(tmp_path):
    (tmp_path / "nobody_gut.txt").write_text(PLAY, encoding="utf-8")
    (tmp_path / "other_gut.txt").write_text(PLAY.replace("Hor.", "Ber."), encoding="utf-8")
    return tmp_path


def test_speeches_follow_speaker_headings_without_stage_directions(plays):
    found = speeches(plays)
    assert found[:3] == [
        ["Thou art welcome, friend. I hath no wine.", "'Tis late. Go hence."],
        ["Ay, my lord."],
        ["A plain speech. It has three sentences. None is old."],
    ]
    assert len(found) == 6  # 3 per play; the unclosed direction's speech is left out


def test_generated_pairs_are_right_and_deterministic(plays):
    modern = modern_english_pairs(plays)
    assert modern == modern_english_pairs(plays)  # the same draw every time
    assert sorted(modern) == [
        ("'Tis late. Go hence.", "It is late. Go hence."),
        ("Ay, my lord.", "Yes, my lord."),
        ("Thou art welcome, friend. I hath no wine.", "You are welcome, friend. I has no wine."),
    ]  # distinct lines only: the second play repeats them
    lead = lead_pairs(plays)
    assert lead == [
        (
            "Thou art welcome, friend. I hath no wine. 'Tis late. Go hence.",
            "Thou art welcome, friend.",
        ),
        ("A plain speech. It has three sentences. None is old.", "A plain speech."),
    ]


def test_builtin_sets_from_the_plays_are_deterministic_with_provenance():
    for name, size in (("shakespeare-modern", 4000), ("shakespeare-lead", 2000)):
        splits = load_pair_splits(name, seed=3)
        again = load_pair_splits(name, seed=3)
        assert splits.sources == again.sources and splits.targets == again.targets
        src = splits.source
        assert src["name"] == name and src["derived_from"] == "shakespeare"
        assert src["package"] == "shakespeare" and src["version"] and src["licence"]
        assert src["split_seed"] == 3 and src["examples"] >= size
        assert sum(src["sizes"].values()) == src["examples"]
        assert splits.prefix == BUILTIN[name].prefix
        pairs = list(zip(splits.sources["test"], splits.targets["test"]))
        if name == "shakespeare-modern":
            assert all(has_archaic_word(s) and t == modernize(s) for s, t in pairs)
        else:
            assert all(s.startswith(t) and len(sentences(s)) >= 3 for s, t in pairs)


# ---------------------------------------------------------------------------- files and splits
def test_pair_files_are_read_with_configurable_fields(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"en": f"line {i}", "de": f"Zeile {i}"} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pairs, record = read_pair_file(path, "en", "de")
    assert pairs[3] == ("line 3", "Zeile 3") and record["name"] == "pairs.jsonl"
    with pytest.raises(UserError, match="row 1: 'source' is missing"):
        read_pair_file(path)
    splits = split_pairs(pairs, seed=1, train_subset=5)
    assert splits.source["sizes"] == {"train": 5, "val": 1, "test": 1}
    held_out = splits.sources["val"] + splits.sources["test"]
    assert not set(held_out) & set(splits.sources["train"])
    assert split_pairs(pairs, seed=1).sources == split_pairs(pairs, seed=1).sources


# ----------------------------------------------------------------------------- framing, losses
TEXTS = [f"swap: thou art {w} {w}" for w in "king queen lord lady good fair night day".split()] * 4


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXTS + ["you are"] * 4, 300, show_progress=False)


@pytest.fixture(scope="module")
def unigram():
    return train_unigram(TEXTS + ["you are"] * 4, 100, num_sentinels=0, show_progress=False)


def batches(family, tokenizer, config, max_length=40, max_target_tokens=8, pairs=None):
    pairs = pairs or [("thou art king", "you are king"), ("thou art good", "you are good")] * 2
    splits = split_pairs(pairs * 2, seed=0, val_fraction=0.25, test_fraction=0.25, prefix="swap:")
    framing = make_framing(family, tokenizer, config, "swap:", "\n", max_length, max_target_tokens)
    return Text2TextBatches.build(splits, tokenizer, framing, GenerationSettings(8))


def test_gpt_loss_counts_exactly_the_target_and_end_tokens(bpe):
    model = tiny_gpt("gpt2-tiny", bpe.vocab_size)
    data = batches("gpt", bpe, model.config)
    x, y = data.collate("train", torch.arange(data.size("train")))
    eos = bpe.eos_id
    for row in range(x.size(0)):
        prompt, target = data.inputs["train"][row], data.targets["train"][row]
        assert prompt == bpe.encode(f"swap: {data.texts.sources['train'][row]}") + bpe.encode("\n")
        assert target == bpe.encode(data.texts.targets["train"][row]) + [eos]
        n = len(prompt) + len(target) - 1  # x = sequence[:-1]
        assert x[row, :n].tolist() == (prompt + target)[:-1]
        labels = y[row].tolist()
        assert labels[: len(prompt) - 1] == [IGNORE_INDEX] * (len(prompt) - 1)  # the prompt
        assert labels[len(prompt) - 1 : n] == target  # from the separator on: target, end
        assert labels[n:] == [IGNORE_INDEX] * (len(labels) - n)  # padding
    loss = Text2TextTask().loss(model, (x, y))
    logits = model(x)  # (B, L, V)
    counted = y != IGNORE_INDEX
    expected = F.cross_entropy(logits[counted], y[counted])
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_t5_loss_is_teacher_forced_on_the_shifted_target(unigram):
    torch.manual_seed(0)
    model = T5(T5Config(vocab_size=unigram.vocab_size, hidden_size=32, num_layers=2, num_heads=2))
    data = batches("t5", unigram, model.config)
    input_ids, mask, labels = data.collate("train", torch.arange(data.size("train")))
    eos, start, pad = unigram.eos_id, model.config.decoder_start_token_id, model.config.pad_token_id
    assert eos == model.config.eos_token_id
    seen = {}
    forward = model.forward

    def spy(*args, **kwargs):
        seen["decoder_input_ids"] = args[2]
        return forward(*args, **kwargs)

    model.forward = spy
    loss = Text2TextTask().loss(model, (input_ids, mask, labels))
    decoder_input_ids = seen["decoder_input_ids"]
    for row in range(labels.size(0)):
        source = data.inputs["train"][row]
        assert input_ids[row, : len(source)].tolist() == source and source[-1] == eos
        assert int(mask[row].sum()) == len(source)
        target = data.targets["train"][row]
        assert target[-1] == eos
        n = len(target)
        assert labels[row, :n].tolist() == target
        assert (labels[row, n:] == IGNORE_INDEX).all()
        shifted = decoder_input_ids[row].tolist()
        assert shifted[:n] == [start] + target[:-1]  # start token, then the target but its last
        assert shifted[n:] == [pad] * (len(shifted) - n)
    logits = forward(input_ids, mask, decoder_input_ids)  # (B, T, V)
    counted = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[counted], labels[counted])
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_truncation_keeps_the_target_and_fits_the_length(bpe, unigram):
    long = ("thou art king " * 30).strip()
    pairs = [(long, "you are king " * 10)] * 4
    gpt = tiny_gpt("gpt2-tiny", bpe.vocab_size)
    data = batches("gpt", bpe, gpt.config, max_length=24, max_target_tokens=6, pairs=pairs)
    for prompt, target in zip(data.inputs["train"], data.targets["train"]):
        assert len(target) == 6 and target[-1] == bpe.eos_id  # cut to 5 tokens, then the end
        assert len(prompt) + len(target) == 24  # the source gave way
        assert prompt[-len(bpe.encode("\n")) :] == bpe.encode("\n")
    assert data.truncated["train"] == (data.size("train"), data.size("train"))
    t5 = T5(T5Config(vocab_size=unigram.vocab_size, hidden_size=32, num_layers=1, num_heads=2))
    data = batches("t5", unigram, t5.config, max_length=10, max_target_tokens=4, pairs=pairs)
    for source, target in zip(data.inputs["train"], data.targets["train"]):
        assert len(source) == 10 and source[-1] == unigram.eos_id
        assert len(target) == 4 and target[-1] == unigram.eos_id
    with pytest.raises(UserError, match="no room for the source"):
        make_framing("gpt", bpe, gpt.config, "", "\n", 16, 16)


# ------------------------------------------------------------------------------------- metrics
def test_metrics_identical_disjoint_and_known_values():
    same = ["the cat sat on the mat today", "a dog ran in the park at noon"]
    perfect = text2text_metrics(same, same)
    for value in (perfect.rouge1, perfect.rouge2, perfect.rouge_l, perfect.bleu, perfect.chrf):
        assert value == pytest.approx(100.0)
    disjoint = text2text_metrics(["xyz xyz xyz xyz"], ["abc abc abc abc"])
    for value in (disjoint.rouge1, disjoint.rouge2, disjoint.rouge_l, disjoint.bleu, disjoint.chrf):
        assert value == pytest.approx(0.0)

    prediction, reference = "the cat is on the mat", "the cat sat on the mat"
    m = text2text_metrics([prediction], [reference])
    assert m.rouge1 == pytest.approx(100 * 5 / 6)  # 5 of 6 unigrams match each way
    assert m.rouge2 == pytest.approx(100 * 3 / 5)  # the cat, on the, the mat of 5 bigrams
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert m.rouge_l == pytest.approx(100 * scorer.score(reference, prediction)["rougeL"].fmeasure)
    assert m.bleu == pytest.approx(sacrebleu.corpus_bleu([prediction], [[reference]]).score)
    assert m.chrf == pytest.approx(sacrebleu.corpus_chrf([prediction], [[reference]]).score)
    stemmed = text2text_metrics(["the kings ruled"], ["the king rules"])
    assert stemmed.rouge1 == pytest.approx(100.0)  # Porter stemming: kings/king, ruled/rules

    assert m.as_dict("test_") == {
        "test_rouge1": m.rouge1,
        "test_rouge2": m.rouge2,
        "test_rougeL": m.rouge_l,
        "test_bleu": m.bleu,
        "test_chrf": m.chrf,
        "test_examples_scored": 1,
    }
    assert m.summary().startswith("chrF ") and m.summary().endswith("(1 example)")
    with pytest.raises(ValueError):
        text2text_metrics(["a"], [])
