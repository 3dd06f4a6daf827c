"""Extractive QA: answer offsets -> token targets for every tokenizer kind and family framing, the
context mask, best-span decoding, SQuAD EM/F1, reading SQuAD JSON and JSONL, the generated
speaker questions, and the span extractor (unused parameters, frozen backbone, save/load)."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_gpt
from torch import nn

from lmforge.data.qa import (
    NO_TARGET,
    QABatches,
    QAExample,
    QASplits,
    char_span_to_tokens,
    checked_example,
    encode_examples,
    load_qa_splits,
    qa_framing,
    span_text,
    split_by_context,
)
from lmforge.data.shakespeare_speakers import read_speech_runs, speaker_questions
from lmforge.errors import UserError
from lmforge.eval.qa import (
    best_spans,
    exact_match,
    normalize_answer,
    qa_metrics,
    token_f1,
)
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.span_heads import (
    SpanExtractor,
    load_span_extractor,
    mask_outside_context,
    save_span_extractor,
)
from lmforge.models.t5 import T5, T5Config
from lmforge.peft import prepare_feature, prepare_full
from lmforge.tasks.qa import qa_loss
from lmforge.tokenizer import train_bpe, train_unigram, train_wordpiece

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega where is the".split()
TEXTS = [" ".join(WORDS[i:] + WORDS[:i]) + "?" for i in range(len(WORDS))] * 20
SHAPE = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_seq_len=64)


@pytest.fixture(scope="module")
def tokenizers():
    """family -> a tokenizer of the family's kind (byte-level BPE, WordPiece, Unigram)."""
    return {
        "gpt": train_bpe(TEXTS, 300, show_progress=False),
        "bert": train_wordpiece(TEXTS, 120, show_progress=False),
        "t5": train_unigram(TEXTS, 120, num_sentinels=0, show_progress=False),
    }


def backbone(family: str, vocab_size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if family == "gpt":
        return tiny_gpt("gpt2-tiny", vocab_size, seed)
    if family == "bert":
        return Bert(BertConfig(vocab_size=vocab_size, dropout=0.0, **SHAPE))
    return T5(T5Config(vocab_size=vocab_size, **SHAPE))


def config_of(family: str, vocab_size: int):
    return T5Config(vocab_size=vocab_size, **SHAPE) if family == "t5" else None


CONTEXT = "alpha beta gamma delta epsilon zeta theta"


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
@pytest.mark.parametrize(
    "answer", ["alpha", "alpha beta", "delta", "zeta theta", "theta", CONTEXT], ids=str
)
def test_answer_characters_map_to_first_and_last_token_and_back(tokenizers, family, answer):
    """Start, middle and end of the context, one word or several: the targets cover exactly the
    answer's tokens, and decoding those positions gives the answer text back."""
    tokenizer = tokenizers[family]
    framing = qa_framing(family, tokenizer, config_of(family, tokenizer.vocab_size))
    example = checked_example("where is delta?", CONTEXT, [answer], None, "test")
    (encoded,) = encode_examples([example], tokenizer, framing, 64)
    assert encoded.start != NO_TARGET and encoded.start <= encoded.end
    assert encoded.start >= encoded.context_start
    assert span_text(example, encoded, encoded.start, encoded.end) == answer
    first, last = encoded.start - encoded.context_start, encoded.end - encoded.context_start
    char_start, char_end = CONTEXT.index(answer), CONTEXT.index(answer) + len(answer)
    offsets = encoded.offsets
    assert offsets[first, 0] <= char_start < offsets[first, 1]  # holds the first character
    assert offsets[last, 0] < char_end <= offsets[last, 1]  # holds the last character
    assert first == 0 or offsets[first - 1, 1] <= char_start  # the tokens around stay outside
    assert last == len(offsets) - 1 or offsets[last + 1, 0] >= char_end


def test_char_span_to_tokens_on_hand_made_offsets():
    # tokens: "He" "llo" " world" "!" ; a leading-space token and an empty (special) one
    offsets = np.array([[0, 2], [2, 5], [5, 11], [11, 12], [12, 12]])
    assert char_span_to_tokens(offsets, 0, 5) == (0, 1)  # "Hello"
    assert char_span_to_tokens(offsets, 6, 11) == (2, 2)  # "world" inside " world"
    assert char_span_to_tokens(offsets, 3, 8) == (1, 2)  # partial tokens count
    assert char_span_to_tokens(offsets, 11, 12) == (3, 3)
    assert char_span_to_tokens(offsets, 12, 13) is None  # past the text: no token


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_pair_framing_per_family(tokenizers, family):
    tokenizer = tokenizers[family]
    framing = qa_framing(family, tokenizer, config_of(family, tokenizer.vocab_size))
    example = checked_example("where is beta?", CONTEXT, ["beta"], None, "test")
    (encoded,) = encode_examples([example], tokenizer, framing, 64)
    ids, types = encoded.input_ids.tolist(), encoded.token_type_ids.tolist()
    question = tokenizer.encode("where is beta?")
    context_end = encoded.context_start + len(encoded.offsets)
    assert ids[encoded.context_start : context_end] == tokenizer.encode(CONTEXT)
    if family == "bert":  # [CLS] question [SEP] context [SEP], segments 0 | 1
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        assert ids == [cls, *question, sep, *tokenizer.encode(CONTEXT), sep]
        assert types == [0] * encoded.context_start + [1] * (len(ids) - encoded.context_start)
    elif family == "gpt":  # question <|endoftext|> context
        assert ids == [*question, tokenizer.document_separator_id, *tokenizer.encode(CONTEXT)]
        assert set(types) == {0}
    else:  # question: ... context: ... </s>
        head = [*tokenizer.encode("question:"), *question, *tokenizer.encode("context:")]
        assert ids == [*head, *tokenizer.encode(CONTEXT), 1]
        assert set(types) == {0}


def test_truncation_cuts_the_context_and_drops_training_answers_beyond_it(tokenizers):
    tokenizer = tokenizers["bert"]
    framing = qa_framing("bert", tokenizer, None)
    near = checked_example("where is alpha?", CONTEXT, ["alpha"], None, "near")
    far = checked_example("where is theta?", CONTEXT, ["theta"], None, "far")
    encoded = encode_examples([near, far], tokenizer, framing, 12)
    assert all(len(e.input_ids) <= 12 for e in encoded)
    assert encoded[0].start != NO_TARGET and encoded[1].start == NO_TARGET
    splits = QASplits({"train": [near, far], "val": [far], "test": [near]})
    data = QABatches.from_splits(splits, tokenizer, framing, 12)
    assert data.dropped == 1 and data.size("train") == 1
    assert data.size("val") == 1 and data.cut("val") == 1  # kept for scoring, no target
    *_, targets = data.collate("val", torch.tensor([0]))
    assert targets.tolist() == [[NO_TARGET, NO_TARGET]]


def test_a_long_question_keeps_at_most_half_the_window(tokenizers):
    tokenizer = tokenizers["gpt"]
    framing = qa_framing("gpt", tokenizer, None)
    question = " ".join(WORDS * 4) + "?"
    example = checked_example(question, CONTEXT, ["alpha"], None, "long")
    (encoded,) = encode_examples([example], tokenizer, framing, 20)
    assert len(encoded.input_ids) == 20 and encoded.context_start == 10  # 19 // 2 + separator
    assert encoded.start == encoded.context_start  # the context's first token survives


# ------------------------------------------------------------------------- masking and loss
class FixedLogits(nn.Module):
    """A stand-in model that returns given (start, end) logits."""

    def __init__(self, start: torch.Tensor, end: torch.Tensor) -> None:
        super().__init__()
        self.start, self.end = start, end

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.start, self.end


def test_no_probability_outside_the_context():
    logits = torch.tensor([[9.0, 8.0, 1.0, 2.0, 3.0, 7.0]])
    context = torch.tensor([[False, False, True, True, True, False]])  # question | ctx | pad
    p = mask_outside_context(logits, context).softmax(-1)
    assert p[~context].sum() == 0
    torch.testing.assert_close(p[context], torch.tensor([1.0, 2.0, 3.0]).softmax(-1))


def test_loss_is_mean_of_start_and_end_cross_entropy_over_context_positions():
    start = torch.tensor([[5.0, 0.0, 1.0, 2.0, 9.0], [0.0, 3.0, 0.0, 1.0, 0.0]])
    end = torch.tensor([[0.0, 1.0, 0.0, 4.0, 9.0], [2.0, 1.0, 1.0, 0.0, 0.0]])
    context = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    targets = torch.tensor([[2, 3], [3, 4]])
    ids = torch.zeros(2, 5, dtype=torch.long)
    batch = (ids, torch.ones_like(ids), torch.zeros_like(ids), context, targets)
    loss = qa_loss(FixedLogits(start, end), batch)
    by_hand = 0.0
    for b in range(2):
        c = context[b]
        positions = c.nonzero().squeeze(1).tolist()
        for logits, t in ((start[b], targets[b, 0]), (end[b], targets[b, 1])):
            by_hand -= torch.log_softmax(logits[c], -1)[positions.index(int(t))]
    torch.testing.assert_close(loss, by_hand / 4)
    # logits outside the context change nothing
    start2, end2 = start.clone(), end.clone()
    start2[~context], end2[~context] = 100.0, -100.0
    torch.testing.assert_close(qa_loss(FixedLogits(start2, end2), batch), loss)
    # a question without a target does not count
    cut = targets.clone()
    cut[1] = NO_TARGET
    batch_cut = (*batch[:4], cut)
    first_row = (*[t[:1] for t in batch[:4]], targets[:1])
    only_first = qa_loss(FixedLogits(start[:1], end[:1]), first_row)
    torch.testing.assert_close(qa_loss(FixedLogits(start, end), batch_cut), only_first)


# ----------------------------------------------------------------------------------- decoding
def test_best_span_respects_order_length_and_context():
    context = torch.tensor([[False, True, True, True, True, True, False]])
    start = torch.tensor([[50.0, 0.0, 1.0, 0.0, 0.0, 5.5, 0.0]])
    end = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 50.0]])
    # the best start (5) comes after the best end (3): the best pair with start <= end is
    # (2, 3) = 1 + 5, not (5, 5) = 5.5; positions 0 and 6 are outside the context
    s, e, p = best_spans(start, end, context, max_answer_tokens=30)
    assert (int(s), int(e)) == (2, 3)
    p_start = torch.softmax(start[0, 1:6], -1)[2 - 1]
    p_end = torch.softmax(end[0, 1:6], -1)[3 - 1]
    torch.testing.assert_close(p, (p_start * p_end)[None])
    # answers of at most one token: (5, 5) = 6 is best
    s, e, _ = best_spans(start, end, context, max_answer_tokens=1)
    assert (int(s), int(e)) == (5, 5)


def test_best_span_per_row_of_a_batch():
    context = torch.ones(2, 4, dtype=torch.bool)
    start = torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    end = torch.tensor([[0.0, 0.0, 4.0, 0.0], [9.0, 0.0, 0.0, 1.0]])
    s, e, _ = best_spans(start, end, context, 30)
    assert s.tolist() == [1, 0] and e.tolist() == [2, 0]  # row 1: (3, 0) = 11 ends too early


# ------------------------------------------------------------------------------------ metrics
def test_squad_normalisation():
    assert normalize_answer("The  Cat, a dog!") == "cat dog"
    # punctuation is deleted, not made a space, exactly as the official script does
    assert normalize_answer("An apple--and THE pear.") == "appleand pear"
    assert normalize_answer("theatre") == "theatre"  # articles are whole words only


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Cat.", "cat") == 1.0
    assert exact_match("cat sat", "cat") == 0.0
    # prediction {cat, sat}, gold {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("The cat sat", "cat sat down") == pytest.approx(0.8)
    assert token_f1("a dog", "the cat") == 0.0
    # repeated tokens count as a multiset: pred {cat, cat}, gold {cat}: P = 1/2, R = 1 -> 2/3
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    m = qa_metrics(
        ["Denver Broncos", "cat sat", "nothing"],
        [["Denver Broncos", "Broncos"], ["dog", "the cat sat down"], ["something"]],
    )
    # EM: 1, 0, 0; F1: 1, max(0, {cat, sat} vs {cat, sat, down} = 0.8), 0
    assert m.exact_match == pytest.approx(1 / 3) and m.f1 == pytest.approx((1 + 0.8) / 3)
    assert m.as_dict("test_") == {"test_exact_match": m.exact_match, "test_f1": m.f1}
    assert m.count == 3 and m.predictions[1] == "cat sat"


# ------------------------------------------------------------------------------------ reading
SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "T",
            "paragraphs": [
                {
                    "context": "Paris is the capital of France.",
                    "qas": [
                        {
                            "id": "q1",
                            "question": "What is the capital of France?",
                            "answers": [
                                {"text": "Paris", "answer_start": 0},
                                {"text": "Paris", "answer_start": 0},
                            ],
                        },
                        {
                            "id": "q2",
                            "question": "Of what is Paris the capital?",
                            "answers": [{"text": "France", "answer_start": 24}],
                        },
                    ],
                }
            ],
        }
    ],
}


def test_reads_squad_json(tmp_path):
    path = tmp_path / "squad.json"
    extra = {"context": "Rome is old.", "qas": [{"id": "q3", "question": "What is old?",
             "answers": [{"text": "Rome", "answer_start": 0}]}]}  # fmt: skip
    doc = json.loads(json.dumps(SQUAD))
    doc["data"][0]["paragraphs"] += [extra, {**extra, "context": "Rome is old!"}]
    path.write_text(json.dumps(doc), encoding="utf-8")
    splits = load_qa_splits(str(path), val_fraction=0.3, test_fraction=0.3)
    questions = [e for s in ("train", "val", "test") for e in splits.examples[s]]
    assert len(questions) == 4 and splits.source["examples"] == 4
    q1 = next(e for e in questions if e.question.startswith("What is the capital"))
    assert q1.answers == ("Paris", "Paris") and q1.starts == (0, 0)
    together = {
        s for s in ("train", "val", "test") for e in splits.examples[s] if "France" in e.context
    }
    assert len(together) == 1  # both questions on the paragraph are in one split


def test_reads_both_jsonl_forms(tmp_path):
    rows = [
        {"question": "Who?", "context": "Ann met Bob.", "answers": {"text": ["Bob"], "answer_start": [8]}},
        {"question": "Who met?", "context": "Ann met Bob. Ann left.", "answer": "Ann"},
        {"question": "Who left?", "context": "Ann met Bob. Ann left.", "answer": "Ann", "answer_start": 13},
        {"question": "Who ran?", "context": "Cy ran.", "answer": "Cy"},
    ]  # fmt: skip
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    splits = load_qa_splits(str(path), val_fraction=0.34, test_fraction=0.33)
    got = {e.question: (e.answers, e.starts) for s in splits.examples.values() for e in s}
    assert got["Who?"] == (("Bob",), (8,))
    assert got["Who met?"] == (("Ann",), (0,))  # the first occurrence
    assert got["Who left?"] == (("Ann",), (13,))


@pytest.mark.parametrize(
    "row, match",
    [
        ({"question": "Q", "answer": "a"}, "row 1 has no field 'context'"),
        ({"context": "a b", "answer": "a"}, "row 1 has no field 'question'"),
        ({"question": "Q", "context": "a b"}, "no field 'answers' or 'answer'"),
        ({"question": "Q", "context": "a b", "answer": "c"}, "'c' does not occur in its context"),
        (
            {"question": "Q", "context": "a b", "answers": {"text": ["b"], "answer_start": [0]}},
            "row 1: answer 'b' is not at character 0",
        ),
        ({"question": "", "context": "a b", "answer": "a"}, "'question' is missing or empty"),
    ],
)
def test_bad_rows_name_the_row(tmp_path, row, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=match):
        load_qa_splits(str(path))


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="holds no questions"):
        load_qa_splits(str(empty))
    not_squad = tmp_path / "x.json"
    not_squad.write_text(json.dumps({"data": [{"title": "no paragraphs"}]}), encoding="utf-8")
    with pytest.raises(UserError, match="not SQuAD v1.1 JSON"):
        load_qa_splits(str(not_squad))
    with pytest.raises(UserError, match="not found"):
        load_qa_splits(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="not QA data"):
        load_qa_splits("rotten-tomatoes")


def test_split_by_context_is_seeded_and_keeps_contexts_together():
    examples = [QAExample(f"q{i}", f"context {i // 2}", ("context",), (0,)) for i in range(40)]
    a = split_by_context(examples, seed=3)
    b = split_by_context(examples, seed=3)
    assert a.examples == b.examples and a.source["sizes"] == {"train": 32, "val": 4, "test": 4}
    seen = {}
    for split, rows in a.examples.items():
        for e in rows:
            assert seen.setdefault(e.context, split) == split
    assert split_by_context(examples, seed=4).examples != a.examples


# ------------------------------------------------------------------------- generated data
PLAY = """
ACT I. SCENE I. A room.

[Enter HAMLET and HORATIO.]

Ham.
Good even, sir. What brings you here to Elsinore?

Hor.
A truant disposition, good my lord.

Ham.
I would not hear your enemy say so, Nor shall you do mine ear that violence.

Mar.
My lord, the King your father walks tonight.

Ber.
Then let us watch, and speak of it no more. [Exit.]

[Exeunt.]

II.
From fairest creatures we desire increase,
That thereby beauty's rose might never die,

Ham.
Alas, poor Yorick! I knew him, Horatio.

Hor.
Where is the King that played so long?

Osr.
Sweet lord, the King hath laid a wager on you.

Ham.
How if I answer no? Then speak to him yourself.
"""


def test_speech_runs_skip_directions_scene_headings_and_poems():
    runs = read_speech_runs(PLAY)
    assert [[name for name, _ in run] for run in runs] == [
        ["Ham", "Hor", "Ham", "Mar", "Ber"],
        ["Ham", "Hor", "Osr", "Ham"],
    ]
    assert runs[0][4][1] == "Then let us watch, and speak of it no more."  # [Exit.] removed


def test_speaker_questions_are_seeded_spans_of_their_context():
    plays = [PLAY] * 6
    first = speaker_questions(plays, 50, seed=0)
    assert first == speaker_questions(plays, 50, seed=0)
    assert len(first) > 6
    kinds = set()
    for e in first:
        answer, start = e.answer, e.start
        assert e.context[start : start + len(answer)] == answer
        assert e.context[start + len(answer) : start + len(answer) + 2] == ".\n"  # a heading
        kinds.add(e.question.split(" ")[1])
        if e.question.startswith("Who says"):
            quote = e.question.split('"')[1]
            assert e.context.count(quote) == 1
            speech = e.context[start:].split("\n")[1]
            assert speech.startswith(quote)  # the first words of the answer's speech
    assert kinds == {"says", "replies", "speaks"}
    assert [e.question for e in speaker_questions(plays, 50, seed=1)] != [e.question for e in first]


@pytest.mark.slow
def test_built_in_shakespeare_speakers():
    """The fetched plays: deterministic, every answer a span, the contexts short."""
    a = load_qa_splits("shakespeare-speakers", generated_examples=500)
    b = load_qa_splits("shakespeare-speakers", generated_examples=500)
    assert a.examples == b.examples and a.source["examples"] == 500
    assert a.source["name"] == "shakespeare-speakers" and a.source["licence"]
    for e in (e for rows in a.examples.values() for e in rows):
        assert e.context[e.starts[0] :].startswith(e.answers[0] + ".\n")
        assert len(e.context) <= 360


# ------------------------------------------------------------------------------ the extractor
@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_extractor_runs_what_it_needs_and_saves_round_trip(tokenizers, family, tmp_path):
    tokenizer = tokenizers[family]
    model = SpanExtractor(backbone(family, tokenizer.vocab_size), max_answer_tokens=7).eval()
    prepare_full(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    unused = {"gpt": set(), "bert": {"pooler", "mlm_head"}, "t5": {"decoder"}}[family]
    assert {n.split(".")[1] for n in frozen} == unused  # a tied LM head is the embedding
    assert all(p.requires_grad for p in model.head.parameters())
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]])
    mask = (ids > 0).long()
    types = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    start, end = model(ids, mask, types)
    assert start.shape == end.shape == (2, 5)
    if family == "bert":  # the segments are read
        assert not torch.allclose(model(ids, mask, torch.zeros_like(types))[0], start)
    save_span_extractor(model, tmp_path, tokenizer, {"max_length": 32})
    loaded, info = load_span_extractor(tmp_path)
    assert info["max_answer_tokens"] == 7 and info["family"] == family
    assert loaded.max_answer_tokens == 7
    for got, want in zip(loaded(ids, mask, types), (start, end)):
        torch.testing.assert_close(got, want)


def test_feature_method_keeps_a_frozen_backbone_deterministic(tokenizers):
    bert = Bert(BertConfig(vocab_size=tokenizers["bert"].vocab_size, dropout=0.5, **SHAPE))
    model = SpanExtractor(bert)
    prepare_feature(model)
    model.train()
    assert not model.backbone.training and model.head.training
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(model(ids)[0], model(ids)[0])  # no dropout in the backbone
    assert model(ids)[0].requires_grad  # the head still learns
    prepare_full(model)
    model.train()
    assert model.backbone.training


def test_load_rejects_a_directory_that_is_not_a_qa_model(tmp_path):
    with pytest.raises(UserError, match="not a fine-tuned question-answering model"):
        load_span_extractor(tmp_path)
