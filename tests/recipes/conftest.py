"""Fixtures for end-to-end runs through the CLI: a small English text and a trained tiny run."""

import random

import pytest

from lmforge.cli import main as cli

WORDS = (
    "the king and queen of the realm spoke to their people about war and peace while the river "
    "ran past the castle walls and the night was long and full of stars above the quiet town"
).split()


def make_text(n_lines: int = 600, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        start = rng.randrange(len(WORDS) - 8)
        lines.append(" ".join(WORDS[start : start + rng.randint(4, 8)]).capitalize() + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, text_file):
    """A BPE tokenizer and prepared data directory for the small corpus."""
    root = tmp_path_factory.mktemp("prepared")
    assert (
        cli(
            [
                "tokenizer",
                "train",
                "--input",
                str(text_file),
                "--vocab-size",
                "300",
                "--out",
                str(root / "tok"),
            ]
        )
        == 0
    )
    assert (
        cli(
            [
                "prepare",
                "--input",
                str(text_file),
                "--tokenizer",
                str(root / "tok"),
                "--out",
                str(root / "data"),
            ]
        )
        == 0
    )
    return root


TINY_RUN = [
    "--model.preset=gpt2-tiny",
    "--model.hidden_size=48",
    "--model.num_layers=2",
    "--model.num_heads=2",
    "--model.max_seq_len=64",
    "--train.batch_size=8",
    "--train.block_size=32",
    "--train.lr=3e-3",
    "--train.warmup_steps=5",
    "--train.eval_interval=20",
    "--train.eval_batches=4",
    "--train.log_interval=5",
    "--train.checkpoint_interval=20",
    "--train.device=cpu",
    "--no-progress",
]


@pytest.fixture
def tiny_run_args():
    return list(TINY_RUN)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, prepared):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert (
        cli(
            [
                "pretrain",
                "--out",
                str(run),
                f"--data.dir={prepared / 'data'}",
                "--train.max_steps=60",
                *TINY_RUN,
            ]
        )
        == 0
    )
    return run
