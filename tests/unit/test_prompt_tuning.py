"""Prompt tuning (peft/prompt.py): the soft prompt is exactly the embeddings put before the input;
padding, pooling, the LM loss and KV-cached decoding all see the real tokens; the prompt learns;
it saves alone and loads back onto its base only."""

import pytest
import torch
from helpers import tiny_gpt

from lmforge.errors import UserError
from lmforge.infer import Engine, SamplingParams
from lmforge.models.heads import SequenceClassifier
from lmforge.models.loading import load_model, save_model
from lmforge.peft.adapter_files import load_adapter, remove_adapters, save_adapter
from lmforge.peft.prompt import PromptEmbedding, PromptTuned, initial_prompt, prompt_mask
from lmforge.tokenizer import train_bpe
from lmforge.train.losses import causal_lm_loss

VOCAB = 61


def base(seed: int = 0, preset: str = "llama-tiny"):
    return tiny_gpt(preset, VOCAB, seed=seed).eval()


def ids(seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def random_prompt(model, num_tokens: int = 5, seed: int = 1) -> torch.Tensor:
    return (
        torch.randn(
            num_tokens, model.config.hidden_size, generator=torch.Generator().manual_seed(seed)
        )
        * 0.1
    )


def test_virtual_ids_after_the_vocabulary_look_up_the_prompt():
    table = torch.nn.Embedding(VOCAB, 4)
    prompt = torch.randn(3, 4)
    embed = PromptEmbedding(table, prompt)
    x = torch.tensor([[VOCAB + 2, 5, VOCAB, 0]])
    out = embed(x)
    torch.testing.assert_close(out[0, 0], prompt[2])
    torch.testing.assert_close(out[0, 2], prompt[0])
    torch.testing.assert_close(out[0, [1, 3]], table(torch.tensor([5, 0])))


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])  # rotary and learned positions
def test_a_prompt_of_real_embeddings_equals_those_tokens_before_the_input(preset):
    """Initialised from a text, the soft prompt is those tokens' embeddings: the tuned model's
    outputs for x are the base's outputs for (text tokens, x) at x's positions."""
    model, x = base(0, preset), ids(0)
    text_ids = [7, 3, 11, 3]
    tokenizer = type("T", (), {"encode": staticmethod(lambda text: text_ids)})()
    prompt = initial_prompt(model, 4, "text", "four", tokenizer)
    expected = model(torch.cat([torch.tensor([text_ids] * 2), x], 1))[:, 4:]
    tuned = PromptTuned(model, prompt).eval()
    torch.testing.assert_close(tuned(x), expected, atol=1e-6, rtol=1e-5)
    assert tuned(x).shape == (2, 9, VOCAB)
    assert tuned.config.max_seq_len == model.config.max_seq_len - 4
    assert tuned.num_params() == sum(p.numel() for p in tuned.parameters())


def test_text_initialisation_repeats_the_text_and_vocab_samples_common_tokens():
    model = base()
    tokenizer = type("T", (), {"encode": staticmethod(lambda text: [5, 6])})()
    prompt = initial_prompt(model, 5, "text", "ab", tokenizer)
    torch.testing.assert_close(prompt, model.embed_tokens.weight[[5, 6, 5, 6, 5]])
    sampled = initial_prompt(model, 8, "vocab", seed=3)
    rows = model.embed_tokens.weight
    assert all(any(torch.equal(r, row) for row in rows) for r in sampled)
    torch.testing.assert_close(sampled, initial_prompt(model, 8, "vocab", seed=3))
    with pytest.raises(UserError, match="prompt.text"):
        initial_prompt(model, 5, "text", "", tokenizer)
    with pytest.raises(UserError, match="num_tokens"):
        initial_prompt(model, 0)


def test_padded_rows_pool_what_they_pool_alone():
    """Classification pools the last real token; a right-padded row gets what it gets alone."""
    torch.manual_seed(0)
    classifier = SequenceClassifier(base(1), 2)
    classifier.backbone = PromptTuned(classifier.backbone, random_prompt(classifier.backbone))
    classifier.eval()
    long, short = ids(1, (1, 9)), ids(2, (1, 5))
    batch = torch.cat([long, torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], 1)])
    mask = torch.ones_like(batch)
    mask[1, 5:] = 0
    together = classifier(batch, mask)
    torch.testing.assert_close(together[0], classifier(long)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[1], classifier(short)[0], atol=1e-5, rtol=1e-5)


def test_the_prompt_mask_lets_tokens_see_the_whole_prompt_and_the_prompt_only_itself():
    mask = torch.tensor([[True, False], [True, True]])[None, None]  # (1, 1, T, S)
    full = prompt_mask(mask, 2)[0, 0]
    assert full.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]


def test_cached_decoding_of_a_prompt_tuned_model_equals_the_full_forward_pass():
    model = PromptTuned(base(2), random_prompt(base(2), 6)).eval()
    prompts = [ids(3, (1, 7))[0].tolist(), ids(4, (1, 3))[0].tolist()]  # padded into one batch
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    batched = Engine(model).generate_ids(prompts, greedy)
    for prompt, tokens in zip(prompts, batched):
        sequence = list(prompt)
        with torch.no_grad():
            for _ in range(6):  # the greedy continuation, one full forward pass per token
                sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
        assert tokens == sequence[len(prompt) :]
        assert Engine(model).generate_ids([prompt], greedy)[0] == tokens


def test_the_soft_prompt_alone_learns_a_language_modelling_task():
    """Only the prompt trains (the model is frozen), and the causal-LM loss falls: after any
    input, predict token 7 (an instruction the prompt can carry). The loss sees the real tokens'
    predictions, aligned with their labels. (Weights drawn at std 0.3: a random model at the
    usual 0.02 hardly reacts to any input, a prompt included.)"""
    model = base(3)
    model.init_weights(std=0.3)
    model.requires_grad_(False)
    tuned = PromptTuned(model, initial_prompt(model, 8, "vocab"))
    x = ids(5, (4, 12))
    batch = (x, torch.full_like(x, 7))
    optimizer = torch.optim.Adam([tuned.prompt], lr=0.1)
    with torch.no_grad():
        first = float(causal_lm_loss(tuned, batch))
    for _ in range(40):
        optimizer.zero_grad()
        causal_lm_loss(tuned, batch).backward()
        optimizer.step()
    with torch.no_grad():
        assert float(causal_lm_loss(tuned, batch)) < 0.25 * first
    assert [n for n, p in tuned.named_parameters() if p.requires_grad] == [
        "base.embed_tokens.prompt"
    ]


def test_a_saved_prompt_loads_onto_its_base_and_refuses_another(tmp_path):
    model = PromptTuned(base(4), random_prompt(base(4), 5)).eval()
    x = ids(6)
    expected = model(x)
    save_adapter(model, tmp_path, {"num_tokens": 5}, method="prompt")
    loaded, info = load_adapter(base(4), tmp_path)
    assert isinstance(loaded, PromptTuned) and info["wrapped"] == [""]
    torch.testing.assert_close(loaded.eval()(x), expected)
    with pytest.raises(UserError, match="different base model"):
        load_adapter(base(5), tmp_path)

    plain = remove_adapters(loaded)  # what a run saves: the base, with the prompt beside it
    assert type(plain.embed_tokens) is torch.nn.Embedding
    save_model(plain, tmp_path)
    rebuilt = load_model(tmp_path)
    assert isinstance(rebuilt, PromptTuned)
    torch.testing.assert_close(rebuilt(x), expected)


def test_what_prompt_tuning_cannot_take_is_a_clear_error():
    from lmforge.models.bert import Bert, BertConfig

    with pytest.raises(UserError, match="decoder \\(gpt\\) models, not bert"):
        PromptTuned(
            Bert(BertConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2)),
            torch.zeros(2, 32),
        )
    model = base()
    with pytest.raises(UserError, match="no room"):
        PromptTuned(model, torch.zeros(model.config.max_seq_len, 32))
    tuned = PromptTuned(base(), torch.zeros(10, 32))
    with pytest.raises(UserError, match="exceed the model's context"):
        tuned(ids(0, (1, tuned.config.max_seq_len + 1)))
    too_long = [1] * tuned.config.max_seq_len
    with pytest.raises(UserError, match="does not fit the model's context"):
        Engine(tuned).generate_ids([too_long], SamplingParams(max_new_tokens=1))


def test_a_text_initialised_prompt_uses_the_tokenizer():
    tokenizer = train_bpe(["the cat sat on the mat"] * 5, 270, show_progress=False)
    model = tiny_gpt("llama-tiny", tokenizer.vocab_size)
    prompt = initial_prompt(model, 3, "text", "the cat", tokenizer)
    first = tokenizer.encode("the cat")[0]
    torch.testing.assert_close(prompt[0], model.embed_tokens.weight[first])
