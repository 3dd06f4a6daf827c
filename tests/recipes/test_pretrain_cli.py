"""A tiny run through the CLI: tokenizer, prepare, pretrain (loss falls), resume, generate."""

import json

import pytest

from lmforge.cli import main as cli
from lmforge.models.loading import load_model_and_tokenizer


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_lowers_the_loss_and_writes_the_run_directory(trained_run):
    recs = records(trained_run)
    train = [r["loss"] for r in recs if "loss" in r]
    val = [r["val_loss"] for r in recs if "val_loss" in r]
    assert train[-1] < 0.6 * train[0]
    assert val[-1] < val[0]
    for name in (
        "config.yaml",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "loss.png",
        "report.md",
        "checkpoints/latest",
    ):
        assert (trained_run / name).exists(), name
    report = (trained_run / "report.md").read_text()
    assert "validation loss" in report and "![loss curve](loss.png)" in report
    model, tokenizer = load_model_and_tokenizer(trained_run)
    assert model.config.vocab_size == tokenizer.vocab_size == 300


def test_resume_continues_the_run(tmp_path, prepared, tiny_run_args):
    run = tmp_path / "run"
    args = ["pretrain", "--out", str(run), f"--data.dir={prepared / 'data'}", *tiny_run_args]
    assert cli([*args, "--train.max_steps=20", "--train.decay_steps=40"]) == 0
    assert cli([*args, "--resume", "--train.max_steps=40"]) == 0
    steps = [r["step"] for r in records(run) if "loss" in r]
    assert steps == list(range(5, 45, 5))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000040"


def test_generate_batch_of_prompts_greedy(trained_run, capsys):
    args = ["generate", "--model", str(trained_run), "--temperature", "0", "--max-new-tokens", "12"]
    assert cli([*args, "--prompt", "The king", "--prompt", "And"]) == 0
    out = capsys.readouterr().out
    assert "--- [0] ---\nThe king" in out and "--- [1] ---\nAnd" in out
    # the same prompt alone (streamed) gives the same greedy text as inside the batch
    assert cli([*args, "--prompt", "The king"]) == 0
    alone = capsys.readouterr().out.strip()
    assert alone in out


def test_generate_stop_string_and_seed(trained_run, capsys):
    base = [
        "generate",
        "--model",
        str(trained_run),
        "--prompt",
        "The",
        "--max-new-tokens",
        "40",
        "--top-p",
        "0.9",
        "--top-k",
        "20",
        "--repetition-penalty",
        "1.1",
    ]
    assert cli([*base, "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert cli([*base, "--seed", "3"]) == 0
    assert capsys.readouterr().out == first
    assert cli([*base, "--seed", "3", "--stop", "."]) == 0
    stopped = capsys.readouterr().out
    assert "." not in stopped


@pytest.mark.slow
def test_pretrain_with_torch_compile(tmp_path, prepared, tiny_run_args):
    run = tmp_path / "run"
    args = ["pretrain", "--out", str(run), f"--data.dir={prepared / 'data'}", *tiny_run_args]
    assert cli([*args, "--train.max_steps=10", "--train.compile=true"]) == 0
    assert records(run)[-1]["step"] == 10
