"""A tiny BERT through the CLI: WordPiece tokenizer, prepare, masked-LM pre-training (the loss
falls), fill-mask, conversion to Hugging Face and back; and bad input (one line, exit 2)."""

import json
import re

import pytest
import torch

from lmforge.cli import main as cli
from lmforge.models.bert import Bert
from lmforge.models.loading import load_model, load_model_and_tokenizer, save_model
from lmforge.recipes.fill_mask import fill_mask

BERT_RUN = [
    "--objective",
    "mlm",
    "--model.hidden_size=64",
    "--model.num_layers=2",
    "--model.num_heads=2",
    "--model.intermediate_size=128",
    "--model.max_seq_len=64",
    "--train.batch_size=8",
    "--train.block_size=32",
    "--train.lr=3e-3",
    "--train.warmup_steps=5",
    "--train.eval_interval=30",
    "--train.eval_batches=4",
    "--train.log_interval=10",
    "--train.checkpoint_interval=30",
    "--train.device=cpu",
    "--no-progress",
]


def fails(args, capsys, match: str) -> str:
    code = cli(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def wordpiece_data(tmp_path_factory, text_file):
    root = tmp_path_factory.mktemp("bert")
    tok = ["tokenizer", "train", "--kind", "wordpiece", "--input", str(text_file)]
    assert cli([*tok, "--vocab-size", "200", "--out", str(root / "tok")]) == 0
    prep = ["prepare", "--input", str(text_file), "--tokenizer", str(root / "tok")]
    assert cli([*prep, "--out", str(root / "data")]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, wordpiece_data):
    run = tmp_path_factory.mktemp("bert-run") / "run"
    args = ["pretrain", "--out", str(run), f"--data.dir={wordpiece_data}", *BERT_RUN]
    assert cli([*args, "--train.max_steps=60"]) == 0
    return run


def test_mlm_pretraining_lowers_the_loss_and_writes_a_bert(bert_run):
    records = [json.loads(line) for line in (bert_run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if "loss" in r]
    assert train[-1] < 0.85 * train[0]
    model, tokenizer = load_model_and_tokenizer(bert_run)
    assert isinstance(model, Bert) and tokenizer.kind == "wordpiece"
    assert model.config.max_seq_len == 64 and model.config.vocab_size == tokenizer.vocab_size
    report = (bert_run / "report.md").read_text()
    assert "## Fill-mask predictions" in report and "[MASK]" in report
    assert "family: bert" in (bert_run / "config.yaml").read_text()


def test_fill_mask_prints_candidates_for_each_mask(bert_run, capsys):
    text = "The king and [MASK] of the realm spoke to their [MASK]."
    assert cli(["fill-mask", "--model", str(bert_run), "--text", text, "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("[MASK] ") == 2 and "[MASK] 2 of 2" in out
    probs = [float(p) for p in re.findall(r"^\s+(\d\.\d{4})\s", out, flags=re.M)]
    assert len(probs) == 6 and probs[:3] == sorted(probs[:3], reverse=True)
    assert out.splitlines()[-1].startswith("top-1: the king and")
    # the Python API gives the same candidates
    model, tokenizer = load_model_and_tokenizer(bert_run)
    predictions = fill_mask(model, tokenizer, text, top_k=3)
    assert [round(c.probability, 4) for c in predictions[0].candidates] == probs[:3]
    assert 0 < sum(c.probability for c in predictions[1].candidates) <= 1


def test_bert_converts_to_hugging_face_and_back(bert_run, tmp_path):
    assert cli(["convert", str(bert_run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["BertForMaskedLM"]
    assert cli(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    model, back = load_model(bert_run), load_model(tmp_path / "back")
    x = torch.randint(0, model.config.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
    # a Hugging Face BERT directory works with fill-mask as it is
    text = ["--text", "the [MASK] of the realm"]
    assert cli(["fill-mask", "--model", str(tmp_path / "hf"), *text]) == 0


def test_fill_mask_without_mask_exits_2(bert_run, capsys):
    fails(
        ["fill-mask", "--model", str(bert_run), "--text", "no mask here"],
        capsys,
        "the text has no [MASK] token",
    )


def test_fill_mask_on_a_decoder_exits_2(tmp_path, capsys):
    from helpers import tiny_gpt

    save_model(tiny_gpt("gpt2-tiny", vocab_size=64), tmp_path / "gpt")
    fails(
        ["fill-mask", "--model", str(tmp_path / "gpt"), "--text", "the [MASK]"],
        capsys,
        "holds a gpt model; fill-mask needs a masked LM",
    )


def test_mlm_with_a_decoder_preset_exits_2(wordpiece_data, tmp_path, capsys):
    args = ["pretrain", "--out", str(tmp_path / "r"), f"--data.dir={wordpiece_data}"]
    fails(
        [*args, "--objective", "mlm", "--model.preset=gpt2-tiny"],
        capsys,
        "objective 'mlm' does not train a gpt model",
    )


def test_mlm_on_bpe_data_exits_2(prepared, tmp_path, capsys):
    args = ["pretrain", "--out", str(tmp_path / "r"), f"--data.dir={prepared / 'data'}"]
    fails(
        [*args, "--objective", "mlm", "--train.max_steps=1"],
        capsys,
        "tokenizer has no [MASK] token; train a WordPiece tokenizer",
    )


def test_gguf_export_of_a_bert_exits_2(bert_run, tmp_path, capsys):
    fails(
        ["convert", str(bert_run), "--to", "gguf", "--out", str(tmp_path / "m.gguf")],
        capsys,
        "GGUF export takes decoder (gpt) models",
    )


def test_generate_with_a_bert_exits_2(bert_run, capsys):
    fails(
        ["generate", "--model", str(bert_run), "--prompt", "the king"],
        capsys,
        "is a masked LM (bert)",
    )


def test_resumed_mlm_run_masks_as_the_uninterrupted_one(wordpiece_data, tmp_path):
    def run(out, *extra):
        args = ["pretrain", "--out", str(tmp_path / out), f"--data.dir={wordpiece_data}"]
        assert cli([*args, *BERT_RUN, "--train.decay_steps=20", *extra]) == 0
        lines = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if '"loss"' in line][-1]

    whole = run("whole", "--train.max_steps=20")
    run("resumed", "--train.max_steps=10", "--train.checkpoint_interval=10")
    resumed = run("resumed", "--train.max_steps=20", "--resume")
    assert resumed["step"] == whole["step"] == 20 and resumed["loss"] == whole["loss"]
