"""`lmforge eval classify` (zero / few-shot prompting) and `lmforge compare` on a tiny decoder:
each row runs in its own process and writes result.json; the comparison table and plot hold every
row; a finished row is not run again."""

import json

import pytest
from helpers import cli_fails, tiny_gpt, write_jsonl
from test_finetune_cli import make_examples

from lmforge.cli import main as cli
from lmforge.models.loading import save_model
from lmforge.tokenizer import train_bpe


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = root / "reviews.jsonl"
    write_jsonl(data, make_examples(200))
    texts = [r["text"] for r in make_examples(300, seed=1)] + ["Text: Label: good bad pos neg"]
    tokenizer = train_bpe(texts * 3, 320, show_progress=False)
    model = tiny_gpt("gpt2-tiny", tokenizer.vocab_size, num_heads=2, max_seq_len=256)
    return save_model(model, root / "gpt", tokenizer), data  # context for a few-shot prompt


def test_eval_classify_prompting(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "few"
    args = ["eval", "classify", "--model", str(model), "--data", str(data), "--shots", "2"]
    assert cli([*args, "--verbalizer", "pos=good", "--out", str(out), "--no-progress"]) == 0
    assert "2-shot prompting" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["examples"] == 20 and 0 <= result["test_accuracy"] <= 1
    assert result["trainable_params"] == 0 and result["total_params"] > 0
    report = (out / "report.md").read_text()
    assert "Label: good" in report or "Label: neg" in report  # the demonstrations are shown
    cli_fails([*args, "--verbalizer", "pos"], capsys, "--verbalizer takes LABEL=WORD")
    cli_fails([*args, "--verbalizer", "other=x"], capsys, "verbalizers name labels not in the data")


def test_compare_writes_every_row_and_resumes(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "cmp"
    args = [
        "compare", "--model", str(model), "--data", str(data), "--out", str(out),
        "--methods", "zero-shot,few-shot,lora,full", "--shots", "2", "--train-subset", "0",
        "--no-progress", "--train.max_steps=20", "--train.device=cpu",
    ]  # fmt: skip
    assert cli(args) == 0
    table = (out / "comparison.md").read_text()
    for row in ("zero-shot", "few-shot", "lora", "full"):
        assert f"| {row} |" in table
        assert (out / row / "result.json").is_file()
    assert (out / "comparison.png").stat().st_size > 10_000
    lora = json.loads((out / "lora" / "result.json").read_text())
    full = json.loads((out / "full" / "result.json").read_text())
    assert 0 < lora["trainable_params"] < full["trainable_params"]
    capsys.readouterr()
    assert cli(args) == 0  # everything done: nothing runs again
    assert capsys.readouterr().out.count("already done") == 4
    cli_fails([*args[:7], "--methods", "zero-shot,magic"], capsys, "unknown row 'magic'")
    cli_fails([*args, "--data.split_seed=3"], capsys, "every row must see the same data")


def test_comparison_table_reports_gpu_memory_for_cuda_rows():
    from lmforge.recipes.compare import CompareConfig, comparison_table

    row = dict(
        test_accuracy=0.8, test_macro_f1=0.79, trainable_params=10, total_params=1000,
        seconds=12.0, checkpoint_bytes=0,
    )  # fmt: skip
    cfg = CompareConfig(model="m.gguf", out="runs/cmp")
    on_cpu = comparison_table(cfg, {"lora": {**row, "peak_rss_mb": 900.0}})
    assert "| 900 MiB |" in on_cpu and "resident set size" in on_cpu
    cuda = {**row, "peak_rss_mb": 900.0, "peak_cuda_mb": 321.0}
    on_gpu = comparison_table(cfg, {"lora": cuda})
    assert "| 321 MiB |" in on_gpu and "CUDA memory allocated" in on_gpu
