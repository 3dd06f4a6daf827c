"""LoRA (peft/lora.py): a fresh adapter changes nothing, merged equals unmerged, only the adapters
train, targets by name pattern, and clear errors."""

import pytest
import torch
from helpers import tiny_gpt
from safetensors.torch import load_file
from torch import nn

from lmforge.errors import UserError
from lmforge.infer import Engine, SamplingParams
from lmforge.models.loading import model_state
from lmforge.peft.adapter_files import fingerprint, load_adapter, save_adapter
from lmforge.peft.lora import LoRALinear, apply_lora, lora_layers, matches, merge_lora
from lmforge.train.checkpoint import load_checkpoint, save_checkpoint

VOCAB = 61


def model_and_ids(seed: int = 0):
    model = tiny_gpt("llama-tiny", VOCAB, seed=seed)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(seed))
    return model, ids


def trained(model: nn.Module) -> nn.Module:
    """Give every adapter a non-zero B, as training would."""
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(std=0.05)
    return model


def test_a_fresh_adapter_leaves_the_logits_unchanged():
    model, ids = model_and_ids()
    before = model(ids)
    names = apply_lora(model, ["q_proj", "v_proj", "down_proj"], rank=4, alpha=8)
    assert len(names) == 3 * model.config.num_layers
    torch.testing.assert_close(model(ids), before, atol=0, rtol=0)


def test_merged_equals_unmerged_and_unmerge_restores_the_base():
    model, ids = model_and_ids(1)
    base_weight = model.layers[0].attn.q_proj.weight.clone()
    apply_lora(model, ["*_proj"], rank=4, alpha=8, dropout=0.1)
    trained(model).eval()  # no dropout
    unmerged = model(ids)
    assert not torch.allclose(unmerged, tiny_gpt("llama-tiny", VOCAB, seed=1)(ids))
    for layer in lora_layers(model):
        layer.merge()
    torch.testing.assert_close(model(ids), unmerged, atol=1e-5, rtol=1e-5)
    for layer in lora_layers(model):
        layer.unmerge()
    torch.testing.assert_close(model.layers[0].attn.q_proj.weight, base_weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(ids), unmerged, atol=1e-5, rtol=1e-5)


def test_lora_update_is_the_papers_equation():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 5), rank=2, alpha=3.0)
    layer.lora_B.data.normal_()
    x = torch.randn(4, 6)
    w0, b = layer.base.weight, layer.base.bias
    expected = x @ w0.t() + b + (3.0 / 2) * (x @ layer.lora_A.t() @ layer.lora_B.t())
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 1.5 * layer.lora_B @ layer.lora_A)


def test_only_the_adapters_receive_gradients():
    model, ids = model_and_ids(2)
    model.requires_grad_(False)
    apply_lora(model, ["q_proj", "v_proj"], rank=2, alpha=4)
    trained(model)
    model(ids).logsumexp(-1).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n in trainable if ".lora_" in n}
    assert with_grad == trainable == expected
    assert len(expected) == 2 * 2 * model.config.num_layers  # A and B of q and v in each layer
    lora = sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert lora < 0.2 * sum(p.numel() for p in model.parameters())


def test_target_patterns_match_names_and_their_trailing_components():
    assert matches("layers.0.attn.q_proj", ["q_proj"])
    assert matches("layers.0.attn.q_proj", ["attn.*_proj"])
    assert matches("layers.1.mlp.up_proj", ["layers.1.*"])
    assert not matches("layers.0.attn.q_proj", ["k_proj", "layers.1.*"])
    assert not matches("layers.0.attn.q_proj", ["proj"])
    model, _ = model_and_ids()
    names = apply_lora(model, ["layers.1.mlp.*"], rank=2, alpha=2)
    assert names == ["layers.1.mlp.gate_proj", "layers.1.mlp.up_proj", "layers.1.mlp.down_proj"]


def test_targets_that_match_nothing_or_tied_weights_are_clear_errors():
    model, _ = model_and_ids()
    with pytest.raises(UserError, match="match no linear layer.*q_proj"):
        apply_lora(model, ["query"], rank=2, alpha=2)
    with pytest.raises(UserError, match="tied"):
        apply_lora(model, ["lm_head"], rank=2, alpha=2)
    with pytest.raises(UserError, match="rank"):
        apply_lora(model, ["q_proj"], rank=0, alpha=2)
    assert not lora_layers(model)  # nothing was half-applied


def test_merge_lora_gives_a_plain_model_with_the_same_outputs():
    model, ids = model_and_ids(3)
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], rank=4, alpha=8)
    trained(model).eval()
    expected = model(ids)
    merge_lora(model)
    assert not lora_layers(model)
    assert all(type(m.attn.q_proj) is nn.Linear for m in model.layers)
    assert set(model.state_dict()) == set(tiny_gpt("llama-tiny", VOCAB).state_dict())
    torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)


def test_an_adapted_model_decodes_like_its_full_forward_pass():
    model, ids = model_and_ids(4)
    apply_lora(model, ["q_proj", "v_proj", "up_proj"], rank=4, alpha=8)
    trained(model).eval()
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    tokens = Engine(model).generate_ids([ids[0].tolist()], greedy)[0]
    sequence = ids[0].tolist()
    with torch.no_grad():
        for _ in range(6):  # the greedy continuation, one full forward pass per token
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    assert tokens == sequence[ids.size(1) :]


def test_a_lora_checkpoint_holds_only_the_adapters_and_restores_them(tmp_path):
    def prepared():
        model, ids = model_and_ids(5)
        model.requires_grad_(False)
        apply_lora(model, ["q_proj", "v_proj"], rank=2, alpha=4)
        return model, ids

    model, ids = prepared()
    trained(model).eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    rng = {"cpu": torch.get_rng_state()}
    path = save_checkpoint(tmp_path, 3, model, optimizer, {}, rng)
    stored = load_file(path / "model.safetensors")
    assert stored and all(".lora_" in name for name in stored)
    fresh, _ = prepared()  # the base again, fresh adapters (B = 0)
    state, _ = load_checkpoint(path, fresh, None)
    assert state["step"] == 3
    torch.testing.assert_close(fresh.eval()(ids), model(ids))


def test_a_saved_adapter_loads_onto_its_base_and_refuses_another(tmp_path):
    model, ids = model_and_ids(6)
    apply_lora(model, ["q_proj", "up_proj"], rank=2, alpha=4)
    trained(model).eval()
    expected = model(ids)
    save_adapter(model, tmp_path, {"rank": 2, "alpha": 4, "base_model": "seed 6"})
    assert set(load_file(tmp_path / "adapter.safetensors")) == {
        n for n in model.state_dict() if ".lora_" in n
    }
    base, _ = model_and_ids(6)
    adapted, info = load_adapter(base, tmp_path)
    assert adapted is base  # wrapped in place
    assert info["wrapped"] == [n for n, m in base.named_modules() if isinstance(m, LoRALinear)]
    torch.testing.assert_close(base.eval()(ids), expected)

    other, _ = model_and_ids(7)  # same shape, other weights
    with pytest.raises(UserError, match="different base model"):
        load_adapter(other, tmp_path)
    assert not lora_layers(other)
    with pytest.raises(UserError, match="no adapter"):
        load_adapter(other, tmp_path / "missing")
    (tmp_path / "adapter.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="not a valid adapter config"):
        load_adapter(other, tmp_path)


def test_the_fingerprint_sees_a_change_anywhere_a_training_step_makes_one():
    model, _ = model_and_ids(8)
    before = fingerprint(model_state(model))
    with torch.no_grad():
        model.layers[1].mlp.down_proj.weight.add_(1e-3)
    assert fingerprint(model_state(model)) != before
