"""`lmforge quickstart` end to end on a small source, and `lmforge presets`."""

from lmforge.cli import main as cli


def quickstart(out, source, steps: int) -> int:
    args = ["quickstart", "--out", str(out), "--source", str(source), "--steps", str(steps)]
    return cli([*args, "--vocab-size", "300"])


def test_quickstart_small(tmp_path, text_file, capsys):
    out = tmp_path / "qs"
    assert quickstart(out, text_file, 30) == 0
    printed = capsys.readouterr().out
    assert "validation loss" in printed and "samples" in printed
    for name in ("report.md", "loss.png", "model.safetensors", "tokenizer.json", "data/meta.json"):
        assert (out / name).exists(), name
    assert quickstart(out, text_file, 5) == 0  # a second run replaces its own earlier output
    assert cli(["generate", "--model", str(out), "--prompt", "The", "--max-new-tokens", "5"]) == 0


def test_quickstart_refuses_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert cli(["quickstart", "--out", str(tmp_path), "--steps", "5"]) == 2
    assert (tmp_path / "mine.txt").exists()


def test_presets_lists_the_shapes(capsys):
    assert cli(["presets"]) == 0
    out = capsys.readouterr().out
    assert "gpt2" in out and "124.44M" in out and "smollm2-135m" in out
