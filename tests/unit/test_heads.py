"""Sequence-classification heads on every family, the full and feature methods, classification data
and metrics: pooling ignores padding (either side for decoders), parameter counts, save/load."""

import json

import pytest
import torch
from helpers import tiny_gpt

from lmforge.data.classification import (
    Framing,
    TokenBatches,
    label_set,
    load_labelled_splits,
    pad_right,
    tokenize_texts,
)
from lmforge.errors import UserError
from lmforge.eval.classification import classification_metrics
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.heads import (
    ClassificationHead,
    SequenceClassifier,
    count_parameters,
    load_sequence_classifier,
    save_classifier,
)
from lmforge.models.t5 import T5, T5Config
from lmforge.peft import StandardizedHead, get_method, prepare_feature, prepare_full
from lmforge.train.losses import classification_loss

V = 61
SHAPE = dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


def tiny_backbone(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    if family == "gpt":
        return tiny_gpt("gpt2-tiny", V, seed, **overrides).eval()
    if family == "llama":
        return tiny_gpt("llama-tiny", V, seed, **overrides).eval()
    if family == "bert":
        return Bert(BertConfig(**SHAPE, max_seq_len=32, dropout=0.0, **overrides)).eval()
    return T5(T5Config(**SHAPE, max_seq_len=32, **overrides)).eval()


ROWS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]


def pad(rows, side: str, pad_id: int = 0):
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(longest - len(r), longest)
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_decoder_pools_the_last_real_token_on_either_padding_side(family):
    backbone = tiny_backbone(family)
    last = SequenceClassifier(backbone, 2)
    mean = SequenceClassifier(backbone, 2, pooling="mean")
    assert last.pooling == "last"
    with torch.no_grad():
        hidden = [backbone(torch.tensor([r]), return_hidden=True)[0] for r in ROWS]  # (T_i, C)
        alone_last = torch.stack([h[-1] for h in hidden])  # (3, C): each row run on its own
        alone_mean = torch.stack([h.mean(0) for h in hidden])  # (3, C)
        for side in ("right", "left"):
            ids, mask = pad(ROWS, side, pad_id=3)
            torch.testing.assert_close(last.features(ids, mask), alone_last, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mean.features(ids, mask), alone_mean, atol=1e-5, rtol=1e-5)


def test_pooling_must_fit_the_family():
    with pytest.raises(UserError, match="pooling cls needs BERT's pooler"):
        SequenceClassifier(tiny_backbone("gpt"), 2, pooling="cls")
    with pytest.raises(UserError, match="unknown pooling 'max'"):
        SequenceClassifier(tiny_backbone("t5"), 2, pooling="max")
    assert SequenceClassifier(tiny_backbone("bert"), 2).pooling == "cls"
    assert SequenceClassifier(tiny_backbone("t5"), 2).pooling == "mean"


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_encoder_pooling_ignores_right_padding(family):
    model = SequenceClassifier(tiny_backbone(family), num_labels=3).eval()
    with torch.no_grad():
        ids, mask = pad(ROWS, "right")
        logits = model(ids, mask)
        assert logits.shape == (3, 3)
        alone = torch.cat([model(torch.tensor([r])) for r in ROWS])  # (3, 3)
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_feature_method_trains_only_the_head(family):
    model = SequenceClassifier(tiny_backbone(family), num_labels=2, dropout=0.1)
    prepare_feature(model)
    trainable, total = count_parameters(model)
    head = sum(p.numel() for p in model.head.parameters())
    assert trainable == head == 32 * 2 + 2
    ids, mask = pad(ROWS, "right")
    classification_loss(model, (ids, mask, torch.tensor([0, 1, 1]))).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.startswith("head."), name
    assert total == model.backbone.num_params() + head


def test_full_method_trains_what_the_classifier_runs():
    gpt = SequenceClassifier(tiny_backbone("gpt"), num_labels=2)  # tied LM head: the embedding
    prepare_full(gpt)
    assert count_parameters(gpt)[0] == count_parameters(gpt)[1]
    untied = SequenceClassifier(tiny_backbone("llama", tie_embeddings=False), num_labels=2)
    prepare_full(untied)
    trainable, total = count_parameters(untied)
    assert total - trainable == untied.backbone.lm_head.weight.numel()
    assert untied.backbone.embed_tokens.weight.requires_grad
    t5 = SequenceClassifier(tiny_backbone("t5"), num_labels=2)
    prepare_full(t5)
    assert not any(p.requires_grad for p in t5.backbone.decoder.parameters())
    assert t5.backbone.shared.weight.requires_grad  # the encoder's embedding (tied to lm_head)
    bert = SequenceClassifier(tiny_backbone("bert"), num_labels=2)
    prepare_full(bert)
    assert bert.backbone.pooler.dense.weight.requires_grad
    assert not bert.backbone.mlm_head.dense.weight.requires_grad
    ids, mask = pad(ROWS, "right")
    classification_loss(bert, (ids, mask, torch.tensor([0, 1, 1]))).backward()
    for name, p in bert.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown fine-tuning method 'lora2'"):
        get_method("lora2")


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_classifier_saves_and_loads_back(tmp_path, family):
    model = SequenceClassifier(tiny_backbone(family), 2, labels=["neg", "pos"]).eval()
    save_classifier(model, tmp_path, info={"max_length": 16})
    loaded, info = load_sequence_classifier(tmp_path)
    assert loaded.labels == ["neg", "pos"] and info["max_length"] == 16
    ids, mask = pad(ROWS, "right")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), model(ids, mask))


def test_metrics_match_hand_computed_values():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 0, 1])
    m = classification_metrics(predicted, labels, 3)
    assert m.accuracy == pytest.approx(3 / 6)
    assert m.confusion == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    # class 0: p 2/3 r 2/3 -> 2/3; class 1: p 1/3 r 1/2 -> 0.4; class 2: never predicted -> 0
    assert m.f1 == pytest.approx([2 / 3, 0.4, 0.0])
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.4) / 3)


class CharTokenizer:
    def encode_batch(self, texts):
        return [[ord(c) % 50 + 3 for c in t] for t in texts]


def test_tokenize_frames_and_truncates_and_batches_pad_right():
    framing = Framing(prefix=(1,), suffix=(2,), pad_id=0)
    rows = tokenize_texts(["abcdefgh", "ab"], CharTokenizer(), framing, max_length=5)
    assert [len(r) for r in rows] == [5, 4] and rows[0][0] == 1 and rows[0][-1] == 2
    ids, mask = pad_right(rows, 0)
    assert ids.shape == (2, 5) and mask.tolist() == [[1] * 5, [1, 1, 1, 1, 0]]
    with pytest.raises(UserError, match="no room for text"):
        tokenize_texts(["a"], CharTokenizer(), framing, max_length=2)
    data = TokenBatches(
        {s: rows for s in ("train", "val", "test")},
        {s: [0, 1] for s in ("train", "val", "test")},
        0,
        5,
    )
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = data.get_batch("train", 4, generator=g1), data.get_batch("train", 4, generator=g2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # a pure function of the generator
    assert [len(batch[-1]) for batch in data.iter_eval_batches("val", 1)] == [1, 1]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_labelled_file_split_is_seeded_and_checked(tmp_path):
    rows = [{"text": f"text {i}", "label": "pos" if i % 3 else "neg"} for i in range(50)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    a = load_labelled_splits(str(path), seed=1)
    b = load_labelled_splits(str(path), seed=1)
    c = load_labelled_splits(str(path), seed=2)
    assert a.texts == b.texts and a.texts != c.texts
    assert [a.size(s) for s in ("train", "val", "test")] == [40, 5, 5]
    assert a.label_names == ["neg", "pos"] and a.source["split_seed"] == 1
    assert load_labelled_splits(str(path), train_subset=7).size("train") == 7
    with pytest.raises(UserError, match="has no field 'sentiment'"):
        load_labelled_splits(str(path), label_field="sentiment")
    with pytest.raises(UserError, match="label 'pos' is not in data.labels"):
        load_labelled_splits(str(path), labels=["neg", "neutral"])
    with pytest.raises(UserError, match="data file not found"):
        load_labelled_splits(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="holds no examples"):
        load_labelled_splits(str(empty))
    csv = tmp_path / "d.csv"
    csv.write_text("label,text\n1,a b\n0,c d\n1,e f\n0,g h\n1,i j\n", encoding="utf-8")
    assert load_labelled_splits(str(csv)).label_names == ["0", "1"]
    assert label_set(["10", "9", "2"]) == ["2", "9", "10"]


def test_standardized_head_folds_into_a_head_on_raw_features():
    """W ((x - mean) / std) + b folded into the head's own linear layer gives the same logits."""
    torch.manual_seed(0)
    features = torch.randn(200, 32) * torch.logspace(-2, 2, 32) + torch.linspace(-5, 5, 32)
    head = ClassificationHead(32, 3, dropout=0.1)
    with torch.no_grad():
        head.out_proj.weight.normal_()  # as if trained
        head.out_proj.bias.normal_()
    standardized = StandardizedHead(head, features).eval()
    assert standardized.num_labels == 3
    expected = standardized(features)
    z = (features - features.mean(0)) / features.std(0)
    torch.testing.assert_close(expected, head(z))
    assert standardized.fold() is head
    torch.testing.assert_close(head(features), expected, atol=1e-3, rtol=1e-3)


def test_a_head_on_standardized_features_learns_despite_outlier_dimensions():
    """Features as in a pre-trained transformer's hidden states: every dimension has its own
    offset, two are huge, and the label moves them a little along one direction. With the same
    head, optimiser and 50 steps of 16 examples, the head on standardized features learns the
    label; on raw features it stays near chance."""
    g = torch.Generator().manual_seed(0)
    C, N = 256, 512
    labels = torch.randint(0, 2, (N,), generator=g)
    direction = torch.nn.functional.normalize(torch.randn(C, generator=g), dim=0)
    sign = 2 * labels[:, None].float() - 1  # (N, 1): -1 or +1
    features = torch.randn(C, generator=g) + 0.1 * (
        torch.randn(N, C, generator=g) + sign * direction
    )
    features[:, :2] = 50.0 + 5.0 * torch.randn(N, 2, generator=g)  # massive activations

    def accuracy_after_training(head: torch.nn.Module) -> float:
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.0)
        for _ in range(50):
            batch = torch.randint(0, N, (16,), generator=g)
            loss = torch.nn.functional.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return float((head(features).argmax(-1) == labels).float().mean())

    torch.manual_seed(1)
    raw = accuracy_after_training(ClassificationHead(C, 2))
    torch.manual_seed(1)
    standardized = accuracy_after_training(StandardizedHead(ClassificationHead(C, 2), features))
    assert standardized > 0.8 and raw < 0.65, (standardized, raw)
