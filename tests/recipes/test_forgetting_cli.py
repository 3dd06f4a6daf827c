"""Forgetting and replay through `lmforge finetune`: the original ability (perplexity on held-out
original-domain text) is measured before and after, fine-tuning a pre-trained tiny model raises it,
replay (alpha > 0) keeps it lower, and result.json / report.md carry the figures."""

import json

import pytest
from helpers import cli_fails, write_jsonl
from test_finetune_cli import make_examples

from lmforge.cli import main as cli

FORGET = [
    "--method", "full", "--task", "classify",
    "--train.max_steps=40", "--train.lr=3e-3", "--train.batch_size=16", "--train.warmup_steps=2",
    "--train.eval_interval=40", "--train.device=cpu", "--head.dropout=0.0", "--no-progress",
    "--forgetting.measure=true", "--forgetting.context=32", "--forgetting.tokens=2000",
]  # fmt: skip


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("forget") / "reviews.jsonl"
    write_jsonl(path, make_examples(300))
    return path


def finetune(trained_run, data, out, text_file, alpha: float) -> dict:
    corpus = [f"--forgetting.corpora={text_file}", f"--replay.corpus={text_file}"]
    replay = [f"--replay.alpha={alpha}", "--replay.block_size=32"]
    args = ["finetune", "--model", str(trained_run), "--data", str(data), "--out", str(out)]
    assert cli([*args, *FORGET, *corpus, *replay]) == 0
    return json.loads((out / "result.json").read_text())


def test_replay_keeps_the_original_ability(tmp_path, trained_run, reviews, text_file):
    key = text_file.name
    plain = finetune(trained_run, reviews, tmp_path / "plain", text_file, 0.0)
    replayed = finetune(trained_run, reviews, tmp_path / "replay", text_file, 0.5)
    before = plain[f"{key}_ppl_before"]
    assert replayed[f"{key}_ppl_before"] == pytest.approx(before)  # the same base, same tokens
    assert plain[f"{key}_ppl_after"] > before * 1.2  # fine-tuning alone forgets
    assert replayed[f"{key}_ppl_after"] < plain[f"{key}_ppl_after"]  # replay forgets less
    assert replayed["replay_alpha"] == 0.5 and plain["test_accuracy"] > 0.6
    report = (tmp_path / "replay" / "report.md").read_text()
    assert "## Original ability" in report and "0.5 x L_original + 0.5 x L_new" in report


def test_replay_bad_settings_are_one_line(tmp_path, trained_run, reviews, capsys):
    base = ["finetune", "--model", str(trained_run), "--data", str(reviews)]
    out = ["--out", str(tmp_path / "x")]
    cli_fails([*base, *out, "--replay.alpha=1.0"], capsys, "replay.alpha must be in [0, 1)")
    cli_fails(
        [*base, *out, "--replay.alpha=0.3", "--replay.corpus=nowhere.txt"],
        capsys,
        "unknown original-domain corpus 'nowhere.txt'",
    )
    cli_fails([*base, *out, "--method", "feature", "--replay.alpha=0.3"], capsys, "feature method")


def test_forgetting_sweep_writes_its_report(tmp_path, trained_run, reviews, text_file, capsys):
    out = tmp_path / "sweep"
    args = [
        "forgetting", "--model", str(trained_run), "--data", str(reviews), "--out", str(out),
        "--methods", "full", "--alphas", "0,0.5", "--corpora", str(text_file),
        "--replay-corpus", str(text_file), "--train-subset", "0", "--no-progress",
        "--train.max_steps=10", "--train.device=cpu", "--forgetting.context=32",
        "--forgetting.tokens=1000", "--replay.block_size=32",
    ]  # fmt: skip
    assert cli(args) == 0
    table = (out / "forgetting.md").read_text()
    assert "| full-alpha0 | full | 0 |" in table and "| full-alpha0.5 | full | 0.5 |" in table
    assert f"{text_file.name} perplexity before -> after" in table
    assert (out / "forgetting.png").stat().st_size > 10_000
    capsys.readouterr()
    assert cli(args) == 0 and capsys.readouterr().out.count("already done") == 2
    cli_fails([*args[:7], "--alphas", "0,1.5"], capsys, "every alpha must be in [0, 1)")
