"""`lmforge compare`: every way of adapting one model to one classification task, side by side.

    lmforge compare --model SmolLM2-135M-Instruct.Q4_1.gguf --data rotten-tomatoes --out runs/cmp \
        [--methods zero-shot,few-shot,feature,prompt,adapter,lora,qlora,full] [--shots 4] \
        [--train-subset 1000] [--key=value ...]

Each row runs in a process of its own (so peak memory is that row's alone): `lmforge eval
classify` for the prompting rows (zero-shot, and few-shot with `--shots` demonstrations),
`lmforge finetune --task classify --method M` for the others, on the same data, split and test
set, every fine-tuning run with the same `--key=value` overrides (e.g. `--train.max_steps=200`).
Each row's directory keeps its own report; `comparison.md` (the table: test accuracy, macro F1,
trainable parameters, peak memory, wall time, checkpoint size) and `comparison.png` (accuracy
against trainable parameters and against peak memory) are written after every row. A row whose
result.json exists is not run again, so a killed comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import UserError
from lmforge.fileio import atomic_path, write_text_atomic
from lmforge.recipes.finetune import RESULT_FILE

PROMPTING = ("zero-shot", "few-shot")
FINETUNING = ("feature", "prompt", "adapter", "lora", "qlora", "full")
ROWS = (*PROMPTING, *FINETUNING)


@dataclass
class CompareConfig:
    model: str
    out: str
    data: str = "rotten-tomatoes"
    methods: list[str] = field(default_factory=lambda: list(ROWS))
    shots: int = 4
    """Demonstrations of the few-shot row."""
    train_subset: int = 1000
    """Training examples of every fine-tuning row (0 = all)."""
    overrides: list[str] = field(default_factory=list)
    """`--section.key=value` given to every fine-tuning run."""
    progress: bool = True


def row_command(cfg: CompareConfig, row: str, row_dir: Path) -> list[str]:
    """The command line that runs one row."""
    lmforge = [sys.executable, "-m", "lmforge"]
    common = ["--model", cfg.model, "--data", cfg.data, "--out", str(row_dir)]
    quiet = [] if cfg.progress else ["--no-progress"]
    if row in PROMPTING:
        shots = "0" if row == "zero-shot" else str(cfg.shots)
        return [*lmforge, "eval", "classify", *common, "--shots", shots, *quiet]
    subset = [f"--data.train_subset={cfg.train_subset}"] if cfg.train_subset else []
    return [
        *lmforge, "finetune", "--method", row, "--task", "classify", *common, *subset,
        *cfg.overrides, *quiet,
    ]  # fmt: skip


def read_result(row_dir: Path) -> dict | None:
    path = row_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged result: the row runs again


def main(cfg: CompareConfig) -> dict[str, dict]:
    split_options = [o for o in cfg.overrides if o.startswith("--data.")]
    if split_options:
        raise UserError(
            f"{split_options[0]}: every row must see the same data and test split, and the "
            "prompting rows take no --data options; use --data and --train-subset"
        )
    unknown = [m for m in cfg.methods if m not in ROWS]
    if unknown:
        raise UserError(f"unknown row {unknown[0]!r}; choose from: {', '.join(ROWS)}")
    if not Path(cfg.model).exists():
        raise UserError(f"model not found: {cfg.model}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for row in cfg.methods:
        results[row] = run_once(row, row_command(cfg, row, out / row), out / row)
        write_text_atomic(out / "comparison.md", comparison_table(cfg, results))
        plot_comparison(results, out / "comparison.png")
    print(f"comparison -> {out / 'comparison.md'}")
    return results


def run_once(name: str, command: list[str], run_dir: Path) -> dict:
    """The result of `command`, which writes run_dir/result.json: read back if it is there, else
    run in a child process (resuming the run from its checkpoints if a killed one left some)."""
    result = read_result(run_dir)
    if result is not None:
        print(f"[{name}] already done ({run_dir / RESULT_FILE})")
        return result
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        command = [*command, "--resume"]
    print(f"[{name}] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command)
    if done.returncode != 0:
        raise UserError(f"{name} failed (exit {done.returncode}); see its output above")
    result = read_result(run_dir)
    if result is None:
        raise UserError(f"{name} wrote no {RESULT_FILE} in {run_dir}")
    print(f"[{name}] done in {time.perf_counter() - started:.0f} s", flush=True)
    return result


MEMORY_NOTE = {
    "RSS": "resident set size",
    "GPU": "CUDA memory allocated; the process's RSS is in its report",
}


def _size(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB" if n else "0"


def peak_memory_mb(result: dict) -> float:
    """A row's peak memory: CUDA memory allocated if it ran on a GPU, else its process's RSS."""
    cuda = result.get("peak_cuda_mb")
    return cuda if cuda is not None else result["peak_rss_mb"]


def memory_kind(results: dict[str, dict]) -> str:
    return "GPU" if any(r.get("peak_cuda_mb") is not None for r in results.values()) else "RSS"


def comparison_table(cfg: CompareConfig, results: dict[str, dict]) -> str:
    lines = [
        f"# Adapting `{Path(cfg.model).name}` to `{cfg.data}`",
        "",
        f"Test split of the seeded split (as `finetune --task classify`); fine-tuning rows trained "
        f"on {cfg.train_subset or 'all'} examples with {' '.join(cfg.overrides) or 'defaults'}; "
        f"the few-shot row uses {cfg.shots} demonstrations. Peak memory is each row's own "
        f"process ({MEMORY_NOTE[memory_kind(results)]}). Each row's directory holds its full "
        "report.",
        "",
        "| method | test accuracy | macro F1 | trainable parameters | peak memory | wall time "
        "| checkpoint size |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, r in results.items():
        share = 100 * r["trainable_params"] / max(r["total_params"], 1)
        lines.append(
            f"| {row} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | "
            f"{r['trainable_params']:,} ({share:.3g}%) | {peak_memory_mb(r):,.0f} MiB | "
            f"{r['seconds']:,.0f} s | {_size(r['checkpoint_bytes'])} |"
        )
    return "\n".join(lines) + "\n\n![comparison](comparison.png)\n"


def plot_comparison(results: dict[str, dict], path: Path) -> None:
    """Test accuracy against trainable parameters and against peak memory, one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, cost, label in (
        (
            axes[0],
            lambda r: r["trainable_params"],
            "trainable parameters (log scale; prompting: 1)",
        ),
        (axes[1], peak_memory_mb, f"peak memory, MiB ({memory_kind(results)})"),
    ):
        for row, r in results.items():
            x = max(cost(r), 1)
            ax.scatter(x, 100 * r["test_accuracy"])
            ax.annotate(
                row, (x, 100 * r["test_accuracy"]), textcoords="offset points", xytext=(4, 4)
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[0].set_ylabel("test accuracy, %")
    fig.suptitle("Accuracy and cost of each adaptation method")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
