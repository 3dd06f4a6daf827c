"""Greedy decoding speed: lmforge's KV-cached engine against transformers' generate().

One GPT-2-shaped model (6 layers, width 384, 6 heads, vocabulary 50304, random weights) is built in
transformers and loaded into lmforge through our converter, so both decode the same weights; the
benchmark checks that they produce the same tokens. Prompt of 16 tokens, 256 new tokens, greedy,
batch 1 and batch 8, fp32. Rounds alternate between the two; medians are reported.
llama.cpp runs this model at 201 tokens/s (f32, batch 1) on our 2-core machine (ANCHORS.md).
`--device cuda` decodes on the GPU, in fp32 or (`--dtype bf16`) with both models' weights in bf16;
in bf16 the two may part ways at a near tie, so the share of equal tokens is reported. `--compile`
decodes lmforge's side with compiled steps (infer/compiled.py).

    python benchmarks/bench_decode.py [--rounds 3] [--device cpu|cuda] [--dtype fp32|bf16] [--compile]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from common import machine, median, table, timed

from lmforge.infer import Engine, SamplingParams, compile_decoding
from lmforge.interop.hf_gpt2 import config_from_hf, state_from_hf
from lmforge.models import GPT
from lmforge.models.loading import load_model_state

PROMPT, NEW, TARGET = 16, 256, 2.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_pair(device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The transformers model and ours, with the same random weights, on `device` in `dtype`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_cfg = GPT2Config(
        vocab_size=50304,
        n_positions=512,
        n_embd=384,
        n_layer=6,
        n_head=6,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    hf = GPT2LMHeadModel(hf_cfg).eval()
    cfg = config_from_hf(hf_cfg.to_dict())
    ours = GPT(cfg).eval()
    load_model_state(ours, state_from_hf(hf.state_dict(), cfg), "transformers")
    return hf.to(device, dtype), ours.to(device, dtype)


def same_share(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two batches of token rows agree."""
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights' dtype")
    ap.add_argument("--compile", action="store_true", help="lmforge decodes with compiled steps")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    compiled = ", lmforge compiled" if args.compile else ""
    print(f"machine: {machine()}; decoding on {args.device} in {args.dtype}{compiled}")
    hf, ours = build_pair(args.device, DTYPES[args.dtype])
    if args.compile:
        compile_decoding(ours)  # compiled at the first generation (the warm-up below)
    engine = Engine(ours)
    params = SamplingParams(temperature=0, max_new_tokens=NEW)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompt = torch.randint(
            1, 50304, (batch, PROMPT), generator=torch.Generator().manual_seed(1)
        ).to(args.device)

        def run_hf(prompt=prompt):
            with torch.inference_mode():
                return hf.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=False,
                    max_new_tokens=NEW,
                    min_new_tokens=NEW,
                    use_cache=True,
                )

        def run_ours(prompt=prompt):
            return engine.generate_ids(prompt.tolist(), params)

        same = same_share(run_hf()[:, PROMPT:].tolist(), run_ours())  # also a warm-up
        ours_rates, hf_rates = [], []
        for _ in range(args.rounds):
            hf_rates.append(batch * NEW / timed(run_hf))
            ours_rates.append(batch * NEW / timed(run_ours))
        ratio = median(ours_rates) / median(hf_rates)
        print(
            f"  batch {batch}: lmforge {median(ours_rates):,.0f}, transformers "
            f"{median(hf_rates):,.0f} new tokens/s, same tokens: {same:.0%}",
            flush=True,
        )
        verdict = "PASS" if ratio >= TARGET and same == 1 else "FAIL"
        rows.append(
            (
                batch,
                f"{median(ours_rates):,.0f}",
                f"{median(hf_rates):,.0f}",
                f"{ratio:.2f}x",
                f"{same:.0%}",
                f">= {TARGET}x {verdict}",
            )
        )
    print(
        table(
            rows,
            (
                "batch",
                "lmforge new tok/s",
                "transformers new tok/s",
                "ratio",
                "same tokens",
                "target",
            ),
        )
    )


if __name__ == "__main__":
    main()
