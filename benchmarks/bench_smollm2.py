"""SmolLM2-135M-Instruct on CPU: lmforge against transformers on the same GGUF file.

Both sides load the offline Q4_1 GGUF (`lmforge data fetch smollm2-135m-instruct`) and dequantize it
to fp32: lmforge through `interop/gguf.py`, transformers through `from_pretrained(gguf_file=...)`.
Measured, each side in a fresh process of its own (so peak memory is its own):
- greedy decoding tokens/s with the KV cache, a 16-token prompt and 128 new tokens, batch 1 and 8
  (target: at least 1.5x transformers `generate()`); the two must produce the same tokens;
- time to first token for a 512-token prompt (prefill and one sampled token);
- peak resident memory (RSS) of the process after the measurements.
Then both sides once more in one process (as ANCHORS.md's figures were taken), their decoding runs
alternated round by round, so a change in the machine's speed during the run hits both alike: the
ratio of each round, their median and range.
fp32 throughout: this CPU has no native bf16 (ANCHORS.md).

    python benchmarks/bench_smollm2.py [--rounds 3] [--new 128] [--repeats 2] [--compile]

With `--compile`, lmforge decodes with compiled steps (`lmforge.infer.compile_decoding`); the warm-up
run of each batch size compiles them, and its time is reported.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine, median, run_worker, table, timed

Generate = Callable[[list[list[int]], int], list[list[int]]]
"""(prompts as token ids, new tokens) -> the new token ids of each prompt, greedy."""
Encode = Callable[[str], list[int]]

TARGET = 1.5
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    from lmforge.data.sources import fetch

    return fetch("smollm2-135m-instruct") / GGUF_NAME


def prompt_ids(tokenizer_encode, length: int, batch: int) -> list[list[int]]:
    """`batch` different prompts of exactly `length` tokens, cut from a Shakespeare play."""
    from lmforge.data.sources import resolve_text_inputs

    text = resolve_text_inputs("hamlet")[0].read_text(encoding="utf-8")
    ids = tokenizer_encode(text[: 200 * (length + batch)])
    return [ids[i * 7 : i * 7 + length] for i in range(batch)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def lmforge_side(compiled: bool = False) -> tuple[Generate, Encode, float]:
    """lmforge's greedy generation on the GGUF model, its tokenizer, and the load time; `compiled`:
    with compiled decoding steps (`compile_decoding`, compiled during the warm-up run)."""
    from lmforge.infer import Engine, SamplingParams, compile_decoding
    from lmforge.interop.gguf import load_gguf

    start = time.perf_counter()
    model, tokenizer = load_gguf(gguf_path())
    load_s = time.perf_counter() - start
    if compiled:
        compile_decoding(model)
    engine = Engine(model)

    def generate(prompts: list[list[int]], max_new: int) -> list[list[int]]:
        return engine.generate_ids(prompts, SamplingParams(temperature=0, max_new_tokens=max_new))

    return generate, tokenizer.encode, load_s


def transformers_side() -> tuple[Generate, Encode, float]:
    """transformers' `generate()` (greedy) on the same GGUF file, its tokenizer, and the load time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    load_s = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # Never stop at, nor suppress, the end token: both sides generate exactly `new` tokens with
    # the same rule (`min_new_tokens` would instead forbid the end token and change the text).
    model.generation_config.eos_token_id = None

    def generate(prompts: list[list[int]], max_new: int) -> list[list[int]]:
        ids = torch.tensor(prompts)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new,
                pad_token_id=tokenizer.eos_token_id,
            )
        return out[:, ids.shape[1] :].tolist()

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return generate, encode, load_s


SIDES = {
    "lmforge": lmforge_side,
    "lmforge-compiled": lambda: lmforge_side(compiled=True),
    "transformers": transformers_side,
}


def worker_side(side: str, rounds: int, new: int, batches: list[int]) -> dict:
    """One side alone in its process: decoding rates, tokens, time to first token, peak RSS."""
    generate, encode, load_s = SIDES[side]()
    result = {"load_s": load_s, "decode": {}, "tokens": {}, "first_run_s": {}}
    for batch in batches:
        prompts = prompt_ids(encode, 16, batch)
        start = time.perf_counter()
        result["tokens"][batch] = generate(prompts, new)  # also the warm-up (and compiling)
        result["first_run_s"][batch] = time.perf_counter() - start
        rates = [batch * new / timed(lambda p=prompts: generate(p, new)) for _ in range(rounds)]
        result["decode"][batch] = median(rates)
    long_prompt = prompt_ids(encode, 512, 1)
    result["ttft_s"] = median([timed(lambda: generate(long_prompt, 1)) for _ in range(rounds)])
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def worker_paired(ours: str, rounds: int, new: int, batches: list[int]) -> dict:
    """Both sides (`ours` and transformers) in one process, their decoding runs alternated round by
    round (ANCHORS.md's "one process per comparison"), so a change in the machine's speed hits both
    alike: the lmforge / transformers ratio of each round."""
    sides = {name: SIDES[name]() for name in (ours, "transformers")}
    ratios = {}
    for batch in batches:
        prompts = {name: prompt_ids(encode, 16, batch) for name, (_, encode, _) in sides.items()}
        for name, (generate, _, _) in sides.items():
            generate(prompts[name], new)  # warm-up
        ratios[batch] = []
        for _ in range(rounds):
            seconds = {
                name: timed(lambda g=generate, p=prompts[name]: g(p, new))
                for name, (generate, _, _) in sides.items()
            }
            ratios[batch].append(seconds["transformers"] / seconds[ours])
    return {"ratios": ratios}


def verdict(ratio: float) -> str:
    return "PASS" if ratio >= TARGET else "FAIL"


def combine(results: list[dict]) -> dict:
    """One side's figures over its worker processes: medians, and the tokens of the first."""
    return {
        "decode": {b: median([r["decode"][b] for r in results]) for b in results[0]["decode"]},
        "tokens": results[0]["tokens"],
        "ttft_s": median([r["ttft_s"] for r in results]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "load_s": median([r["load_s"] for r in results]),
        "first_run_s": results[0]["first_run_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=128, help="new tokens per decoding run")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=2, help="worker processes per side")
    ap.add_argument(
        "--compile", action="store_true", help="lmforge decodes with compiled steps (--compile)"
    )
    ap.add_argument("--worker", choices=[*SIDES, "paired"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    batches = [int(b) for b in args.batches.split(",")]
    ours = "lmforge-compiled" if args.compile else "lmforge"
    if args.worker == "paired":
        print(json.dumps(worker_paired(ours, args.rounds, args.new, batches)))
        return
    if args.worker:
        print(json.dumps(worker_side(args.worker, args.rounds, args.new, batches)))
        return
    print(f"machine: {machine()}")
    gguf_path()  # fetch once, before the workers
    common = ["--rounds", str(args.rounds), "--new", str(args.new), "--batches", args.batches]
    if args.compile:
        common.append("--compile")
    runs: dict[str, list[dict]] = {ours: [], "transformers": []}
    for _ in range(args.repeats):  # alternate the processes, so drift hits both sides alike
        for side in runs:
            runs[side].append(run_worker(__file__, side, *common))
    paired = run_worker(__file__, "paired", *common)["ratios"]
    peer = combine(runs["transformers"])
    ours = combine(runs[ours])
    rows = []
    for batch in batches:
        key = str(batch)
        ratio = ours["decode"][key] / peer["decode"][key]
        same = ours["tokens"][key] == peer["tokens"][key]
        rows.append(
            (
                f"decode, batch {batch} (new tokens/s)",
                f"{ours['decode'][key]:,.1f}",
                f"{peer['decode'][key]:,.1f}",
                f"{ratio:.2f}x",
                f"same tokens: {'yes' if same else 'NO'}; >= {TARGET}x {verdict(ratio)}",
            )
        )
        pairs = paired[key]
        rows.append(
            (
                f"decode, batch {batch}, both in one process, alternated",
                "",
                "",
                f"{median(pairs):.2f}x",
                f"rounds {min(pairs):.2f}-{max(pairs):.2f}x; >= {TARGET}x {verdict(median(pairs))}",
            )
        )
    rows.append(
        (
            "time to first token, 512-token prompt",
            f"{ours['ttft_s'] * 1000:,.0f} ms",
            f"{peer['ttft_s'] * 1000:,.0f} ms",
            f"{peer['ttft_s'] / ours['ttft_s']:.2f}x faster",
            "",
        )
    )
    rows.append(
        (
            "peak RSS",
            f"{ours['peak_rss_mb']:,.0f} MB",
            f"{peer['peak_rss_mb']:,.0f} MB",
            f"{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x",
            "",
        )
    )
    rows.append(
        (
            f"first generation, batch {batches[0]} (warm-up; compiles with --compile)",
            f"{ours['first_run_s'][str(batches[0])]:.1f} s",
            f"{peer['first_run_s'][str(batches[0])]:.1f} s",
            "",
            "",
        )
    )
    rows.append(
        (
            "load the GGUF (dequantize to fp32)",
            f"{ours['load_s']:.1f} s",
            f"{peer['load_s']:.1f} s",
            "",
            "",
        )
    )
    name = "lmforge, compiled decoding" if args.compile else "lmforge"
    print(table(rows, ("SmolLM2-135M, fp32", name, "transformers", "ratio", "check")))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
