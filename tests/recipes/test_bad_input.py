"""Bad input ends with one clear line on stderr, exit status 2, and nothing half-written."""

import json
import shutil
import subprocess
import sys

import pytest

from lmforge.cli import main as cli


def fails(args, capsys, match: str):
    code = cli(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    return lines[0]


def test_missing_empty_and_non_utf8_inputs(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    for path, match in ((tmp_path / "nope.txt", "not found"), (empty, "empty"), (binary, "UTF-8")):
        fails(
            ["tokenizer", "train", "--input", str(path), "--out", str(tmp_path / "t")],
            capsys,
            match,
        )
        assert not (tmp_path / "t").exists()


def test_prepare_failure_leaves_no_directory(tmp_path, capsys, prepared):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fails(
        [
            "prepare",
            "--input",
            str(empty),
            "--tokenizer",
            str(prepared / "tok"),
            "--out",
            str(tmp_path / "data"),
        ],
        capsys,
        "empty",
    )
    assert not (tmp_path / "data").exists()


def test_unknown_config_key(tmp_path, capsys, prepared):
    fails(
        [
            "pretrain",
            "--out",
            str(tmp_path / "r"),
            f"--data.dir={prepared / 'data'}",
            "--train.learning_rate=1e-3",
        ],
        capsys,
        "unknown config key 'train.learning_rate'",
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  preset: gpt2-tiny\n  layers: 3\n")
    fails(
        [
            "pretrain",
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "r"),
            f"--data.dir={prepared / 'data'}",
        ],
        capsys,
        "unknown config key 'model.layers'",
    )
    assert not (tmp_path / "r").exists()


def test_tokenizer_that_does_not_match_the_model(tmp_path, capsys, trained_run):
    model_dir = tmp_path / "m"
    shutil.copytree(trained_run, model_dir, ignore=shutil.ignore_patterns("checkpoints"))
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    added = tok.setdefault("added_tokens", [])
    for i in range(5):
        added.append(
            {
                "id": 300 + i,
                "content": f"<extra_{i}>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
    (model_dir / "tokenizer.json").write_text(json.dumps(tok))
    fails(
        ["generate", "--model", str(model_dir), "--prompt", "The"], capsys, "do not belong together"
    )
    fails(
        [
            "pretrain",
            "--out",
            str(tmp_path / "r"),
            f"--data.dir={trained_run}",
            "--model.vocab_size=100",
        ],
        capsys,
        "",
    )


def test_corrupt_checkpoint_on_resume_and_truncated_weights(
    tmp_path, capsys, trained_run, prepared
):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    fails(
        ["pretrain", "--out", str(run), "--resume", "--train.max_steps=80", "--no-progress"],
        capsys,
        "corrupt or truncated",
    )
    (run / "model.safetensors").write_bytes(b"\x00" * 10)
    fails(["generate", "--model", str(run), "--prompt", "The"], capsys, "corrupt or truncated")


def test_prompt_longer_than_the_context(capsys, trained_run):
    fails(
        ["generate", "--model", str(trained_run), "--prompt", "the king " * 200], capsys, "context"
    )


@pytest.mark.parametrize(
    "flag, value, match",
    [
        ("--top-p", "0", "top_p"),
        ("--top-p", "1.5", "top_p"),
        ("--temperature", "-1", "temperature"),
        ("--max-new-tokens", "0", "max_new_tokens"),
    ],
)
def test_out_of_range_sampling(capsys, trained_run, flag, value, match):
    fails(["generate", "--model", str(trained_run), "--prompt", "The", flag, value], capsys, match)


def test_missing_model_and_data_dirs(tmp_path, capsys):
    fails(["generate", "--model", str(tmp_path / "none"), "--prompt", "x"], capsys, "not found")
    fails(
        ["pretrain", "--out", str(tmp_path / "r"), f"--data.dir={tmp_path}"],
        capsys,
        "lmforge prepare",
    )


def test_real_process_exit_status_and_single_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "generate",
            "--model",
            str(tmp_path / "none"),
            "--prompt",
            "x",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
