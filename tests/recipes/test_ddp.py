"""Two-process data parallelism under torchrun (gloo on CPU)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lmforge.models.loading import load_model


def test_torchrun_two_processes(tmp_path, prepared, tiny_run_args):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun) if torchrun.exists() else shutil.which("torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lmforge",
        "pretrain",
        "--out",
        str(tmp_path / "run"),
        f"--data.dir={prepared / 'data'}",
        "--train.max_steps=20",
        *tiny_run_args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es)" in proc.stdout
    recs = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    last = [r for r in recs if "loss" in r][-1]
    assert last["step"] == 20
    assert last["tokens"] == 20 * 8 * 32 * 2  # steps x batch x block x world size
    assert [r for r in recs if "loss" in r][0]["loss"] > last["loss"]
    assert load_model(tmp_path / "run").config.num_layers == 2
