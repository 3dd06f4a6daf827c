"""Training throughput: lmforge's training loop against transformers' GPT2LMHeadModel.

Both train the same GPT-2 shape on the same random token batches: the peer with a plain loop
(forward with labels, backward, clip, torch.optim.AdamW step), lmforge through `train/loop.py`
exactly as `lmforge pretrain` runs it, on its `gpt2-tiny` preset resized to the shape (as nanoGPT's
recipe: no biases, exact GELU; the same matrices and FLOPs as GPT-2 up to the bias vectors). Rounds alternate between the two so that machine noise hits
both (each measurement in a fresh process); we report the median tokens/s of each and their ratio.

CPU shapes (ANCHORS.md): nanoGPT's CPU Shakespeare shape (4 layers, 4 heads, width 128, block 64,
batch 12, character vocabulary of 65) and 6 layers, width 384, block 256, batch 8, vocab 50304; fp32.
GPU shapes (`--device cuda`): nanoGPT's GPU Shakespeare shape (6 layers, 6 heads, width 384, block
256, batch 64, vocabulary 65) and GPT-2 124M (12 layers, 12 heads, width 768, block 1024, batch 16,
vocab 50304); both sides under bf16 autocast with fp32 weights, as `precision: auto` trains on a
GPU, and also compiled (`torch.compile` on the peer's model, `train.compile=true` on ours). On a
GPU the table adds model FLOPs utilisation: 6N + 12 * layers * width * T FLOPs a token (PaLM,
appendix B; `GPT.flops_per_token`) over the dense bf16 peak of an H100 SXM (989 TFLOP/s), and the
peak memory allocated.

    python benchmarks/bench_train.py [--rounds 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
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


SHAPES = {
    "cpu": [
        Shape(
            "nanoGPT CPU Shakespeare (4L/4H/128, T=64, B=12, V=65)",
            layers=4,
            heads=4,
            width=128,
            block=64,
            batch=12,
            vocab=65,
            window=60,
            windows=4,
            target=1.3,
        ),
        Shape(
            "6L/6H/384, T=256, B=8, V=50304",
            layers=6,
            heads=6,
            width=384,
            block=256,
            batch=8,
            vocab=50304,
            window=4,
            windows=2,
            target=1.2,
        ),
    ],
    "cuda": [
        Shape(
            "nanoGPT GPU Shakespeare (6L/6H/384, T=256, B=64, V=65)",
            layers=6,
            heads=6,
            width=384,
            block=256,
            batch=64,
            vocab=65,
            window=50,
            windows=4,
            target=1.0,
        ),
        Shape(
            "GPT-2 124M (12L/12H/768, T=1024, B=16, V=50304)",
            layers=12,
            heads=12,
            width=768,
            block=1024,
            batch=16,
            vocab=50304,
            window=10,
            windows=4,
            target=1.0,
        ),
    ],
}
"""Device -> shapes. The GPU targets ask only for parity with transformers: a first measurement."""
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM (datasheet)
PRECISION = {"cpu": "fp32", "cuda": "bf16"}  # what `precision: auto` picks here and on a GPU


def random_data(shape: Shape) -> TokenData:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, shape.vocab, 2_000_000 if shape.vocab < 1000 else 400_000)
    dtype = np.uint16
    return TokenData.from_arrays(tokens.astype(dtype), tokens[:20_000].astype(dtype), shape.vocab)


def ours_model(shape: Shape) -> GPT:
    """lmforge's `gpt2-tiny` preset (nanoGPT's architecture) resized to the shape."""
    torch.manual_seed(0)
    return GPT(
        get_preset(
            "gpt2-tiny",
            vocab_size=shape.vocab,
            hidden_size=shape.width,
            num_layers=shape.layers,
            num_heads=shape.heads,
            max_seq_len=shape.block,
        )
    )


def ours_tokens_per_s(shape: Shape, data: TokenData, device: str, compile: bool = False) -> float:
    """Tokens/s of lmforge's own loop, from its metrics log (windows after the first)."""
    model = ours_model(shape)
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
        device=device,
        precision=PRECISION[device],
        compile=compile,
    )
    with tempfile.TemporaryDirectory() as run:
        train(model, causal_lm_loss, data, cfg, Path(run), show_progress=False)
        records = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # skip warm-up window
    return median(rates)


def hf_tokens_per_s(shape: Shape, data: TokenData, device: str, compile: bool = False) -> float:
    """Tokens/s of GPT2LMHeadModel in a plain AdamW loop (the peer most users start from), under
    bf16 autocast on a GPU; `compile`: its model compiled by torch.compile."""
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
    model = GPT2LMHeadModel(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.99))
    forward = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(0)
    amp = torch.autocast("cuda", torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def step() -> None:
        x, _ = data.get_batch("train", shape.batch, shape.block, gen)
        x = x.to(device, non_blocking=True)
        with amp:
            loss = forward(input_ids=x, labels=x).loss
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


WORKERS = {
    "transformers": ("transformers", False),
    "transformers, compile": ("transformers", True),
    "lmforge": ("lmforge", False),
    "lmforge, compile": ("lmforge", True),
}
"""Run name -> (side, compiled). On a CPU the compiled peer is left out (as in earlier sessions)."""


def worker(name: str, shape_index: int, device: str) -> None:
    """Measure one run in this process; print {"tokens_per_s": ..., "peak_gib": ...} as JSON."""
    shape = SHAPES[device][shape_index]
    data = random_data(shape)
    side, compile = WORKERS[name]
    measure = hf_tokens_per_s if side == "transformers" else ours_tokens_per_s
    rate = measure(shape, data, device, compile=compile)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    print(json.dumps({"tokens_per_s": rate, "peak_gib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape")
    ap.add_argument("--device", choices=list(SHAPES), default="cpu")
    ap.add_argument("--shape", type=int, choices=range(2), help="only this shape (of the device's)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.worker:
        return worker(args.worker, args.shape, args.device)
    print(f"machine: {machine()}")
    names = [
        name
        for name, (side, compiled) in WORKERS.items()
        if not (compiled and (args.no_compile or (side == "transformers" and args.device == "cpu")))
    ]
    on_gpu = args.device == "cuda"
    rows = []
    for i, shape in enumerate(SHAPES[args.device]):
        if args.shape is not None and i != args.shape:
            continue
        results: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names:
                shape_args = ("--shape", str(i), "--device", args.device)
                results[name].append(run_worker(__file__, name, *shape_args))
            now = ", ".join(f"{k} {v[-1]['tokens_per_s']:,.0f}" for k, v in results.items())
            print(f"  {shape.name} round {r + 1}: {now} tokens/s", flush=True)
        rates = {name: median([m["tokens_per_s"] for m in ms]) for name, ms in results.items()}
        flops_per_token = ours_model(shape).flops_per_token(shape.block)
        for name in names:
            ratio = rates[name] / rates["transformers"]
            row = [shape.name, name, f"{rates[name]:,.0f}", f"{ratio:.2f}x"]
            if on_gpu:
                mfu = rates[name] * flops_per_token / H100_BF16_PEAK
                row += [f"{100 * mfu:.1f}%", f"{max(m['peak_gib'] for m in results[name]):.1f}"]
            if name.startswith("lmforge"):
                verdict = "PASS" if ratio >= shape.target else "FAIL"
                row.append(f">= {shape.target}x {verdict}")
            else:
                row.append("")
            rows.append(tuple(row))
    header = ["training shape", "run", "tok/s", "vs transformers"]
    header += ["MFU (H100 bf16)", "peak GiB"] if on_gpu else []
    print(table(rows, (*header, "target")))


if __name__ == "__main__":
    main()
