"""Quality: nanoGPT's CPU recipe on Tiny Shakespeare, through lmforge's own training loop.

Recipe (nanoGPT README, "I only have a macbook"): character vocabulary, 4 layers, 4 heads, width
128, block 64, batch 12, 2000 iterations, lr 1e-3 cosine-decayed to 1e-4 after 100 warmup steps,
no dropout, no biases, AdamW (0.9, 0.99), weight decay 0.1, gradient clipping 1.0. Data: the exact
file nanoGPT uses, first 90% train, last 10% validation. nanoGPT publishes validation loss 1.88.

We report the validation loss two ways: over the whole validation split (every character predicted
once, in 64-token windows) and nanoGPT's estimate (20 random batches of 12 x 64).

    python benchmarks/bench_quality.py --data ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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
def nanogpt_estimate(model, data: TokenData, iters: int = 20, seed: int = 0) -> float:
    """nanoGPT's estimate_loss(): the mean over `iters` random batches of 12 x 64."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = [
        causal_lm_loss(model, data.get_batch("val", 12, 64, gen)).item() for _ in range(iters)
    ]
    return float(np.mean(losses))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="tinyshakespeare.txt")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument(
        "--preset",
        default="gpt2-tiny",
        choices=["gpt2-tiny", "llama-tiny"],
        help="GPT-2 style (as nanoGPT) or Llama style (RoPE, RMSNorm, SwiGLU) at that shape",
    )
    ap.add_argument(
        "--no-bias", action="store_true", help="drop biases (nanoGPT's train.py default)"
    )
    args = ap.parse_args()

    data = char_data(args.data)
    torch.manual_seed(args.seed)
    shape = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, max_seq_len=64)
    if args.preset == "llama-tiny":
        shape["intermediate_size"] = 384  # SwiGLU's 8/3 rule, rounded to 64
    else:
        shape["bias"] = not args.no_bias
    model = GPT(get_preset(args.preset, vocab_size=data.vocab_size, **shape))
    cfg = TrainConfig(
        max_steps=args.iters,
        batch_size=12,
        block_size=64,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.99,
        grad_clip=1.0,
        eval_interval=args.iters,
        eval_batches=0,
        log_interval=100,
        checkpoint_interval=0,
        seed=args.seed,
        device="cpu",
        precision="fp32",
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, causal_lm_loss, data, cfg, Path(run_dir))
    wall = time.perf_counter() - start
    estimate = nanogpt_estimate(model, data)
    print(
        f"\nnanoGPT CPU recipe on {args.data.name} ({data.num_tokens('train'):,} / "
        f"{data.num_tokens('val'):,} chars), {args.iters} iterations, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"| validation loss (whole split) | {result.val_loss:.4f} |")
    print(f"| validation loss (nanoGPT estimate, 20 batches) | {estimate:.4f} |")
    print(f"| nanoGPT published | {NANOGPT_PUBLISHED} |")
    print(f"| wall time (training + final eval) | {wall:.1f} s |")
    print(f"| training throughput | {result.tokens_per_second:,.0f} tokens/s |")
    verdict = "PASS" if result.val_loss <= NANOGPT_PUBLISHED else "FAIL"
    print(f"{verdict}: validation loss {result.val_loss:.4f} vs nanoGPT {NANOGPT_PUBLISHED}")


if __name__ == "__main__":
    main()
