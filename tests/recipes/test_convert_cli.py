"""`lmforge convert`: every format to every other through the CLI, the same logits after the trip."""

import pytest
import torch

from lmforge.cli import main as cli
from lmforge.models import GPT, get_preset
from lmforge.models.loading import load_model, save_model
from lmforge.recipes.convert import detect_format, load_any
from lmforge.tokenizer import Tokenizer, train_bpe

SHAPES = {
    "llama": dict(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64),
    "gpt2": dict(hidden_size=48, num_layers=2, num_heads=2, max_seq_len=64),
}
PRESETS = {"llama": "llama-tiny", "gpt2": "gpt2-tiny"}


@pytest.fixture(scope="module")
def tokenizer(text_file) -> Tokenizer:
    return train_bpe([text_file], vocab_size=300, show_progress=False)


def tiny_model_dir(root, style: str, tokenizer: Tokenizer):
    torch.manual_seed(0)
    cfg = get_preset(PRESETS[style], vocab_size=tokenizer.vocab_size, **SHAPES[style])
    model = GPT(cfg).eval()
    with torch.no_grad():  # weights far from the 0.02 init, so logits differ clearly
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return save_model(model, root / f"{style}-model", tokenizer), model


def logits(model: GPT, n: int = 40) -> torch.Tensor:
    x = torch.randint(
        0, model.config.vocab_size, (2, n), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        return model.float()(x)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_lmforge_to_hf_and_back(tmp_path, tokenizer, style):
    src, model = tiny_model_dir(tmp_path, style, tokenizer)
    assert cli(["convert", str(src), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert detect_format(tmp_path / "hf") == "hf"
    assert cli(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert detect_format(tmp_path / "back") == "lmforge"
    back = load_model(tmp_path / "back")
    torch.testing.assert_close(logits(back), logits(model), atol=1e-5, rtol=1e-5)
    assert Tokenizer.from_file(tmp_path / "back").encode("the king") == tokenizer.encode("the king")


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_lmforge_to_gguf_and_back(tmp_path, tokenizer, style):
    src, model = tiny_model_dir(tmp_path, style, tokenizer)
    out = tmp_path / "model.gguf"
    assert cli(["convert", str(src), "--to", "gguf", "--out", str(out)]) == 0
    assert detect_format(out) == "gguf"
    assert cli(["convert", str(out), "--out", str(tmp_path / "back")]) == 0
    back = load_model(tmp_path / "back")
    torch.testing.assert_close(logits(back), logits(model), atol=1e-5, rtol=1e-5)
    text = "the river ran past"
    assert Tokenizer.from_file(tmp_path / "back").encode(text) == tokenizer.encode(text)


def test_storage_types_shrink_files_and_stay_close(tmp_path, tokenizer):
    src, model = tiny_model_dir(tmp_path, "llama", tokenizer)
    full = logits(model)
    for to, dtype, atol in (("lmforge", "bf16", 0.15), ("hf", "f16", 0.02), ("gguf", "q8_0", 0.1)):
        out = tmp_path / f"{to}-{dtype}"
        assert cli(["convert", str(src), "--to", to, "--dtype", dtype, "--out", str(out)]) == 0
        back, _, _ = load_any(out)
        assert back.embed_tokens.weight.dtype == torch.float32  # loaded back in fp32
        diff = (logits(back) - full).abs().max().item()
        assert 0 < diff < atol, (to, dtype, diff)
    assert (tmp_path / "lmforge-bf16" / "model.safetensors").stat().st_size < (
        src / "model.safetensors"
    ).stat().st_size * 0.6


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-dir", "--out", "x"], "model not found"),
        (["{tmp}/notes.txt", "--out", "x"], "not a GGUF file"),
        (["{tmp}", "--out", "x"], "no config.json"),
        (["{src}", "--to", "hf", "--dtype", "q8_0", "--out", "x"], "not available for --to hf"),
        (["{src}", "--to", "gguf", "--dtype", "bf16", "--out", "x"], "not available for --to gguf"),
        (["{src}", "--out", "{src}"], "must differ from the source"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, tokenizer, capsys, args, message):
    src, _ = tiny_model_dir(tmp_path, "llama", tokenizer)
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    args = [a.format(tmp=tmp_path, src=src) for a in args]
    assert cli(["convert", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
