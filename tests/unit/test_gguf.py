"""GGUF import/export: block dequantization, rotary layout, round trips, metadata, bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

import lmforge.interop.gguf as gguf_mod
from lmforge.errors import UserError
from lmforge.interop.gguf import load_gguf, read_gguf_config, save_gguf
from lmforge.interop.gguf_layout import from_interleaved, to_interleaved
from lmforge.interop.gguf_read import GGUFFile
from lmforge.interop.gguf_tokenizer import tokenizer_from_ggml
from lmforge.models import GPT
from lmforge.models.gpt import GPTConfig
from lmforge.nn.rope import RotaryEmbedding, apply_rotary
from lmforge.tokenizer import train_bpe, train_char

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak. 1234 pounds, 56 shillings!\n\tYou are all resolved rather to die?\n"
) * 20
TEXTS = [
    "Hello world",
    "  two  spaces, 2024 digits and 1,234.5\n\nnew lines\r\n",
    "unicode: héllo ünïcode 日本語 🙂",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA = dict(
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=96,
    max_seq_len=32,
    position="rope",
    rope_theta=500.0,
    norm="rmsnorm",
    norm_eps=1e-6,
    mlp="swiglu",
    bias=False,
)
GPT2 = dict(hidden_size=64, num_layers=2, num_heads=4, max_seq_len=32, mlp="gelu_tanh")


@pytest.fixture(scope="module")
def bpe():
    tokenizer = train_bpe([CORPUS], vocab_size=300, show_progress=False)
    tokenizer.chat_template = CHATML
    return tokenizer


def make_model(vocab_size: int, seed: int = 0, **fields) -> GPT:
    """A small model with every parameter random (biases and norm weights included)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, **fields)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if name.endswith("bias") else 1.0))
    return model


def logits(model: GPT, vocab_size: int) -> torch.Tensor:
    ids = torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids)


# ----------------------------------------------------------------------------- block formats
def _f16_bytes(x: float) -> bytes:
    return np.float16(x).tobytes()


def _reference_block(qtype: QT, block: bytes) -> list[float]:
    """One block dequantized value by value, as ggml-quants.c spells it."""
    d = float(np.frombuffer(block[0:2], np.float16)[0])
    if qtype == QT.Q8_0:
        return [d * q for q in struct.unpack("32b", block[2:34])]
    if qtype == QT.Q4_0:
        qs = block[2:18]
        return [d * ((qs[j] & 0xF) - 8) for j in range(16)] + [
            d * ((qs[j] >> 4) - 8) for j in range(16)
        ]
    m = float(np.frombuffer(block[2:4], np.float16)[0])  # Q4_1
    qs = block[4:20]
    return [d * (qs[j] & 0xF) + m for j in range(16)] + [d * (qs[j] >> 4) + m for j in range(16)]


def _random_block(qtype: QT, rng: np.random.Generator) -> bytes:
    d = _f16_bytes(rng.uniform(-0.1, 0.1))
    if qtype == QT.Q8_0:
        return d + rng.integers(-128, 128, 32, dtype=np.int8).tobytes()
    qs = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    return d + qs if qtype == QT.Q4_0 else d + _f16_bytes(rng.uniform(-1, 1)) + qs


def _write_raw(path: Path, tensors: dict[str, tuple[np.ndarray, QT | None]]) -> None:
    writer = gguf.GGUFWriter(path, "llama")
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1])
def test_dequantize_matches_block_reference(tmp_path, qtype):
    rng = np.random.default_rng(0)
    rows, blocks_per_row = 3, 2  # a (3, 64) matrix
    blocks = [[_random_block(qtype, rng) for _ in range(blocks_per_row)] for _ in range(rows)]
    raw = np.frombuffer(b"".join(b"".join(r) for r in blocks), np.uint8).reshape(rows, -1)
    expected = np.array([sum((_reference_block(qtype, b) for b in r), []) for r in blocks])
    _write_raw(tmp_path / "q.gguf", {"w": (raw, qtype)})
    f = GGUFFile(tmp_path / "q.gguf")
    got = f.tensor("w")
    assert f.shape("w") == (3, 64) and got.shape == (3, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    t = f.tensors["w"]  # the gguf package's own dequantization agrees bit for bit
    np.testing.assert_array_equal(got, gguf.quants.dequantize(t.data, t.tensor_type))


def test_dequantize_float_types(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)  # truncated to bf16
    _write_raw(
        tmp_path / "f.gguf",
        {"f32": (x, None), "f16": (x.astype(np.float16), None), "bf16": (bf16, QT.BF16)},
    )
    f = GGUFFile(tmp_path / "f.gguf")
    np.testing.assert_array_equal(f.tensor("f32"), x)
    np.testing.assert_array_equal(f.tensor("f16"), x.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(f.tensor("bf16"), x, rtol=2**-7)


# ---------------------------------------------------------------------------- rotary layout
def test_permutation_is_llama_cpp_permute_and_round_trips():
    w = np.random.default_rng(0).standard_normal((4 * 8, 5)).astype(np.float32)
    # convert_hf_to_gguf.py, LlamaModel.permute
    llama_cpp = w.reshape(4, 2, w.shape[0] // 4 // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(to_interleaved(w, 4), llama_cpp)
    np.testing.assert_array_equal(from_interleaved(to_interleaved(w, 4), 4), w)
    b = w[:, 0].copy()  # a bias permutes like a one-column weight
    np.testing.assert_array_equal(from_interleaved(to_interleaved(b, 4), 4), b)


def test_interleaved_rotation_of_permuted_rows_equals_rotate_half():
    """llama.cpp rotates pairs (2i, 2i+1); on permuted rows that equals our rotate-half rotation."""
    H, D, T, theta = 2, 8, 5, 100.0
    q = torch.randn(1, H, T, D)  # (B, H, T, D), rotate-half order
    cos, sin = RotaryEmbedding(D, T, theta)(torch.arange(T))
    ours = apply_rotary(q, cos, sin)
    rows = q.permute(0, 2, 1, 3).reshape(T, H * D).T.numpy()  # (H*D, T): channel rows
    x = torch.from_numpy(to_interleaved(rows, H)).T.reshape(T, H, D // 2, 2)  # pairs (2i, 2i+1)
    angle = torch.arange(T)[:, None] * theta ** (-torch.arange(0, D, 2) / D)  # (T, D/2)
    c, s = angle.cos()[:, None], angle.sin()[:, None]
    x0, x1 = x[..., 0], x[..., 1]
    rotated = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).reshape(T, H * D)
    back = from_interleaved(rotated.T.contiguous().numpy(), H)  # (H*D, T)
    expected = torch.from_numpy(back).T.reshape(T, H, D).permute(1, 0, 2)[None]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize(
    "fields",
    [
        dict(LLAMA),
        dict(LLAMA, tie_embeddings=False, num_kv_heads=1, bias=True),
        dict(LLAMA, rope_scaling={"rope_type": "linear", "factor": 2.0}),
        dict(
            LLAMA,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        dict(GPT2),
        dict(GPT2, bias=False, mlp="gelu", tie_embeddings=False, num_kv_heads=2),
    ],
    ids=["llama", "llama-untied-mqa-bias", "rope-linear", "rope-llama3", "gpt2", "gpt2-nobias"],
)
def test_f32_round_trip_is_exact(tmp_path, bpe, fields):
    model = make_model(bpe.vocab_size, **fields)
    path = save_gguf(model, bpe, tmp_path / "m.gguf")
    loaded, tokenizer = load_gguf(path)
    assert loaded.config == model.config
    assert not loaded.training and loaded.lm_head.weight.dtype == torch.float32
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert (loaded.lm_head.weight is loaded.embed_tokens.weight) == fields.get(
        "tie_embeddings", True
    )
    torch.testing.assert_close(
        logits(loaded, bpe.vocab_size), logits(model, bpe.vocab_size), atol=1e-5, rtol=0
    )
    assert read_gguf_config(path) == model.config


@pytest.mark.parametrize("dtype, atol", [("f16", 2e-3), ("q8_0", 2e-2)])
def test_f16_and_q8_0_round_trips_are_close(tmp_path, bpe, dtype, atol):
    model = make_model(bpe.vocab_size, **LLAMA)
    loaded, _ = load_gguf(save_gguf(model, bpe, tmp_path / "m.gguf", dtype=dtype))
    expected = logits(model, bpe.vocab_size)
    got = logits(loaded, bpe.vocab_size)
    assert (got - expected).abs().max() > 0  # really rounded
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def test_vocabulary_padded_to_the_model(tmp_path, bpe):
    model = make_model(bpe.vocab_size + 12, **GPT2)  # a padded embedding table, as nanoGPT's
    loaded, tokenizer = load_gguf(save_gguf(model, bpe, tmp_path / "m.gguf"))
    assert loaded.config.vocab_size == bpe.vocab_size + 12
    tokens = GGUFFile(tmp_path / "m.gguf").get("tokenizer.ggml.tokens")
    assert len(tokens) == bpe.vocab_size + 12 and tokens[-1] == f"[PAD{bpe.vocab_size + 11}]"
    assert tokenizer.fingerprint() == bpe.fingerprint()


# -------------------------------------------------------------------------------- tokenizer
def test_tokenizer_and_chat_template_round_trip(tmp_path, bpe):
    model = make_model(bpe.vocab_size, **LLAMA)
    _, tokenizer = load_gguf(save_gguf(model, bpe, tmp_path / "m.gguf"))
    rebuilt = tokenizer_from_ggml(GGUFFile(tmp_path / "m.gguf"))  # from the ggml keys alone
    for text in [*TEXTS, CORPUS[:300]]:
        assert tokenizer.encode(text) == bpe.encode(text), text
        assert rebuilt.encode(text) == bpe.encode(text), text
        assert rebuilt.decode(rebuilt.encode(text)) == text
    assert tokenizer.chat_template == CHATML
    assert rebuilt.special_tokens == bpe.special_tokens
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"


def test_bos_eos_round_trip(tmp_path, bpe):
    model = make_model(bpe.vocab_size, **LLAMA)
    bpe_chat = type(bpe).from_json(bpe.to_json())
    bpe_chat.chat_template, bpe_chat.eos_token = CHATML, "<|im_end|>"
    path = save_gguf(model, bpe_chat, tmp_path / "m.gguf")
    f = GGUFFile(path)
    assert f.get("tokenizer.ggml.eos_token_id") == bpe.token_to_id("<|im_end|>")
    assert f.get("tokenizer.ggml.bos_token_id") == bpe.token_to_id("<|endoftext|>")
    _, tokenizer = load_gguf(path)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|endoftext|>"


def test_char_tokenizer_round_trips(tmp_path):
    char = train_char(CORPUS + "é")
    model = make_model(char.vocab_size, **GPT2)
    path = save_gguf(model, char, tmp_path / "m.gguf")
    assert GGUFFile(path).get("tokenizer.ggml.model") == "none"
    _, tokenizer = load_gguf(path)
    assert tokenizer.kind == "char" and tokenizer.encode(CORPUS[:200] + "é") == char.encode(
        CORPUS[:200] + "é"
    )


def test_unknown_pre_tokenizer_falls_back_to_gpt2_regex(tmp_path, bpe, monkeypatch):
    monkeypatch.setattr("lmforge.interop.gguf_tokenizer._pre_name", lambda tokenizer: "mystery")
    path = save_gguf(make_model(bpe.vocab_size, **LLAMA), bpe, tmp_path / "m.gguf")
    with pytest.warns(UserWarning, match="unknown tokenizer.ggml.pre 'mystery'"):
        rebuilt = tokenizer_from_ggml(GGUFFile(path))
    assert rebuilt.encode(TEXTS[1]) == bpe.encode(TEXTS[1])  # our BPE splits with GPT-2's regex


def test_sentencepiece_tokenizer_is_refused(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "spm.gguf", "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "\u2581a"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="'llama' tokenizer.*only byte-level BPE"):
        tokenizer_from_ggml(GGUFFile(tmp_path / "spm.gguf"))


# ------------------------------------------------------------------------ the gguf reader
@pytest.mark.parametrize("dtype, matrix_type", [("f32", "F32"), ("f16", "F16"), ("q8_0", "Q8_0")])
def test_gguf_reader_reads_our_export(tmp_path, bpe, dtype, matrix_type):
    model = make_model(bpe.vocab_size, **dict(LLAMA, tie_embeddings=False))
    path = save_gguf(model, bpe, tmp_path / "m.gguf", dtype=dtype, name="tiny")
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i in range(2):
        expected |= {
            f"blk.{i}.{n}.weight"
            for n in (
                "attn_norm attn_q attn_k attn_v attn_output ffn_norm ffn_gate ffn_up ffn_down"
            ).split()
        }
    assert set(types) == expected
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["blk.1.ffn_down.weight"] == types["token_embd.weight"] == matrix_type
    shapes = {t.name: t.shape.tolist() for t in reader.tensors}
    assert shapes["blk.0.attn_k.weight"] == [64, 2 * 16]  # ne: innermost (input) first
    assert shapes["blk.0.ffn_down.weight"] == [96, 64]

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama" and value("general.name") == "tiny"
    assert value("llama.block_count") == 2 and value("llama.attention.head_count_kv") == 2
    assert value("llama.rope.freq_base") == 500.0 and value("llama.rope.dimension_count") == 16
    assert value("llama.context_length") == 32 and value("llama.feed_forward_length") == 96
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.chat_template") == CHATML
    assert len(value("tokenizer.ggml.tokens")) == bpe.vocab_size
    assert value("tokenizer.ggml.token_type")[:3] == [3, 3, 3]  # the special tokens: control


@pytest.mark.hf
@pytest.mark.parametrize("tie", [True, False])
def test_transformers_reads_our_llama_export(tmp_path, bpe, tie):
    """An independent reader of our export (its own rotary un-permutation) gets our logits."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model = make_model(bpe.vocab_size, **dict(LLAMA, tie_embeddings=tie))
    path = save_gguf(model, bpe, tmp_path / "m.gguf")
    config = transformers.AutoConfig.from_pretrained(tmp_path, gguf_file=path.name)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=hf)["tensors"]
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    assert set(missing) <= ({"lm_head.weight"} if tie else set()) and not unexpected
    ids = torch.randint(0, bpe.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
    torch.testing.assert_close(logits(model, bpe.vocab_size), expected, atol=1e-5, rtol=0)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        assert hf_tokenizer.encode(text, add_special_tokens=False) == bpe.encode(text), text
    assert hf_tokenizer.chat_template == CHATML


def test_gpt2_export_fuses_qkv_with_zero_biases(tmp_path, bpe):
    model = make_model(bpe.vocab_size, **dict(GPT2, bias=False))
    reader = gguf.GGUFReader(save_gguf(model, bpe, tmp_path / "m.gguf"))
    names = {t.name: t for t in reader.tensors}
    assert names["blk.0.attn_qkv.weight"].shape.tolist() == [64, 3 * 64]
    assert not names["blk.0.attn_qkv.bias"].data.any()
    assert "position_embd.weight" in names and "blk.0.attn_q.weight" not in names


# ---------------------------------------------------------------------------- bad input
def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_gguf(tmp_path / "nope.gguf")
    (tmp_path / "text.gguf").write_text("hello, not a model")
    with pytest.raises(UserError, match="not a GGUF file"):
        load_gguf(tmp_path / "text.gguf")


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.01])
def test_truncated_file(tmp_path, bpe, keep):
    path = save_gguf(make_model(bpe.vocab_size, **LLAMA), bpe, tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_gguf(path)


def test_unsupported_architecture(tmp_path, bpe, monkeypatch):
    monkeypatch.setattr(gguf_mod, "architecture_of", lambda cfg: "falcon")
    path = save_gguf(make_model(bpe.vocab_size, **LLAMA), bpe, tmp_path / "m.gguf")
    with pytest.raises(UserError, match="architecture 'falcon'; lmforge imports only llama, gpt2"):
        load_gguf(path)


def test_unsupported_tensor_type(tmp_path, bpe, monkeypatch):
    original = gguf_mod._add_tensor

    def q5_ffn(writer, name, values, dtype):
        if name == "blk.1.ffn_up.weight":
            writer.add_tensor(name, gguf.quants.quantize(values, QT.Q5_0), raw_dtype=QT.Q5_0)
        else:
            original(writer, name, values, dtype)

    monkeypatch.setattr(gguf_mod, "_add_tensor", q5_ffn)
    path = save_gguf(make_model(bpe.vocab_size, **LLAMA), bpe, tmp_path / "m.gguf")
    with pytest.raises(UserError, match=r"blk.1.ffn_up.weight has type Q5_0.*F32, F16, BF16, Q8_0"):
        load_gguf(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("blk.1.attn_v.weight"), "lacks the tensor blk.1.attn_v.weight"),
        (lambda t: t.update(extra=np.zeros(3, np.float32)), "no place for: extra"),
        (
            lambda t: t.update({"blk.0.ffn_up.weight": np.zeros((5, 64), np.float32)}),
            r"blk.0.ffn_up.weight has shape \(5, 64\), its metadata implies \(96, 64\)",
        ),
    ],
    ids=["missing", "unexpected", "misshapen"],
)
def test_missing_unexpected_or_misshapen_tensor(tmp_path, bpe, monkeypatch, change, message):
    original = gguf_mod.state_to_gguf

    def altered(*args):
        tensors = original(*args)
        change(tensors)
        return tensors

    monkeypatch.setattr(gguf_mod, "state_to_gguf", altered)
    path = save_gguf(make_model(bpe.vocab_size, **LLAMA), bpe, tmp_path / "m.gguf")
    with pytest.raises(UserError, match=message):
        load_gguf(path)


def test_export_refusals_leave_no_file(tmp_path, bpe):
    mixed = make_model(bpe.vocab_size, **dict(LLAMA, norm="layernorm"))
    with pytest.raises(UserError, match="no GGUF architecture has position=rope, norm=layernorm"):
        save_gguf(mixed, bpe, tmp_path / "m.gguf")
    with pytest.raises(UserError, match="dtype must be one of f32, f16, q8_0"):
        save_gguf(make_model(bpe.vocab_size, **LLAMA), bpe, tmp_path / "m.gguf", dtype="q4_0")
    small = make_model(bpe.vocab_size - 1, **LLAMA)
    with pytest.raises(UserError, match="do not belong together"):
        save_gguf(small, bpe, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []
