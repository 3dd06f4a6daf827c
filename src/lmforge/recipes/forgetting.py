"""`lmforge forgetting`: new-task accuracy against original-task perplexity, over replay weights.

    lmforge forgetting --model SmolLM2-135M-Instruct.Q4_1.gguf --data rotten-tomatoes \
        --out runs/forget [--alphas 0,0.25,0.5,0.75] [--methods lora,full] [--key=value ...]

One `lmforge finetune --task classify --forgetting.measure=true --replay.alpha=A` run per (method,
alpha), each in a process of its own (train/replay.py, eval/forgetting.py). The report
(`forgetting.md`, `forgetting.png`) shows for every run the new task's test accuracy beside the
perplexity on held-out original-domain text (Shakespeare and the chat corpus) before and after:
how much each method forgets, and how much replay buys back at what cost in accuracy. Runs whose
result.json exists are not repeated, so a killed sweep resumes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import UserError
from lmforge.fileio import atomic_path, write_text_atomic
from lmforge.recipes.compare import run_once
from lmforge.recipes.finetune import ForgettingConfig


@dataclass
class ForgettingSweepConfig:
    model: str
    out: str
    data: str = "rotten-tomatoes"
    methods: list[str] = field(default_factory=lambda: ["lora", "full"])
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75])
    corpora: list[str] = field(default_factory=lambda: list(ForgettingConfig().corpora))
    replay_corpus: str = "shakespeare"
    train_subset: int = 1000
    overrides: list[str] = field(default_factory=list)
    """`--section.key=value` given to every run."""
    progress: bool = True


def run_name(method: str, alpha: float) -> str:
    return f"{method}-alpha{alpha:g}"


def main(cfg: ForgettingSweepConfig) -> dict[str, dict]:
    if not Path(cfg.model).exists():
        raise UserError(f"model not found: {cfg.model}")
    if any(not 0 <= a < 1 for a in cfg.alphas):
        raise UserError(f"every alpha must be in [0, 1), got {cfg.alphas}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for method in cfg.methods:
        for alpha in cfg.alphas:
            name = run_name(method, alpha)
            run_dir = out / name
            command = [
                sys.executable, "-m", "lmforge", "finetune", "--model", cfg.model,
                "--method", method, "--task", "classify", "--data", cfg.data,
                "--out", str(run_dir), "--forgetting.measure=true",
                f"--forgetting.corpora={','.join(cfg.corpora)}",
                f"--replay.alpha={alpha}", f"--replay.corpus={cfg.replay_corpus}",
                *([f"--data.train_subset={cfg.train_subset}"] if cfg.train_subset else []),
                *cfg.overrides, *([] if cfg.progress else ["--no-progress"]),
            ]  # fmt: skip
            result = run_once(name, command, run_dir)
            results[name] = result
            write_text_atomic(out / "forgetting.md", forgetting_table(cfg, results))
            plot_forgetting(cfg, results, out / "forgetting.png")
    print(f"forgetting report -> {out / 'forgetting.md'}")
    return results


def forgetting_table(cfg: ForgettingSweepConfig, results: dict[str, dict]) -> str:
    corpora = [Path(c).name for c in cfg.corpora]
    header = "| run | method | alpha | test accuracy | " + " | ".join(
        f"{c} perplexity before -> after" for c in corpora
    )
    lines = [
        f"# Forgetting: `{Path(cfg.model).name}` fine-tuned on `{cfg.data}`",
        "",
        f"Each run trains on {cfg.train_subset or 'all'} examples with the replay loss "
        f"alpha x L_original + (1 - alpha) x L_new, original text `{cfg.replay_corpus}` "
        f"(alpha 0: no replay); overrides {' '.join(cfg.overrides) or 'none'}. Perplexity on "
        "held-out original-domain text, before and after fine-tuning (eval/forgetting.py).",
        "",
        header + " |",
        "|---|---|---|---|" + "---|" * len(corpora),
    ]
    for name, r in results.items():
        cells = []
        for c in corpora:
            before, after = r.get(f"{c}_ppl_before"), r.get(f"{c}_ppl_after")
            cells.append(
                f"{before:.2f} -> {after:.2f} ({100 * (after / before - 1):+.1f}%)"
                if before and after
                else "n/a"
            )
        lines.append(
            f"| {name} | {r['method']} | {r['replay_alpha']:g} | {r['test_accuracy']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n\n![forgetting](forgetting.png)\n"


def plot_forgetting(cfg: ForgettingSweepConfig, results: dict[str, dict], path: Path) -> None:
    """Test accuracy (x) against the perplexity rise on each original corpus (y), one line per
    method through its alphas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = [Path(c).name for c in cfg.corpora]
    fig, axes = plt.subplots(1, len(corpora), figsize=(5.5 * len(corpora), 4.2), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        for method in cfg.methods:
            points = [
                (100 * r["test_accuracy"], r[f"{corpus}_ppl_after"] / r[f"{corpus}_ppl_before"])
                for r in results.values()
                if r["method"] == method and r.get(f"{corpus}_ppl_before")
            ]
            alphas = [
                r["replay_alpha"] for r in results.values()
                if r["method"] == method and r.get(f"{corpus}_ppl_before")
            ]  # fmt: skip
            if not points:
                continue
            ax.plot(*zip(*points), marker="o", label=method)
            for (x, y), a in zip(points, alphas):
                ax.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(4, 4))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("new task: test accuracy, %")
        ax.set_ylabel(f"{corpus}: perplexity after / before")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Forgetting against new-task accuracy, by replay weight alpha")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
