"""Houlsby bottleneck adapters (peft/bottleneck.py) on every family, the adapter files of every kind
(peft/adapter_files.py), and for every fine-tuning method (peft/methods.py) the exact set of
parameters that receive gradients."""

import pytest
import torch
import torch.nn.functional as F
from helpers import FAMILY_SHAPE, tiny_gpt
from torch import nn

from lmforge.errors import UserError
from lmforge.infer import Engine, SamplingParams
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.heads import SequenceClassifier
from lmforge.models.loading import load_model, model_state, save_model
from lmforge.models.t5 import T5, T5Config
from lmforge.peft.adapter_files import (
    base_name,
    load_adapter,
    remove_adapters,
    save_adapter,
    split_state,
    wrapper_paths,
)
from lmforge.peft.bottleneck import Bottleneck, WithAdapter, adapter_targets, apply_adapters
from lmforge.peft.lora import LoRALinear
from lmforge.peft.methods import METHODS
from lmforge.peft.nf4 import quantize_linears
from lmforge.recipes.finetune import build_config
from lmforge.train.losses import causal_lm_loss, classification_loss

VOCAB = 61


def tiny(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if family == "gpt":
        return tiny_gpt("llama-tiny", VOCAB, seed=seed)
    if family == "gpt2":
        return tiny_gpt("gpt2-tiny", VOCAB, seed=seed)
    if family == "bert":
        return Bert(BertConfig(vocab_size=VOCAB, dropout=0.0, **FAMILY_SHAPE))
    return T5(T5Config(vocab_size=VOCAB, **FAMILY_SHAPE))


def ids(seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model, T5):
        return model(x, decoder_input_ids=x[:, :5])
    return model(x)


def trained(model: nn.Module) -> nn.Module:
    """Give every adapter a non-zero up-projection (and every LoRA a non-zero B), as training
    would, so that gradients reach what comes before them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Bottleneck):
                module.up.weight.normal_(std=0.1)
                module.up.bias.normal_(std=0.1)
            elif isinstance(module, LoRALinear):
                module.lora_B.normal_(std=0.1)
    return model


@pytest.mark.parametrize("family", ["gpt", "gpt2", "bert", "t5"])
def test_fresh_adapters_leave_every_family_bit_identical(family):
    model, x = tiny(family).eval(), ids()
    before = outputs(model, x)
    names = apply_adapters(model, adapter_targets(model), bottleneck=8)
    per_layer = {"gpt": 2, "gpt2": 2, "bert": 2}.get(family)
    if per_layer:
        assert len(names) == per_layer * model.config.num_layers
    else:  # T5: encoder layers 2 (attention, MLP), decoder layers 3 (+ cross-attention)
        assert len(names) == 2 * model.config.num_layers + 3 * model.config.num_decoder_layers
    torch.testing.assert_close(outputs(model, x), before, atol=0, rtol=0)
    trained(model)
    assert not torch.allclose(outputs(model, x), before)


def test_a_bottleneck_is_the_papers_module():
    torch.manual_seed(0)
    adapter = Bottleneck(6, 3)
    h = torch.randn(4, 6)
    assert torch.equal(adapter(h), h)  # near-identity initialisation: exactly the identity
    trained(adapter)
    d, u = adapter.down, adapter.up
    expected = h + F.gelu(h @ d.weight.t() + d.bias) @ u.weight.t() + u.bias
    torch.testing.assert_close(adapter(h), expected)
    assert sum(p.numel() for p in adapter.parameters()) == 2 * 3 * 6 + 6 + 3  # 2md + d + m


def test_adapters_follow_attention_and_mlp_of_the_chosen_layers():
    model = tiny("gpt")
    assert adapter_targets(model, [1]) == ["layers.1.attn.o_proj", "layers.1.mlp"]
    apply_adapters(model, adapter_targets(model, [1]), bottleneck=4)
    assert isinstance(model.layers[1].attn.o_proj, WithAdapter)
    assert isinstance(model.layers[1].mlp, WithAdapter)
    assert type(model.layers[0].attn.o_proj) is nn.Linear
    other = tiny("gpt")
    with pytest.raises(UserError, match=r"adapter.layers \[7\] are not layers"):
        adapter_targets(other, [1, 7])
    with pytest.raises(UserError, match="bottleneck"):
        apply_adapters(other, adapter_targets(other), bottleneck=0)
    assert not wrapper_paths(other)  # nothing half-applied


def test_an_adapted_model_decodes_like_its_full_forward_pass():
    model, x = tiny("gpt", 3), ids(3)
    apply_adapters(model, adapter_targets(model), bottleneck=8)
    trained(model).eval()
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    tokens = Engine(model).generate_ids([x[0].tolist()], greedy)[0]
    sequence = x[0].tolist()
    with torch.no_grad():
        for _ in range(6):  # the greedy continuation, one full forward pass per token
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    assert tokens == sequence[x.size(1) :]


def test_adapter_files_hold_the_adapters_and_trained_norms_and_load_onto_their_base(tmp_path):
    model, x = tiny("gpt", 4), ids(4)
    apply_adapters(model, adapter_targets(model), bottleneck=8)
    trained(model).eval()
    with torch.no_grad():
        model.layers[0].attn_norm.weight.mul_(1.5)  # a trained norm
    expected = model(x)
    save_adapter(model, tmp_path, {"bottleneck": 8, "train_norms": True}, method="adapter")
    adapters, base = split_state(model)
    assert adapters and all(".adapter." in n for n in adapters)
    assert set(base) == set(model_state(tiny("gpt")))  # the base, as the plain model names it

    fresh = tiny("gpt", 4)
    adapted, info = load_adapter(fresh, tmp_path)
    assert adapted is fresh and "layers.0.attn_norm.weight" in info["carried"]
    torch.testing.assert_close(fresh.eval()(x), expected)
    plain = remove_adapters(fresh)
    assert set(model_state(plain)) == set(base)

    other = tiny("gpt", 5)
    with pytest.raises(UserError, match="different base model"):
        load_adapter(other, tmp_path)
    assert not wrapper_paths(other)
    with pytest.raises(UserError, match="already carries an adapter"):
        load_adapter(fresh_with_adapters(), tmp_path)


def fresh_with_adapters() -> nn.Module:
    model = tiny("gpt", 4)
    apply_adapters(model, adapter_targets(model), bottleneck=8)
    return model


def test_a_model_directory_with_an_adapter_beside_its_weights_loads_with_it(tmp_path):
    """What a fine-tuning run saves: the base weights, and the adapter that `load_model`
    rebuilds on them."""
    model, x = tiny("gpt", 6), ids(6)
    apply_adapters(model, adapter_targets(model), bottleneck=8)
    trained(model).eval()
    expected = model(x)
    save_adapter(model, tmp_path, {"bottleneck": 8, "train_norms": False}, method="adapter")
    save_model(remove_adapters(model), tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded.layers[0].mlp, WithAdapter)
    torch.testing.assert_close(loaded(x), expected)


def test_base_names_leave_out_every_wrapper():
    wrappers = {"", "base.embed_tokens", "base.layers.0.attn.q_proj"}
    assert base_name("base.embed_tokens.base.weight", wrappers) == "embed_tokens.weight"
    assert base_name("base.embed_tokens.prompt", wrappers) is None
    assert base_name("base.layers.0.attn.q_proj.lora_A", wrappers) is None
    assert base_name("layers.0.attn.q_proj.base.weight", {"layers.0.attn.q_proj"}) == (
        "layers.0.attn.q_proj.weight"
    )


# ------------------------------------------------------- every method: what receives gradients
EXPECTED = {
    "full": lambda n: True,
    "feature": lambda n: n.startswith("head."),
    "lora": lambda n: n.startswith("head.") or ".lora_" in n,
    "qlora": lambda n: n.startswith("head.") or ".lora_" in n,
    "adapter": lambda n: n.startswith("head.") or ".adapter." in n or "norm." in n,
    "prompt": lambda n: n.startswith("head.") or n.endswith(".prompt"),
}
"""Method -> which parameters of a classifier on a tiny Llama it trains, by name."""


def prepared(method: str, head: bool, seed: int = 0, **sections) -> tuple[nn.Module, nn.Module]:
    """(the task model prepared by `method`, the plain backbone it started from)."""
    backbone = tiny("gpt", seed)
    if method == "qlora":  # the recipe loads it quantized (peft/qlora.py); the same layers
        quantize_linears(backbone)
    overrides = {"lora": {"targets": ["q_proj", "v_proj"], "rank": 2}, **sections}
    cfg = build_config({"method": method, "model": "x", **overrides})
    model = SequenceClassifier(backbone, 2) if head else backbone
    return METHODS[method].prepare(model, cfg, None), backbone


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_exactly_its_parameters(method):
    model, _ = prepared(method, head=True)
    trained(model).train()
    x = ids(1, (3, 8))
    classification_loss(model, (x, torch.ones_like(x), torch.tensor([0, 1, 1]))).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {n for n, _ in model.named_parameters() if EXPECTED[method](n)}
    assert with_grad == trainable == expected
    assert all(bool(model.get_parameter(n).grad.abs().sum() > 0) for n in with_grad)


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "adapter", "prompt"])
def test_each_method_prepares_a_language_model_without_a_head(method):
    """A task without a head (sft, text2text on a decoder): the causal-LM loss trains the same
    kinds of parameters; only prompt tuning wraps the model itself."""
    model, backbone = prepared(method, head=False)
    assert (model is backbone) == (method != "prompt")
    trained(model)
    x = ids(2, (2, 10))
    causal_lm_loss(model, (x[:, :-1], x[:, 1:])).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if EXPECTED[method](n)}
    assert with_grad == trainable == expected
    assert all(bool(model.get_parameter(n).grad.abs().sum() > 0) for n in with_grad)


def test_the_feature_method_needs_a_head():
    with pytest.raises(UserError, match="feature method needs a task with a head"):
        prepared("feature", head=False)
