"""`lmforge eval perplexity` on a tiny saved model: figures, --json, and bad input."""

import json
import math

import pytest
from helpers import tiny_gpt

from lmforge.cli import main as cli
from lmforge.eval import perplexity
from lmforge.models.loading import load_model_and_tokenizer, save_model
from lmforge.tokenizer import train_bpe

TEXT = (
    "Now is the winter of our discontent made glorious summer by this sun of York; "
    "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. "
) * 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = train_bpe([TEXT], vocab_size=300)
    model = tiny_gpt("llama-tiny", tokenizer.vocab_size)
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny", tokenizer)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "a.txt").write_text(TEXT, encoding="utf-8")
    (root / "b.txt").write_text("Was ever woman in this humour woo'd? — café\n", encoding="utf-8")
    (root / "one.txt").write_text("a", encoding="utf-8")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    return root


def run_json(capsys, *args) -> dict:
    assert cli(["eval", "perplexity", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_matches_the_python_api(model_dir, data, capsys):
    report = run_json(
        capsys, "--model", model_dir, "--data", data / "a.txt", "--context", 32, "--device", "cpu"
    )
    model, tokenizer = load_model_and_tokenizer(model_dir)
    expected = perplexity(model, tokenizer, TEXT, context=32, progress=False)
    assert (report["context"], report["stride"], report["documents"]) == (32, 16, 1)
    assert report["tokens"] == expected.tokens == len(tokenizer.encode(TEXT))
    assert report["bytes"] == len(TEXT.encode("utf-8"))
    assert report["nll_sum"] == pytest.approx(expected.nll_sum, rel=1e-6)
    assert report["perplexity"] == pytest.approx(math.exp(report["mean_nll"]), rel=1e-9)
    bpb = report["nll_sum"] / (math.log(2) * report["bytes"])
    assert report["bits_per_byte"] == pytest.approx(bpb, rel=1e-9)
    assert report["tokens_per_second"] > 0 and report["files"] == [str(data / "a.txt")]


def test_summary_and_several_files(model_dir, data, capsys):
    args = ["eval", "perplexity", "--model", str(model_dir), "--context", "64", "--stride", "64"]
    args += ["--data", str(data / "a.txt"), str(data / "b.txt")]
    assert cli(args) == 0
    captured = capsys.readouterr()
    lines = dict(line.split(None, 1) for line in captured.out.splitlines() if line.strip())
    report = run_json(capsys, *args[2:], "--no-progress")
    assert report["documents"] == 2 and report["stride"] == 64
    assert lines["perplexity"].strip() == f"{report['perplexity']:.3f}"
    assert lines["bits/byte"].strip() == f"{report['bits_per_byte']:.4f}"
    assert "2 files" in lines["data"] and "tokens/s" in lines["tokens"]
    assert "perplexity" in captured.err  # the progress bar goes to stderr, never stdout


def test_no_eos_prefix_scores_one_token_less(model_dir, data, capsys):
    base = ["--model", model_dir, "--data", data / "a.txt", "--context", 64, "--no-progress"]
    with_prefix = run_json(capsys, *base)
    without = run_json(capsys, *base, "--no-eos-prefix")
    assert without["tokens"] == with_prefix["tokens"] - 1


def fails(capsys, args, match: str) -> None:
    code = cli(["eval", "perplexity", *map(str, args), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_bad_input(model_dir, data, tmp_path, capsys):
    text = data / "a.txt"
    fails(capsys, ["--model", tmp_path / "nope", "--data", text], "model directory not found")
    fails(capsys, ["--model", model_dir, "--data", data / "missing.txt"], "not found")
    fails(capsys, ["--model", model_dir, "--data", data / "empty.txt"], "empty")
    fails(capsys, ["--model", model_dir, "--data", data / "one.txt"], "at least 2")
    fails(capsys, ["--model", model_dir, "--data", text, "--stride", 0], "stride")
    fails(capsys, ["--model", model_dir, "--data", text, "--context", 16, "--stride", 17], "stride")
    fails(capsys, ["--model", model_dir, "--data", text, "--context", 65], "max_seq_len")
    fails(capsys, ["--model", model_dir, "--data", text, "--precision", "fp8"], "precision")
