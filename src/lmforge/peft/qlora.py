"""QLoRA's frozen base (Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs",
section 3): a model whose linear layers are stored in 4-bit NF4 (peft/nf4.py), quantized while its
weights are read, so that the model is never in memory in full precision at once.

`load_quantized` builds the model on the meta device (shapes, no memory), then reads the weights
one tensor at a time, from a safetensors file (an lmforge model directory, `iter_safetensors`) or a
GGUF file (dequantized tensor by tensor, `iter_state_from_gguf`), and for each:
- a linear layer's weight becomes an `NF4Linear` at once and its fp32 copy is dropped: the peak is
  the 4-bit model plus one fp32 tensor (the largest is often the embedding table);
- anything else (embeddings, norms, biases, an output layer) is kept as read, in fp32. As QLoRA
  does, the output layer (`lm_head`) is not quantized, nor a layer tied to the embeddings.
Before it is quantized, each tensor's signature (name, dtype, shape, a strided sample of values:
peft/adapter_files.py) is kept in the model's `source_signatures`: the fingerprint of the weights
the user gave, so the trained adapter also loads onto that plain model (`convert --adapter`,
`generate --adapter`).

A Hugging Face directory is read whole (its converters rename and split tensors over the whole
state dict), then quantized: the fp32 model is in memory once, briefly; convert it to an lmforge
directory first (`lmforge convert`) to avoid that.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.models import registry
from lmforge.models.loading import (
    WEIGHTS_FILE,
    check_vocab,
    finish_loading,
    iter_safetensors,
    model_state,
    read_config,
    tied_names,
)
from lmforge.peft.adapter_files import tensor_signature
from lmforge.peft.nf4 import NF4Linear, quantizable, quantize_linears

SKIP = ("lm_head",)
"""Linear layers left in full precision, by name ending."""


def load_quantized(
    source: str | Path, double_quant: bool = True, compute_dtype: torch.dtype = torch.float32
):
    """(model with NF4 linear layers, frozen, in eval mode; tokenizer or None) from any format
    `lmforge convert` reads. The model's `source_signatures` fingerprint the weights as read."""
    from lmforge.recipes.convert import detect_format

    source = Path(source)
    fmt = detect_format(source)
    if fmt == "hf":  # read whole, then quantized (see the module docstring)
        from lmforge.interop.hf import load_hf

        model, tokenizer = load_hf(source)
        signatures = {n: tensor_signature(n, t) for n, t in model_state(model).items()}
        quantize_linears(model, SKIP, double_quant)
    elif fmt == "gguf":
        from lmforge.interop.gguf import config_from_gguf, iter_state_from_gguf
        from lmforge.interop.gguf_read import GGUFFile
        from lmforge.interop.gguf_tokenizer import tokenizer_from_gguf

        f = GGUFFile(source)
        cfg = config_from_gguf(f)
        model = _meta_model(cfg)
        tensors = iter_state_from_gguf(f, cfg, model.state_dict())
        signatures = fill_quantized(model, tensors, source, double_quant, compute_dtype)
        tokenizer = tokenizer_from_gguf(f)
    else:
        from lmforge.tokenizer import Tokenizer

        model = _meta_model(read_config(source))
        tensors = iter_safetensors(source / WEIGHTS_FILE)
        signatures = fill_quantized(model, tensors, source, double_quant, compute_dtype)
        has_tokenizer = (source / "tokenizer.json").is_file()
        tokenizer = Tokenizer.from_file(source) if has_tokenizer else None
    if tokenizer is not None:
        check_vocab(tokenizer, model.config, source)
    model.source_signatures = signatures
    return model.requires_grad_(False).eval(), tokenizer


def _meta_model(cfg) -> nn.Module:
    with torch.device("meta"):  # shapes only: every tensor comes from the file
        return registry.build_model(cfg)


def fill_quantized(
    model: nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    source: Path,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, bytes]:
    """Put the (name, tensor) pairs into `model` (built on the meta device), each linear weight
    NF4 can hold quantized as it arrives (in place); return each tensor's signature as read."""
    layers = {n for n, m in model.named_modules() if quantizable(model, n, m, SKIP)}
    expected = {name: (t.shape, t.dtype) for name, t in model.state_dict().items()}
    tied = tied_names(model)
    signatures: dict[str, bytes] = {}
    for name, tensor in tensors:
        if name not in expected or name in tied:
            raise UserError(f"{source} holds a tensor the model has no place for: {name}")
        shape, dtype = expected[name]
        if tensor.shape != shape:
            raise UserError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(shape)}"
            )
        tensor = tensor.to(dtype)  # as `load_model` would hold it (fp32)
        signatures[name] = tensor_signature(name, tensor)
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if module_name in layers and attr == "weight":  # quantized now; the fp32 copy goes
            # the bias stays on the meta device until its own tensor comes
            nf4 = NF4Linear.from_weight(tensor, module.bias, double_quant, compute_dtype)
            parent_name, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, nf4)
        elif attr in module._parameters:
            setattr(module, attr, nn.Parameter(tensor, requires_grad=False))
        else:
            setattr(module, attr, tensor)  # a buffer
    missing = sorted(set(expected) - set(signatures) - tied)
    if missing:
        raise UserError(f"{source} lacks the tensor {missing[0]}; it is not a complete model")
    finish_loading(model)  # rotary tables off the meta device, tied embeddings
    return signatures
