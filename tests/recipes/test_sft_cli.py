"""`lmforge finetune --task sft` end to end on a tiny decoder: the assistant-token loss falls,
held-out exact match rises from the starting model's, packing trains too, `lmforge chat` talks to
the result as trained; bad conversations exit 2 with one line."""

import io

import pytest
from helpers import cli_fails, metric_records, tiny_model_dir, write_jsonl

from lmforge.cli import main as cli
from lmforge.models.loading import load_model_and_tokenizer

FACTS = {
    "capital of France": "Paris",
    "capital of Italy": "Rome",
    "color of the sky": "blue",
    "color of grass": "green",
    "opposite of hot": "cold",
    "opposite of up": "down",
    "number after one": "two",
    "number after four": "five",
}
TINY_SFT = [
    "--train.batch_size=16",
    "--train.warmup_steps=5",
    "--train.eval_interval=50",
    "--train.log_interval=10",
    "--train.device=cpu",
    "--data.max_new_tokens=6",
    "--no-progress",
]


def conversations() -> list[dict]:
    rows = []
    for _ in range(20):
        for topic, answer in FACTS.items():
            messages = [
                {"role": "user", "content": f"What is the {topic}?"},
                {"role": "assistant", "content": answer},
            ]
            rows.append({"messages": messages, "kind": topic.split()[0]})
    return rows


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "facts.jsonl"
    write_jsonl(path, conversations())
    return path


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    texts = [m["content"] for r in conversations()[: len(FACTS)] for m in r["messages"]]
    return tiny_model_dir(tmp_path_factory.mktemp("models"), "gpt", texts * 10)


def sft(model_dir, data, out, *extra, method="full"):
    args = ["finetune", "--model", str(model_dir), "--method", method, "--task", "sft"]
    return cli([*args, "--data", str(data), "--out", str(out), *TINY_SFT, *extra])


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, gpt_dir, facts):
    out = tmp_path_factory.mktemp("sft-run") / "run"
    assert sft(gpt_dir, facts, out, "--train.max_steps=150", "--train.lr=3e-3") == 0
    return out


def test_sft_learns_the_answers_and_beats_the_starting_model(sft_run):
    records = metric_records(sft_run)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] / 3
    final = records[-1]
    assert final["test_exact_match"] >= 0.9 and final["val_exact_match"] >= 0.9
    report = (sft_run / "report.md").read_text()
    assert "| exact match | 0.0% |" in report  # the random starting model, on the test split
    assert "Exact match on the test split by kind" in report
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sft.json", "loss.png"):
        assert (sft_run / name).is_file(), name


def test_the_sft_run_chats_as_trained(sft_run, monkeypatch, capsys):
    """The saved tokenizer carries the template the run trained with (ChatML here: the base
    model had none), so `lmforge chat` on the run answers the way it was taught."""
    _, tokenizer = load_model_and_tokenizer(sft_run)
    assert "<|im_start|>" in tokenizer.chat_template
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of Italy?\n"))
    args = ["chat", "--model", str(sft_run), "--temperature", "0", "--max-new-tokens", "8"]
    assert cli(args) == 0
    assert capsys.readouterr().out.strip() == "Rome"


def test_packed_sft_trains_on_fewer_fuller_rows(tmp_path, gpt_dir, facts):
    out = tmp_path / "packed"
    extra = (
        "--data.packing=true",
        "--train.max_steps=60",
        "--train.lr=3e-3",
        "--data.baseline=false",
    )
    assert sft(gpt_dir, facts, out, *extra) == 0
    losses = [r["loss"] for r in metric_records(out) if "loss" in r]
    assert losses[-1] < losses[0] / 2
    report = (out / "report.md").read_text()
    assert "packed: 128 training conversations in" in report
    assert "starting model" not in report  # no baseline asked for


def test_sft_bad_input_is_one_line_and_exit_2(tmp_path, gpt_dir, facts, capsys):
    empty = tmp_path / "empty.jsonl"
    write_jsonl(empty, [*conversations()[:5], {"messages": []}])
    out = tmp_path / "run"
    cli_fails(
        [
            "finetune",
            "--model",
            str(gpt_dir),
            "--task",
            "sft",
            "--data",
            str(empty),
            "--out",
            str(out),
        ],
        capsys,
        "row 6: empty conversation",
    )
    no_field = tmp_path / "prompts.jsonl"
    write_jsonl(no_field, [{"prompt": "hi", "response": "hello"}] * 5)
    cli_fails(
        [
            "finetune",
            "--model",
            str(gpt_dir),
            "--task",
            "sft",
            "--data",
            str(no_field),
            "--out",
            str(out),
        ],
        capsys,
        "no 'messages' field (fields: prompt, response)",
    )
    cli_fails(
        ["finetune", "--model", str(gpt_dir), "--task", "sft", "--data", str(facts), "--out", str(out),
         "--data.max_new_tokens=64"],
        capsys,
        "leaves no room for a prompt",
    )  # fmt: skip
    assert not out.exists()  # nothing written by a refused run
