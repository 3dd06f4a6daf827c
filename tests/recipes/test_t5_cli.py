"""A tiny T5 through the CLI: Unigram tokenizer with sentinels, prepare, span-corruption pre-training
(loss falls), text-to-text generation (greedy, beams), conversion to Hugging Face and back; bad
input (sentinel collision, objective of another family, tokenizer without sentinels) exits 2."""

import json

import pytest
import torch

from lmforge.cli import main as cli
from lmforge.models.loading import load_model_and_tokenizer
from lmforge.models.t5 import T5

T5_RUN = [
    "--objective",
    "span",
    "--model.hidden_size=64",
    "--model.num_heads=2",
    "--model.intermediate_size=128",
    "--train.batch_size=8",
    "--train.block_size=32",
    "--train.lr=3e-3",
    "--train.warmup_steps=5",
    "--train.eval_interval=20",
    "--train.eval_batches=4",
    "--train.log_interval=5",
    "--train.device=cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def t5_data(tmp_path_factory, text_file):
    root = tmp_path_factory.mktemp("t5")
    args = ["--input", str(text_file), "--vocab-size", "300", "--out", str(root / "tok")]
    assert cli(["tokenizer", "train", "--kind", "unigram", *args]) == 0
    prep = [
        "--input",
        str(text_file),
        "--tokenizer",
        str(root / "tok"),
        "--out",
        str(root / "data"),
    ]
    assert cli(["prepare", *prep]) == 0
    return root


@pytest.fixture(scope="module")
def t5_run(t5_data):
    run = t5_data / "run"
    args = ["pretrain", "--out", str(run), f"--data.dir={t5_data / 'data'}", *T5_RUN]
    assert cli([*args, "--train.max_steps=40"]) == 0
    return run


def test_span_pretraining_lowers_the_loss_and_writes_a_t5_run(t5_run):
    records = [json.loads(line) for line in (t5_run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if "loss" in r]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert train[-1] < 0.75 * train[0] and val[-1] < val[0]
    model, tokenizer = load_model_and_tokenizer(t5_run)
    assert isinstance(model, T5) and tokenizer.kind == "unigram"
    report = (t5_run / "report.md").read_text()
    assert "Span corruption" in report and "<extra_id_0>" in report


def test_generate_text_to_text_greedy_and_beam(t5_run, capsys):
    base = ["generate", "--model", str(t5_run), "--max-new-tokens", "8", "--temperature", "0"]
    assert cli([*base, "--prompt", "The king <extra_id_0> the queen."]) == 0
    greedy = capsys.readouterr().out
    assert greedy.strip()
    assert cli([*base, "--prompt", "The king <extra_id_0> the queen.", "--num-beams", "1"]) == 0
    assert capsys.readouterr().out == greedy
    prompts = ["--prompt", "The king <extra_id_0> the queen.", "--prompt", "War <extra_id_0>"]
    assert cli([*base, *prompts, "--num-beams", "3"]) == 0
    out = capsys.readouterr().out
    assert "--- [0] ---\n> The king" in out and "--- [1] ---\n> War" in out
    one_line_error(capsys, cli([*base, *prompts, "--compile"]), "compiled decoding", "gpt")


def test_convert_to_hugging_face_and_back(t5_run, tmp_path):
    assert cli(["convert", str(t5_run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["T5ForConditionalGeneration"]
    assert cli(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    original, _ = load_model_and_tokenizer(t5_run)
    back, tokenizer = load_model_and_tokenizer(tmp_path / "back")
    source = torch.tensor([tokenizer.encode("The king spoke.") + [tokenizer.eos_id]])
    target = torch.tensor([[0, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(back(source, None, target), original(source, None, target))


def one_line_error(capsys, code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


def test_sentinel_collision_exits_2(t5_data, tmp_path, capsys):
    corpus = tmp_path / "collision.txt"
    corpus.write_text("The king said <extra_id_0> to the queen.\n" * 200, encoding="utf-8")
    prep = [
        "--input",
        str(corpus),
        "--tokenizer",
        str(t5_data / "tok"),
        "--out",
        str(tmp_path / "d"),
    ]
    assert cli(["prepare", *prep]) == 0
    capsys.readouterr()
    args = ["pretrain", "--out", str(tmp_path / "run"), f"--data.dir={tmp_path / 'd'}", *T5_RUN]
    one_line_error(capsys, cli([*args, "--train.max_steps=2"]), "sentinel collision")


def test_span_objective_on_a_decoder_preset_exits_2(t5_data, tmp_path, capsys):
    args = ["pretrain", "--out", str(tmp_path / "run"), f"--data.dir={t5_data / 'data'}"]
    code = cli([*args, "--objective", "span", "--model.preset=gpt2-tiny"])
    one_line_error(capsys, code, "span", "t5")


def test_span_objective_without_sentinels_exits_2(prepared, tmp_path, capsys):
    args = ["pretrain", "--out", str(tmp_path / "run"), f"--data.dir={prepared / 'data'}", *T5_RUN]
    one_line_error(capsys, cli([*args, "--train.max_steps=2"]), "sentinel", "--kind unigram")


def test_resumed_span_run_repeats_the_uninterrupted_one(t5_data, t5_run, tmp_path):
    """The noise masks come from the global RNG, which checkpoints save and resume restores."""
    run = tmp_path / "run"
    args = ["pretrain", "--out", str(run), f"--data.dir={t5_data / 'data'}", *T5_RUN]
    assert cli([*args, "--train.max_steps=20", "--train.decay_steps=40"]) == 0
    assert cli([*args, "--resume", "--train.max_steps=40"]) == 0

    def losses(directory):
        lines = (directory / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}

    resumed, uninterrupted = losses(run), losses(t5_run)
    for step in (25, 30, 35, 40):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5)
