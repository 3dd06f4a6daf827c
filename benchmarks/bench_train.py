"""Training throughput: lmforge's training loop against transformers' GPT2LMHeadModel.

Both train the same GPT-2 shape on the same random token batches: the peer with a plain loop
(forward with labels, backward, clip, torch.optim.AdamW step), lmforge through `train/loop.py`
exactly as `lmforge pretrain` runs it, on its `gpt2-tiny` preset resized to the shape (as nanoGPT's
recipe: no biases, exact GELU; the same matrices and FLOPs as GPT-2 up to the bias vectors). Rounds alternate between the two so that machine noise hits
both (each measurement in a fresh process); we report the median tokens/s of each and their ratio.

Shapes (ANCHORS.md): nanoGPT's CPU Shakespeare shape (4 layers, 4 heads, width 128, block 64,
batch 12, character vocabulary of 65) and 6 layers, width 384, block 256, batch 8, vocab 50304.

    python benchmarks/bench_train.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import machine, median, run_worker, table, timed

from lmforge.data.shards import TokenData
from lmforge.models import GPT, get_preset
from lmforge.train.loop import TrainConfig, train
from lmforge.train.losses import causal_lm_loss


@dataclass
class Shape:
    name: str
    layers: int
    heads: int
    width: int
    block: int
    batch: int
    vocab: int
    window: int  # steps per timed window
    windows: int  # timed windows per measurement (after one warm-up window)
    target: float  # required ratio over transformers


SHAPES = [
    Shape(
        "nanoGPT CPU Shakespeare (4L/4H/128, T=64, B=12, V=65)", 4, 4, 128, 64, 12, 65, 60, 4, 1.3
    ),
    Shape("6L/6H/384, T=256, B=8, V=50304", 6, 6, 384, 256, 8, 50304, 4, 2, 1.2),
]


def random_data(shape: Shape) -> TokenData:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, shape.vocab, 2_000_000 if shape.vocab < 1000 else 400_000)
    dtype = np.uint16
    return TokenData.from_arrays(tokens.astype(dtype), tokens[:20_000].astype(dtype), shape.vocab)


def ours_tokens_per_s(shape: Shape, data: TokenData, compile: bool = False) -> float:
    """Tokens/s of lmforge's own loop, from its metrics log (windows after the first)."""
    torch.manual_seed(0)
    model = GPT(
        get_preset(
            "gpt2-tiny",
            vocab_size=shape.vocab,
            hidden_size=shape.width,
            num_layers=shape.layers,
            num_heads=shape.heads,
            max_seq_len=shape.block,
        )
    )
    cfg = TrainConfig(
        max_steps=shape.window * (shape.windows + 1),
        batch_size=shape.batch,
        block_size=shape.block,
        lr=1e-4,
        warmup_steps=1,
        log_interval=shape.window,
        eval_interval=10**9,
        eval_batches=1,
        checkpoint_interval=0,
        device="cpu",
        precision="fp32",
        compile=compile,
    )
    with tempfile.TemporaryDirectory() as run:
        train(model, causal_lm_loss, data, cfg, Path(run), show_progress=False)
        records = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # skip warm-up window
    return median(rates)


def hf_tokens_per_s(shape: Shape, data: TokenData) -> float:
    """Tokens/s of GPT2LMHeadModel in a plain AdamW loop (the peer most users start from)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=shape.vocab,
        n_positions=shape.block,
        n_embd=shape.width,
        n_layer=shape.layers,
        n_head=shape.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x, _ = data.get_batch("train", shape.batch, shape.block, gen)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(shape.window):  # warm-up window
        step()
    rates = []
    for _ in range(shape.windows):
        seconds = timed(lambda: [step() for _ in range(shape.window)])
        rates.append(shape.window * shape.batch * shape.block / seconds)
    return median(rates)


WORKERS = {"transformers": None, "lmforge": False, "lmforge, compile": True}


def worker(name: str, shape_index: int) -> None:
    """Measure one run in this process and print {"tokens_per_s": ...} as JSON."""
    shape = SHAPES[shape_index]
    data = random_data(shape)
    if name == "transformers":
        rate = hf_tokens_per_s(shape, data)
    else:
        rate = ours_tokens_per_s(shape, data, compile=WORKERS[name])
    print(json.dumps({"tokens_per_s": rate}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape")
    ap.add_argument("--shape", type=int, choices=range(len(SHAPES)), help="only this shape")
    ap.add_argument("--no-compile", action="store_true", help="skip the train.compile=true rows")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.worker:
        return worker(args.worker, args.shape)
    print(f"machine: {machine()}")
    names = [n for n in WORKERS if not (args.no_compile and WORKERS[n])]
    rows = []
    for i, shape in enumerate(SHAPES):
        if args.shape is not None and i != args.shape:
            continue
        rates: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names:
                rates[name].append(run_worker(__file__, name, "--shape", str(i))["tokens_per_s"])
            now = ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
            print(f"  {shape.name} round {r + 1}: {now} tokens/s", flush=True)
        peer = median(rates["transformers"])
        for name in names[1:]:
            ratio = median(rates[name]) / peer
            verdict = "PASS" if ratio >= shape.target else "FAIL"
            rows.append(
                (
                    shape.name,
                    name,
                    f"{median(rates[name]):,.0f}",
                    f"{peer:,.0f}",
                    f"{ratio:.2f}x",
                    f">= {shape.target}x {verdict}",
                )
            )
    print(table(rows, ("training shape", "run", "tok/s", "transformers tok/s", "ratio", "target")))


if __name__ == "__main__":
    main()
