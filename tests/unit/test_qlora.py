"""QLoRA's base (peft/qlora.py): linear layers quantized to NF4 while the weights are read (from an
lmforge directory, a GGUF file, a Hugging Face directory), never all held in fp32; the fingerprint
of the weights as read, so the adapter loads onto the plain base; honest sizes and counts."""

import pytest
import torch
from helpers import tiny_gpt
from torch import nn

from lmforge.errors import UserError
from lmforge.interop.gguf import load_gguf, save_gguf
from lmforge.models.heads import count_parameters
from lmforge.models.loading import iter_safetensors, load_model, model_state, save_model
from lmforge.peft import qlora
from lmforge.peft.adapter_files import (
    fingerprint,
    load_adapter,
    read_adapter_info,
    save_adapter,
)
from lmforge.peft.lora import apply_lora, lora_layers
from lmforge.peft.methods import merge_and_dequantize
from lmforge.peft.nf4 import NF4Linear, count_weights, weight_bytes
from lmforge.peft.qlora import load_quantized
from lmforge.tokenizer import train_bpe
from lmforge.train.checkpoint import trained_state

CORPUS = "to be or not to be that is the question whether tis nobler in the mind " * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe([CORPUS], vocab_size=300, show_progress=False)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    """A tiny Llama (7 linear layers a block, tied embeddings) saved as an lmforge directory."""
    model = tiny_gpt("llama-tiny", tokenizer.vocab_size, seed=0, hidden_size=64)
    return save_model(model, tmp_path_factory.mktemp("base") / "llama", tokenizer)


def ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(seed))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


def test_an_lmforge_directory_loads_quantized_and_close(base_dir):
    plain = load_model(base_dir)
    model, tokenizer = load_quantized(base_dir)
    linears = [n for n, m in model.named_modules() if isinstance(m, NF4Linear)]
    assert len(linears) == 7 * model.config.num_layers  # q k v o, gate up down
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed_tokens.weight
    assert not any(p.requires_grad for p in model.parameters())
    x = ids(model.config.vocab_size)
    assert relative_error(model(x), plain(x)) < 0.2  # NF4's ~10% weight error, end to end
    assert tokenizer is not None and tokenizer.vocab_size == plain.config.vocab_size
    # the fingerprint is of the weights as read: the plain model's
    assert fingerprint(model_state(plain)) == fingerprint_of(model)
    assert count_weights(model)[1] == count_parameters(plain)[1]
    stored, fp32 = weight_bytes(model)
    assert fp32 == 4 * count_parameters(plain)[1] and stored < 0.4 * fp32


def fingerprint_of(model: nn.Module) -> str:
    from lmforge.peft.adapter_files import combine

    return combine(model.source_signatures)


def test_no_linear_layer_is_ever_held_in_full_precision_while_loading(base_dir, monkeypatch):
    """Each weight is quantized as it arrives: at every step of the stream, no linear layer that
    NF4 holds has a full-precision weight in the model."""
    seen = []

    def watched(path):
        for name, tensor in iter_safetensors(path):
            yield name, tensor
            seen.append(name)
            model = watched.model
            dense = [
                n
                for n, m in model.named_modules()
                if type(m) is nn.Linear and n != "lm_head" and not m.weight.is_meta
            ]
            assert not dense, (name, dense)

    original = qlora.fill_quantized

    def fill(model, tensors, *args, **kwargs):
        watched.model = model
        return original(model, tensors, *args, **kwargs)

    monkeypatch.setattr(qlora, "iter_safetensors", watched)
    monkeypatch.setattr(qlora, "fill_quantized", fill)
    load_quantized(base_dir)
    assert len(seen) == len(model_state(load_model(base_dir)))


def test_a_gguf_file_loads_quantized_with_the_plain_models_fingerprint(tmp_path, base_dir):
    plain, tokenizer = load_gguf(
        save_gguf(load_model(base_dir), _tok(base_dir), tmp_path / "m.gguf")
    )
    model, _ = load_quantized(tmp_path / "m.gguf", double_quant=False)
    layer = model.layers[0].attn.q_proj
    assert isinstance(layer, NF4Linear) and not layer.double_quant and "absmax" in layer.state()
    x = ids(model.config.vocab_size, 1)
    assert relative_error(model(x), plain(x)) < 0.2
    assert fingerprint_of(model) == fingerprint(model_state(plain))


def _tok(directory):
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.from_file(directory)


def test_a_qlora_adapter_loads_onto_the_plain_base_and_merges(tmp_path, base_dir):
    model, _ = load_quantized(base_dir)
    apply_lora(model, ["q_proj", "v_proj"], rank=2, alpha=4)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(std=0.05)
    x = ids(model.config.vocab_size, 2)
    adapted = model(x).detach()
    stored = trained_state(model)[0]  # a training checkpoint: the adapters only
    assert stored and all(".lora_" in name for name in stored)
    save_adapter(model, tmp_path, {"rank": 2, "alpha": 4}, method="qlora")
    assert read_adapter_info(tmp_path)["method"] == "qlora"

    plain = load_model(base_dir)
    on_plain, _ = load_adapter(plain, tmp_path)  # fingerprint of the original weights: accepted
    assert relative_error(on_plain(x), adapted) < 0.2  # the plain base, not the NF4-rounded one
    other = tiny_gpt("llama-tiny", plain.config.vocab_size, seed=1, hidden_size=64)
    with pytest.raises(UserError, match="different base model"):
        load_adapter(other, tmp_path)

    merged = merge_and_dequantize(model)  # what a qlora run saves: plain and exact
    assert not any(isinstance(m, NF4Linear) for m in merged.modules())
    torch.testing.assert_close(merged(x), adapted, atol=1e-5, rtol=1e-5)
    assert set(model_state(merged)) == set(model_state(load_model(base_dir)))


def test_a_hugging_face_directory_loads_quantized(tmp_path, base_dir):
    from lmforge.interop.hf import save_hf

    plain = load_model(base_dir)
    save_hf(plain, _tok(base_dir), tmp_path / "hf")
    model, _ = load_quantized(tmp_path / "hf")
    assert isinstance(model.layers[1].mlp.down_proj, NF4Linear)
    assert fingerprint_of(model) == fingerprint(model_state(plain))


def test_a_damaged_source_is_a_clear_error(tmp_path, base_dir):
    bad = tmp_path / "bad"
    save_model(load_model(base_dir), bad)
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_quantized(bad)
    with pytest.raises(UserError, match="not found"):
        load_quantized(tmp_path / "nothing")


def test_training_through_nf4_keeps_no_full_precision_weight_for_the_backward_pass():
    """x's gradient through an NF4 layer is that through its dequantized weight, and autograd saves
    no weight-sized tensor: the weight is dequantized again in the backward pass."""
    torch.manual_seed(0)
    layer = NF4Linear(nn.Linear(128, 64))
    dense = layer.to_linear()
    x = torch.randn(3, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        y = layer(x)
    assert all(n < 128 * 64 for n in saved)  # F.linear would save the (64, 128) weight
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    x2 = x.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(dense(x2).square().sum(), x2)
    torch.testing.assert_close(grad, expected)
