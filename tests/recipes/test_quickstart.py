"""`lmforge quickstart` end to end on a small source, and `lmforge presets`."""

import json

import pytest

from lmforge.cli import main as cli


def quickstart(out, source, steps: int, *extra: str) -> int:
    args = ["quickstart", "--out", str(out), "--source", str(source), "--steps", str(steps)]
    return cli([*args, "--vocab-size", "300", *extra])


def test_quickstart_small(tmp_path, text_file, capsys):
    out = tmp_path / "qs"
    assert quickstart(out, text_file, 30) == 0
    printed = capsys.readouterr().out
    assert "validation loss" in printed and "-- before pre-training:" in printed
    for name in ("report.md", "loss.png", "model.safetensors", "tokenizer.json", "data/meta.json"):
        assert (out / name).exists(), name
    assert quickstart(out, text_file, 5) == 0  # a second run replaces its own earlier output
    assert cli(["generate", "--model", str(out), "--prompt", "The", "--max-new-tokens", "5"]) == 0


@pytest.mark.parametrize(
    "family, marker, use",
    [
        ("bert", "(masked: ", ["fill-mask", "--text", "the [MASK] is"]),
        ("t5", "(dropped: ", ["generate", "--prompt", "the <extra_id_0> is", "--temperature", "0"]),
    ],
)
def test_quickstart_encoder_families(tmp_path, text_file, capsys, family, marker, use):
    out = tmp_path / family
    assert quickstart(out, text_file, 8, "--family", family) == 0
    printed = capsys.readouterr().out
    # the same passages, once from the random initialisation and once after pre-training
    assert printed.count("-- before pre-training:") == printed.count("-- after:") >= 1
    assert marker in printed
    assert json.loads((out / "config.json").read_text())["family"] == family
    assert "## Before and after pre-training" in (out / "report.md").read_text()
    assert cli([use[0], "--model", str(out), *use[1:]]) == 0


def test_quickstart_unknown_family_is_refused(tmp_path, capsys):
    assert cli(["quickstart", "--out", str(tmp_path / "x"), "--family", "rnn"]) == 2
    assert "rnn" in capsys.readouterr().err


def test_quickstart_refuses_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert cli(["quickstart", "--out", str(tmp_path), "--steps", "5"]) == 2
    assert (tmp_path / "mine.txt").exists()


def test_presets_lists_the_shapes(capsys):
    assert cli(["presets"]) == 0
    out = capsys.readouterr().out
    assert "gpt2" in out and "124.44M" in out and "smollm2-135m" in out
