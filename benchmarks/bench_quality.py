"""Quality: nanoGPT's CPU recipe on Tiny Shakespeare, through lmforge's own training loop.

Recipe (nanoGPT README, "I only have a macbook"): character vocabulary, 4 layers, 4 heads, width
128, block 64, batch 12, 2000 iterations, lr 1e-3 cosine-decayed to 1e-4 after 100 warmup steps,
no dropout, no biases, AdamW (0.9, 0.99), weight decay 0.1, gradient clipping 1.0. Data: the exact
file nanoGPT uses, first 90% train, last 10% validation. nanoGPT publishes validation loss 1.88.

Two models at that shape: `gpt2-tiny` is nanoGPT's own architecture (learned positions,
LayerNorm, GELU, no biases); `llama-tiny` is the Llama style (RoPE, RMSNorm, SwiGLU). We report the
validation loss two ways: over the whole validation split (every character predicted once, in
64-token windows) and nanoGPT's estimate (20 random batches of 12 x 64), with the spread of that
estimate over 100 draws: nanoGPT's published figure is one such draw.

    python benchmarks/bench_quality.py --data ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, table

from lmforge.data.shards import TokenData
from lmforge.models import GPT, get_preset
from lmforge.tokenizer import train_char
from lmforge.train.loop import TrainConfig, train
from lmforge.train.losses import causal_lm_loss

NANOGPT_PUBLISHED = 1.88


def char_data(path: Path) -> TokenData:
    text = path.read_text(encoding="utf-8")
    tok = train_char(text, special_tokens=())  # nanoGPT's 65-character vocabulary
    ids = np.array(tok.encode(text), dtype=np.uint16)
    n = int(0.9 * len(ids))
    return TokenData.from_arrays(ids[:n], ids[n:], tok.vocab_size)


@torch.no_grad()
def nanogpt_estimates(
    model, data: TokenData, draws: int = 100, iters: int = 20, seed: int = 0
) -> np.ndarray:
    """`draws` independent runs of nanoGPT's estimate_loss(): each the mean over `iters` random
    validation batches of 12 x 64. nanoGPT reports one such draw; their spread shows how far a
    single draw can fall from the loss over the whole split."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = [
        causal_lm_loss(model, data.get_batch("val", 12, 64, gen)).item()
        for _ in range(draws * iters)
    ]
    return np.array(losses).reshape(draws, iters).mean(axis=1)  # (draws,)


STYLES = {
    # nanoGPT's own architecture: learned positions, LayerNorm, GELU MLP, no biases
    "gpt2-tiny": dict(bias=False),
    # the same shape in Llama style: rotary positions, RMSNorm, SwiGLU (8/3 rule, rounded to 64)
    "llama-tiny": dict(intermediate_size=384),
}


def run(data: TokenData, preset: str, iters: int, seed: int) -> dict:
    torch.manual_seed(seed)
    shape = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, max_seq_len=64)
    model = GPT(get_preset(preset, vocab_size=data.vocab_size, **shape, **STYLES[preset]))
    cfg = TrainConfig(
        max_steps=iters,
        batch_size=12,
        block_size=64,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.99,
        grad_clip=1.0,
        eval_interval=iters,
        eval_batches=0,
        log_interval=100,
        checkpoint_interval=0,
        seed=seed,
        device="cpu",
        precision="fp32",
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, causal_lm_loss, data, cfg, Path(run_dir))
    return {
        "val": result.val_loss,
        "estimates": nanogpt_estimates(model, data),
        "wall": time.perf_counter() - start,
        "tok_s": result.tokens_per_second,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="tinyshakespeare.txt")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--preset", choices=list(STYLES), help="only this style (default: both)")
    args = ap.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"error: {args.data} not found (the Tiny Shakespeare file nanoGPT uses)")
    data = char_data(args.data)
    print(f"machine: {machine()}")
    print(
        f"nanoGPT CPU recipe on {args.data.name} ({data.num_tokens('train'):,} train / "
        f"{data.num_tokens('val'):,} validation characters), {args.iters} iterations"
    )
    rows = []
    for preset in [args.preset] if args.preset else list(STYLES):
        r = run(data, preset, args.iters, args.seed)
        verdict = "PASS" if r["val"] <= NANOGPT_PUBLISHED else "FAIL"
        rows.append(
            (
                preset,
                f"{r['val']:.4f}",
                f"{r['estimates'][0]:.4f} ({np.percentile(r['estimates'], 5):.3f}-"
                f"{np.percentile(r['estimates'], 95):.3f})",
                f"{r['wall']:.0f} s",
                f"{r['tok_s']:,.0f}",
                f"<= {NANOGPT_PUBLISHED} {verdict}",
            )
        )
    print(
        table(
            rows,
            (
                "model at that shape",
                "val loss (whole split)",
                "nanoGPT's 20-batch estimate (5-95% of 100 draws)",
                "wall time",
                "train tok/s",
                "target",
            ),
        )
    )


if __name__ == "__main__":
    main()
