"""`lmforge finetune --task qa` end to end on tiny models of every family (gpt, bert, t5) and a
generated question set whose answer is always the word after the marker "key": the loss falls,
exact match ends far above the untrained model's, the run directory is complete and the span
extractor answers through `lmforge answer` and `load_answerer`; bad input exits 2 with one line."""

import json
import random

import pytest
import torch
from helpers import cli_fails, metric_records, tiny_model_dir, write_jsonl

from lmforge.cli import main as cli
from lmforge.data.qa import load_qa_splits
from lmforge.eval.qa import qa_metrics
from lmforge.models.loading import load_model
from lmforge.recipes.answer import load_answerer
from lmforge.recipes.finetune import build_config, load_backbone
from lmforge.tasks.qa import QATask

FILLER = "the river ran past castle walls night was long full of stars above quiet town".split()
COLOURS = "red blue green gold silver amber violet white black pink".split()
QUESTION = "What is the key?"


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Questions whose answer is the colour after "key", in both JSONL forms (flat and SQuAD's)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(FILLER, k=rng.randint(3, 6))
        colour = rng.choice(COLOURS)
        at = rng.randrange(len(words) + 1)
        words[at:at] = ["key", colour]
        context = " ".join(words)
        if i % 2:
            rows.append({"question": QUESTION, "context": context, "answer": colour})
        else:
            start = context.index(f"key {colour}") + 4
            answers = {"text": [colour], "answer_start": [start]}
            rows.append({"question": QUESTION, "context": context, "answers": answers})
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "keys.jsonl"
    write_jsonl(path, make_rows(300))
    return path


def make_model_dir(root, family: str):
    """A randomly initialised tiny model of `family` with a tokenizer trained on the texts."""
    return tiny_model_dir(
        root, family, [f"{r['question']} {r['context']}" for r in make_rows(300, seed=1)] * 3
    )


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: make_model_dir(root, family) for family in ("gpt", "bert", "t5")}


TINY_QA = [
    "--train.batch_size=16",
    "--train.warmup_steps=5",
    "--train.eval_interval=25",
    "--train.log_interval=5",
    "--train.device=cpu",
    "--head.dropout=0.0",
    "--no-progress",
]


SCHEDULES = {
    "gpt": ("--train.max_steps=80", "--train.lr=5e-3"),
    "bert": ("--train.max_steps=50", "--train.lr=3e-3"),
    "t5": ("--train.max_steps=300", "--train.lr=5e-3"),  # its Unigram pieces are mostly letters
}


def finetune(model_dir, data, out, method="full", *extra) -> int:
    args = ["finetune", "--model", str(model_dir), "--method", method, "--task", "qa"]
    return cli([*args, "--data", str(data), "--out", str(out), *TINY_QA, *extra])


def untrained_metrics(model_dir, data):
    """Test EM of the model with a fresh span head, before any training (the task's own API)."""
    raw = {"task": "qa", "data": {"source": str(data)}, "head": {"dropout": 0.0}}
    backbone, tokenizer = load_backbone(str(model_dir))
    task = QATask()
    setup = task.setup(backbone, tokenizer, build_config(raw))
    return task.evaluate(setup.model, setup.data, "test", torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_full_finetuning_learns_to_extract_the_answer(
    tmp_path, model_dirs, dataset, family, capsys
):
    run = tmp_path / "run"
    assert finetune(model_dirs[family], dataset, run, "full", *SCHEDULES[family]) == 0
    recs = metric_records(run)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.3 * losses[0], losses
    final = recs[-1]
    before = untrained_metrics(model_dirs[family], dataset)
    assert final["test_exact_match"] >= 0.7 and final["val_exact_match"] >= 0.7, final
    assert final["test_exact_match"] > before.exact_match + 0.5, (final, before)
    assert final["test_f1"] >= final["test_exact_match"]
    for name in ("config.yaml", "config.json", "model.safetensors", "tokenizer.json"):
        assert (run / name).is_file(), name
    for name in ("head.safetensors", "qa.json", "loss.png", "report.md"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    for part in ("exact match", "Trivial baseline", "dropped", "| test question | gold |"):
        assert part in report, part
    assert json.loads((run / "qa.json").read_text())["max_answer_tokens"] == 30
    load_model(run)  # the fine-tuned backbone is a model directory of its own

    # the saved extractor answers the test questions exactly as the run scored them
    test = load_qa_splits(str(dataset)).examples["test"]
    answerer = load_answerer(run)
    answers = [answerer(e.question, e.context) for e in test]
    again = qa_metrics([a for a, _ in answers], [e.answers for e in test])
    assert again.exact_match == pytest.approx(final["test_exact_match"])
    assert all(0 < score <= 1 and a in e.context for (a, score), e in zip(answers, test))
    capsys.readouterr()
    context = test[0].context
    assert cli(["answer", "--model", str(run), "--question", QUESTION, "--context", context]) == 0
    assert capsys.readouterr().out == f"{answers[0][0]}\t{answers[0][1]:.4f}\n"
    cli_fails(
        ["answer", "--model", str(run), "--question", " ", "--context", context], capsys, "give"
    )


def test_feature_method_trains_the_head_alone(tmp_path, model_dirs, dataset):
    run = tmp_path / "run"
    assert finetune(model_dirs["gpt"], dataset, run, "feature", "--train.max_steps=10") == 0
    report = (run / "report.md").read_text()
    assert "| trainable parameters | 66 of " in report  # 32 x 2 weights + 2 biases
    base, tuned = load_model(model_dirs["gpt"]), load_model(run)
    for (name, a), b in zip(base.state_dict().items(), tuned.state_dict().values()):
        assert torch.equal(a, b), name  # the backbone is untouched
    assert "test_exact_match" in metric_records(run)[-1]


def test_bad_input_is_one_line_and_exit_2(tmp_path, model_dirs, capsys):
    gpt = str(model_dirs["gpt"])
    run = tmp_path / "run"
    base = ["finetune", "--model", gpt, "--task", "qa", "--out", str(run), "--no-progress"]
    good = make_rows(20)
    cases = {
        "no_context.jsonl": ([*good[:3], {"question": "Q?", "answer": "red"}], "row 4 has no"),
        "not_in_context.jsonl": (
            [*good[:1], {"question": "Q?", "context": "a b c", "answer": "red"}],
            "row 2: answer 'red' does not occur in its context",
        ),
        "wrong_offset.jsonl": (
            [
                {
                    "question": "Q?",
                    "context": "a red b",
                    "answers": {"text": ["red"], "answer_start": [0]},
                }
            ],
            "row 1: answer 'red' is not at character 0",
        ),  # fmt: skip
        "empty.jsonl": ([], "holds no questions"),
    }
    for name, (rows, match) in cases.items():
        write_jsonl(tmp_path / name, rows)
        cli_fails([*base, "--data", str(tmp_path / name)], capsys, match)
    cli_fails([*base, "--data", str(tmp_path / "missing.jsonl")], capsys, "not found")
    cli_fails([*base, "--data", "rotten-tomatoes"], capsys, "not QA data")
    write_jsonl(tmp_path / "ok.jsonl", good)
    cli_fails(
        [*base, "--data", str(tmp_path / "ok.jsonl"), "--data.max_answer_tokens=0"],
        capsys,
        "max_answer_tokens",
    )
    question = ["--question", QUESTION, "--context", "a key red"]
    cli_fails(["answer", "--model", gpt, *question], capsys, "not a fine-tuned question-answering")
    cli_fails(["answer", "--model", str(tmp_path / "nope"), *question], capsys, "not found")
    assert not run.exists()  # nothing written by a refused run
