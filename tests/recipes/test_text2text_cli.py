"""`lmforge finetune --task text2text` end to end on tiny t5 and gpt models and a generated data set
whose mapping is learnable (replace the one archaic word of a short phrase by its modern form):
chrF rises far above the untrained model's, the run directory is complete, `lmforge generate` on
the run prints what the evaluation generated; bad input exits 2 with one line."""

import json
import random

import pytest
import torch
from helpers import cli_fails, metric_records, tiny_model_dir, write_jsonl

from lmforge.cli import main as cli
from lmforge.models.loading import load_model
from lmforge.recipes.finetune import build_config, load_backbone
from lmforge.tasks import get_task
from lmforge.tasks.text2text import generate_outputs

MODERN = {"thou": "you", "thy": "your", "hath": "has", "doth": "does", "art": "are"}
FILLER = "the king queen good night sword crown love fair lord lady war peace".split()
PREFIX = "modernize:"


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Phrases of 0-2 filler words and one archaic word -> the archaic word modernized."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(FILLER, k=rng.randint(0, 2))
        words.insert(rng.randrange(len(words) + 1), rng.choice(list(MODERN)))
        target = " ".join(MODERN.get(w, w) for w in words)
        rows.append({"source": " ".join(words), "target": target})
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("t2t") / "pairs.jsonl"
    write_jsonl(path, make_pairs(400))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model_dir(root, family: str):
    """A randomly initialised tiny model of `family`, its tokenizer trained on the phrases."""
    texts = [f"{PREFIX} {r['source']} {r['target']}" for r in make_pairs(300, seed=1)] * 3
    vocab_size = {"gpt": 400, "t5": 200}.get(family)  # gpt: words become single tokens
    return tiny_model_dir(root, family, texts, vocab_size)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: make_model_dir(root, family) for family in ("gpt", "t5", "bert")}


DATA_ARGS = {"prefix": PREFIX, "max_target_tokens": "12", "eval_examples": "40"}
TRAIN_ARGS = {"max_steps": "150", "lr": "1e-2", "batch_size": "16", "warmup_steps": "10"}


def finetune_args(model_dir, data, out, *extra) -> list[str]:
    args = ["finetune", "--model", str(model_dir), "--task", "text2text", "--data", str(data)]
    args += [f"--data.{k}={v}" for k, v in DATA_ARGS.items()]
    args += [f"--train.{k}={v}" for k, v in TRAIN_ARGS.items()]
    return [*args, "--out", str(out), "--train.device=cpu", "--no-progress", *extra]


def untrained_test_chrf(model_dir, data) -> float:
    """The test chrF of the model before fine-tuning, evaluated exactly as the run evaluates."""
    backbone, tokenizer = load_backbone(str(model_dir))
    raw = {"task": "text2text", "data": {"source": str(data), **DATA_ARGS}, "train": TRAIN_ARGS}
    task = get_task("text2text")
    setup = task.setup(backbone, tokenizer, build_config(raw))
    return task.evaluate(backbone, setup.data, "test", torch.device("cpu"), torch.float32).chrf


@pytest.mark.parametrize("family", ["t5", "gpt"])
def test_finetuning_learns_the_mapping_and_generate_runs_it(
    family, model_dirs, dataset, tmp_path, capsys
):
    run = tmp_path / "run"
    assert cli(finetune_args(model_dirs[family], dataset, run)) == 0
    recs = metric_records(run)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.3 * losses[0], losses
    final = recs[-1]
    before = untrained_test_chrf(model_dirs[family], dataset)
    assert before < 15, before
    assert final["test_chrf"] > before + 35 and final["val_chrf"] > before + 35, (before, final)
    assert final["test_examples_scored"] == 40
    for name in ("config.json", "model.safetensors", "tokenizer.json", "text2text.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "text2text.json").read_text())
    assert info["family"] == family and info["prefix"] == PREFIX
    report = (run / "report.md").read_text()
    assert "copy the source (test)" in report and "| chrF |" in report
    assert "examples scored | 40 | 40 | 40" in report
    load_model(run)  # a plain model directory

    # `lmforge generate` on the run prints what the evaluation generates for the same input
    sources = ["thy crown", "good night doth"]
    backbone, tokenizer = load_backbone(str(run))
    raw = {"task": "text2text", "data": {"source": str(dataset), **DATA_ARGS}, "train": TRAIN_ARGS}
    data = get_task("text2text").setup(backbone, tokenizer, build_config(raw)).data
    framed = data.framing.encode_inputs(tokenizer, [f"{PREFIX} {s}" for s in sources])
    expected = generate_outputs(backbone, data, framed, torch.device("cpu"), torch.float32)
    capsys.readouterr()
    prompts = [arg for s in sources for arg in ("--prompt", f"{PREFIX} {s}")]
    generate = ["generate", "--model", str(run), "--temperature", "0", "--max-new-tokens", "12"]
    assert cli([*generate, *prompts]) == 0
    out = capsys.readouterr().out
    for source, text in zip(sources, expected):
        assert f"> {PREFIX} {source}\n{text}\n" in out, (out, expected)
    assert cli([*generate, "--prompt", f"{PREFIX} thy"]) == 0
    assert capsys.readouterr().out.strip() == "your"  # learned: "thy" -> "your"


def test_bad_input_is_one_line_and_exit_2(tmp_path, model_dirs, dataset, capsys):
    gpt, t5 = model_dirs["gpt"], model_dirs["t5"]
    out = tmp_path / "run"
    no_target = tmp_path / "no_target.jsonl"
    write_jsonl(no_target, [{"source": "thou art", "output": "you are"}] * 20)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    blank_source = tmp_path / "blank.jsonl"
    write_jsonl(
        blank_source, [{"source": "thou", "target": "you"}] * 5 + [{"source": " ", "target": "x"}]
    )

    cli_fails(finetune_args(t5, no_target, out), capsys, "row 1: 'target' is missing")
    cli_fails(finetune_args(t5, blank_source, out), capsys, "row 6: 'source' is missing")
    cli_fails(finetune_args(gpt, empty, out), capsys, "holds no examples")
    cli_fails(finetune_args(gpt, tmp_path / "nope.jsonl", out), capsys, "data file not found")
    cli_fails(finetune_args(gpt, "rotten-tomatoes", out), capsys, "not text-to-text data")
    cli_fails(
        finetune_args(model_dirs["bert"], dataset, out), capsys, "cannot fine-tune a bert model"
    )
    cli_fails(
        finetune_args(gpt, dataset, out, "--data.max_target_tokens=64"),
        capsys,
        "no room for the source",
    )
    cli_fails(finetune_args(gpt, dataset, out, "--data.num_beams=4"), capsys, "for t5 models")
    cli_fails(finetune_args(t5, dataset, out, "--data.num_beams=0"), capsys, "num_beams")
    cli_fails(
        finetune_args(t5, dataset, out, "--method", "feature"), capsys, "needs a task with a head"
    )
    assert not out.exists()  # nothing written by a refused run
