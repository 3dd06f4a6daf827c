"""Zero- and few-shot classification by prompting: the scores are the verbalizers' log-likelihoods
(checked against a plain forward pass), demonstrations are balanced and seeded, and a prompt
format that cannot work is refused."""

import pytest
import torch
from helpers import tiny_gpt

from lmforge.data.classification import LabelledSplits
from lmforge.errors import UserError
from lmforge.eval.prompting import PromptClassifier, draw_demonstrations, prompt_format
from lmforge.tokenizer import train_bpe

TEXTS = ["a great film", "a dull film", "great acting", "dull plot", "truly great", "so dull"]
LABELS = [1, 0, 1, 0, 1, 0]


@pytest.fixture(scope="module")
def splits():
    return LabelledSplits(
        texts={"train": TEXTS, "val": TEXTS[:2], "test": TEXTS[2:]},
        labels={"train": LABELS, "val": LABELS[:2], "test": LABELS[2:]},
        label_names=["bad", "good"],
    )


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = train_bpe([*TEXTS, "Text: Label: negative positive"] * 20, 300, show_progress=False)
    torch.manual_seed(0)
    return tiny_gpt("llama-tiny", tokenizer.vocab_size, max_seq_len=256).eval(), tokenizer


@pytest.mark.parametrize("words", [("negative", "positive"), ("neg", "pos")])
def test_scores_are_the_verbalizers_log_likelihoods(splits, model_and_tokenizer, words):
    """Multi-token verbalizers (one row per label) and one-token ones (one row per text)."""
    model, tokenizer = model_and_tokenizer
    one_token = all(len(tokenizer.encode(" " + w)) == 1 for w in words)
    assert one_token == (words[0] == "neg")  # both scoring paths are exercised
    fmt = prompt_format(["bad", "good"], 2, verbalizers=dict(zip(["bad", "good"], words)))
    classifier = PromptClassifier(model, tokenizer, fmt, draw_demonstrations(splits, 2, 0))
    texts = ["great acting", "a dull plot indeed"]
    scores = classifier.scores(texts, torch.device("cpu"), torch.float32, progress=False)
    for i, text in enumerate(texts):
        prompt = tokenizer.encode(classifier.prompt(text))
        for c, word in enumerate(words):
            verbalizer = tokenizer.encode(" " + word)
            ids = torch.tensor([prompt + verbalizer])
            with torch.no_grad():
                logp = model(ids[:, :-1]).log_softmax(-1)[0]  # (T - 1, V)
            expected = sum(
                logp[len(prompt) - 1 + j, t] for j, t in enumerate(verbalizer)
            )  # each verbalizer token given everything before it
            torch.testing.assert_close(scores[i, c], expected, atol=1e-4, rtol=1e-4)
    metrics = classifier.evaluate(
        splits, "test", torch.device("cpu"), torch.float32, progress=False
    )
    assert metrics.count == 4 and 0 <= metrics.accuracy <= 1


def test_demonstrations_are_balanced_and_seeded(splits):
    demos = draw_demonstrations(splits, 4, seed=3)
    assert sorted(label for _, label in demos) == [0, 0, 1, 1]
    assert len({text for text, _ in demos}) == 4
    assert demos == draw_demonstrations(splits, 4, seed=3)
    assert draw_demonstrations(splits, 0, seed=3) == []


def test_prompt_formats():
    fmt = prompt_format(["rotten", "fresh"], 0, source="rotten-tomatoes")
    assert fmt.verbalizers == ("negative", "positive") and "movie review" in fmt.instruction
    assert prompt_format(["a", "b"], 1).instruction == "Classify each text as one of: a, b."
    with pytest.raises(UserError, match="not in the data: c"):
        prompt_format(["a", "b"], 0, verbalizers={"c": "x"})
    with pytest.raises(UserError, match="share a verbalizer"):
        prompt_format(["a", "b"], 0, verbalizers={"a": "b"})
