"""The masked-LM objective: framing, masking statistics (15%, 80/10/10), specials, whole words,
the loss against a hand computation, determinism in evaluation, and the objective's builder."""

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from lmforge.errors import UserError
from lmforge.models.bert import Bert, BertConfig
from lmforge.tokenizer import Tokenizer, train_bpe
from lmforge.train.loop import TrainConfig
from lmforge.train.losses import OBJECTIVES, make_objective
from lmforge.train.mlm import (
    MaskingVocab,
    content_generator,
    frame,
    mask_tokens,
    mlm_loss,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "king", "queen", "river", "ran", "past", "night", "stars", "war", "peace"]
PIECES = ["##s", "##ing", "##ed", "##ly"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS + PIECES)}
    backend = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return Tokenizer(backend)


@pytest.fixture(scope="module")
def vocab(tokenizer) -> MaskingVocab:
    return MaskingVocab.from_tokenizer(tokenizer)


def ids_of(tokenizer, *tokens):
    return [tokenizer.token_to_id(t) for t in tokens]


def random_words(tokenizer, shape, seed=0) -> torch.Tensor:
    """Token ids of ordinary one-piece words."""
    g = torch.Generator().manual_seed(seed)
    words = torch.tensor(ids_of(tokenizer, *WORDS))
    return words[torch.randint(len(words), shape, generator=g)]


def test_frame_puts_cls_and_sep_around_the_window(vocab):
    x = torch.arange(10, 20).view(2, 5)
    framed = frame(x, vocab.cls_id, vocab.sep_id)
    assert framed.tolist() == [[2, 10, 11, 12, 3], [2, 15, 16, 17, 3]]


def test_masking_statistics(tokenizer, vocab):
    ids = frame(random_words(tokenizer, (256, 128)), vocab.cls_id, vocab.sep_id)
    g = torch.Generator().manual_seed(1)
    inputs, selected = mask_tokens(ids, vocab, 0.15, generator=g)
    per_row = selected.sum(dim=1)
    assert torch.all(per_row == round(0.15 * 126))  # exactly 15% of the 126 ordinary tokens
    assert not selected[:, 0].any() and not selected[:, -1].any()  # [CLS], [SEP]
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else changes
    n = selected.sum().item()
    masked = (inputs[selected] == vocab.mask_id).float().mean().item()
    changed = ((inputs != ids) & (inputs != vocab.mask_id))[selected].float().mean().item()
    kept = (inputs[selected] == ids[selected]).float().mean().item()
    assert n == 256 * 19
    assert abs(masked - 0.8) < 0.02
    # a random token equals the original one time in len(WORDS + PIECES)
    ordinary = len(WORDS) + len(PIECES)
    assert abs(changed - 0.1 * (1 - 1 / ordinary)) < 0.015
    assert abs(kept - (0.1 + 0.1 / ordinary)) < 0.015
    random_ids = inputs[selected & (inputs != ids) & (inputs != vocab.mask_id)]
    assert not vocab.is_special[random_ids].any()  # random replacements are never specials


def test_special_tokens_are_never_selected(tokenizer, vocab):
    ids = frame(random_words(tokenizer, (64, 64), seed=2), vocab.cls_id, vocab.sep_id)
    special = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.3
    fill = torch.tensor(ids_of(tokenizer, "[SEP]", "[PAD]", "[UNK]", "[MASK]"))
    ids[special] = fill[torch.arange(int(special.sum())) % 4]
    for whole_word in (False, True):
        _, selected = mask_tokens(ids, vocab, 0.5, whole_word, torch.Generator().manual_seed(4))
        assert selected.any()
        assert not (selected & vocab.is_special[ids]).any()


def test_whole_word_masking_keeps_words_together(tokenizer, vocab):
    # words of 1-3 pieces: "king ##s", "river ##ing ##ly", "the", ...
    g = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(200):
        row = []
        while len(row) < 60:
            row.append(WORDS[torch.randint(len(WORDS), (1,), generator=g).item()])
            for _ in range(torch.randint(3, (1,), generator=g).item()):
                row.append(PIECES[torch.randint(len(PIECES), (1,), generator=g).item()])
        rows.append(ids_of(tokenizer, *row[:60]))
    x = torch.tensor(rows)
    x[:, 0] = tokenizer.token_to_id("##s")  # a window that starts inside a word
    ids = frame(x, vocab.cls_id, vocab.sep_id)
    _, selected = mask_tokens(ids, vocab, 0.15, whole_word=True, generator=g)
    continuation = vocab.is_continuation[ids]
    for b in range(ids.size(0)):
        word_start = None
        for t in range(1, ids.size(1) - 1):
            if not continuation[b, t] or t == 1:
                word_start = t
            assert selected[b, t] == selected[b, word_start], (b, t)  # all pieces or none
    share = selected[:, 1:-1].float().mean().item()
    assert abs(share - 0.15) < 0.03  # p of the words is about p of the tokens


def tiny_model(vocab_size: int) -> Bert:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_seq_len=32,
        dropout=0.0,
    )
    return Bert(cfg)


def test_loss_is_cross_entropy_over_the_selected_positions(tokenizer, vocab):
    model = tiny_model(tokenizer.vocab_size).eval()
    x = random_words(tokenizer, (4, 20), seed=6)
    loss = mlm_loss(model, (x, x), vocab=vocab)
    # by hand: the same masks (the evaluation generator is seeded by the batch), full logits
    ids = frame(x, vocab.cls_id, vocab.sep_id)
    inputs, selected = mask_tokens(ids, vocab, 0.15, generator=content_generator(ids))
    with torch.no_grad():
        log_probs = F.log_softmax(model(inputs), dim=-1)  # (B, T, V)
    nll = -log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    torch.testing.assert_close(loss, nll[selected].mean())
    assert selected.sum() == 4 * 3  # round(0.15 * 18) per row


def test_evaluation_masks_are_deterministic_training_masks_are_not(tokenizer, vocab):
    model = tiny_model(tokenizer.vocab_size).eval()
    x = random_words(tokenizer, (4, 20), seed=7)
    assert mlm_loss(model, (x, x), vocab=vocab) == mlm_loss(model, (x, x), vocab=vocab)
    model.train()
    torch.manual_seed(0)
    first = mlm_loss(model, (x, x), vocab=vocab)
    second = mlm_loss(model, (x, x), vocab=vocab)
    torch.manual_seed(0)
    again = mlm_loss(model, (x, x), vocab=vocab)
    assert first != second and first == again  # the global RNG (restored on resume)


def test_loss_has_gradients_and_falls_on_one_batch(tokenizer, vocab):
    model = tiny_model(tokenizer.vocab_size).train()
    objective = make_objective("mlm", tokenizer, model.config, TrainConfig(block_size=20))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = random_words(tokenizer, (8, 20), seed=8)
    losses = []
    for _ in range(30):
        loss = objective(model, (x, x))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert model.pooler.dense.weight.grad is None  # MLM does not train the pooler


def test_builder_needs_a_mask_token_and_checks_options():
    assert "mlm" in OBJECTIVES
    bpe = train_bpe(["some plain text " * 20], vocab_size=270, show_progress=False)
    with pytest.raises(UserError, match=r"tokenizer has no \[MASK\] token; train a WordPiece"):
        make_objective("mlm", bpe, None, TrainConfig())
    with pytest.raises(ValueError, match="mlm_probability"):
        TrainConfig(mlm_probability=0.0)


def test_probability_and_whole_word_options_reach_the_objective(tokenizer):
    objective = make_objective(
        "mlm", tokenizer, None, TrainConfig(mlm_probability=0.3, whole_word_mask=True)
    )
    assert objective.keywords["probability"] == 0.3 and objective.keywords["whole_word"]
