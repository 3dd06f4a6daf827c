"""`lmforge <command>`: parse arguments and hand a typed config to recipes/<command>.py.

Every error a user can cause is a `UserError`: it is printed as one line, `error: ...`, and the
process exits with status 2. Recipes are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lmforge.errors import UserError


def _add_compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with compiled steps (torch.compile): tens of seconds to start, faster per token",
    )


def _add_adapter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapter",
        help="adapter directory from `lmforge finetune` (lora, qlora, adapter, prompt) to load "
        "onto --model, its base",
    )


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")


def _sampling_params(args: argparse.Namespace):
    """`SamplingParams` from the options of `_add_sampling_args` (it validates their ranges)."""
    from lmforge.infer import SamplingParams

    return SamplingParams(
        args.temperature,
        args.top_k,
        args.top_p,
        args.repetition_penalty,
        args.max_new_tokens,
        args.seed,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description="Train, load, fine-tune, evaluate and use transformer LMs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "quickstart", help="pre-train a small gpt, bert or t5 on Shakespeare in ~5 CPU minutes"
    )
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--minutes", type=float, default=5.0, help="time budget (default 5)")
    p.add_argument("--steps", type=int, default=0, help="training steps (default: fit the budget)")
    p.add_argument("--source", default="shakespeare", help="offline source or text files")
    p.add_argument("--vocab-size", type=int, default=2048, help="tokenizer size (default 2048)")
    p.add_argument(
        "--family",
        default="gpt",
        help="gpt (causal LM), bert (masked LM) or t5 (span corruption); default gpt",
    )

    p = sub.add_parser("tokenizer", help="train tokenizers")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser(
        "train", help="train a byte-level BPE, char, WordPiece or Unigram tokenizer"
    )
    t.add_argument("--input", required=True, help="text files, globs or a source name")
    t.add_argument("--vocab-size", type=int, default=4096)
    t.add_argument(
        "--kind",
        choices=["bpe", "char", "wordpiece", "unigram"],
        default="bpe",
        help="bpe (GPT), char, wordpiece (BERT: [CLS] [SEP] [MASK] [PAD] [UNK]) or unigram "
        "(T5: <pad> </s> <unk> and sentinels <extra_id_N>)",
    )
    t.add_argument("--out", required=True, help="directory for tokenizer.json")

    p = sub.add_parser("data", help="offline data sources")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    dsub.add_parser("list", help="list the offline sources")
    f = dsub.add_parser("fetch", help="fetch a source into the cache")
    f.add_argument("name")

    p = sub.add_parser("prepare", help="tokenize text into train/val token shards")
    p.add_argument("--input", required=True, help="text files, globs or a source name")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or `gpt2`")
    p.add_argument("--out", required=True, help="data directory to write")
    p.add_argument("--val-fraction", type=float, default=0.1)

    p = sub.add_parser(
        "pretrain",
        help="pre-train a model",
        description="Pre-train a model. Any config field can be set as --section.key=value, "
        "e.g. --model.preset=llama-tiny --train.max_steps=500 --data.dir=data/shakespeare.",
    )
    p.add_argument("--config", help="YAML run file with model/data/train sections")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--objective",
        help="causal_lm (gpt), mlm (bert) or span (t5); without a model section it picks the "
        "family's default preset (same as --train.objective)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "finetune",
        help="fine-tune a model for a task (classify, tag, qa, text2text, sft) with a method (full, "
        "feature, lora, qlora, adapter, prompt)",
        description="Fine-tune a pre-trained model. Any config field can be set as "
        "--section.key=value, e.g. --train.max_steps=300 --data.train_subset=2000 "
        "--head.dropout=0.1 --lora.rank=8 --adapter.bottleneck=64 --prompt.num_tokens=20 "
        "--qlora.double_quant=false.",
    )
    p.add_argument("--model", help="pre-trained model or run directory (or a GGUF file)")
    p.add_argument(
        "--method",
        help="full (every parameter), feature (frozen backbone, head), lora (low-rank adapters), "
        "qlora (LoRA over a 4-bit NF4 base), adapter (Houlsby bottleneck adapters) or prompt "
        "(soft prompt tuning)",
    )
    p.add_argument(
        "--task",
        help="classify (sequence classification; the default), tag (BIO token classification), "
        "qa (extractive question answering), text2text (t5 / gpt, task prefixes) or sft "
        "(instruction / chat fine-tuning of a decoder on conversations)",
    )
    p.add_argument(
        "--data",
        help="a built-in source (classify: rotten-tomatoes; tag: shakespeare-names; qa: "
        "shakespeare-speakers; text2text: shakespeare-modern, shakespeare-lead; sft: "
        "instructions, chatterbot) or a data file",
    )
    p.add_argument("--config", help="YAML run file (model, method, task, data, head, train)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "compare",
        help="compare adaptation methods on one classification task (table and plot)",
        description="Run zero-shot and few-shot prompting and each fine-tuning method on the same "
        "data and test split, each in its own process; write comparison.md and comparison.png. "
        "Extra --section.key=value options go to every fine-tuning run.",
    )
    p.add_argument("--model", required=True, help="pre-trained decoder (directory or GGUF file)")
    p.add_argument("--data", default="rotten-tomatoes", help="classification data (default "
                   "rotten-tomatoes) or a .jsonl / .csv file")  # fmt: skip
    p.add_argument("--out", required=True, help="directory of the comparison and its runs")
    p.add_argument(
        "--methods",
        default="zero-shot,few-shot,feature,prompt,adapter,lora,qlora,full",
        help="rows, comma-separated (default: all eight)",
    )
    p.add_argument("--shots", type=int, default=4, help="demonstrations of the few-shot row")
    p.add_argument("--train-subset", type=int, default=1000, help="training examples (0 = all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "forgetting",
        help="measure forgetting and replay: new-task accuracy against original perplexity",
        description="Fine-tune for classification with each method and replay weight alpha, "
        "measuring perplexity on held-out original-domain text before and after; write "
        "forgetting.md and forgetting.png. Extra --section.key=value options go to every run.",
    )
    p.add_argument("--model", required=True, help="pre-trained decoder (directory or GGUF file)")
    p.add_argument("--data", default="rotten-tomatoes", help="classification data")
    p.add_argument("--out", required=True, help="directory of the report and its runs")
    p.add_argument("--methods", default="lora,full", help="methods, comma-separated")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75", help="replay weights, comma-separated")
    p.add_argument("--corpora", default="shakespeare,chatterbot",
                   help="original-domain corpora measured (or text files)")  # fmt: skip
    p.add_argument("--replay-corpus", default="shakespeare", help="original text replayed")
    p.add_argument("--train-subset", type=int, default=1000, help="training examples (0 = all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("classify", help="label texts with a classifier from `lmforge finetune`")
    p.add_argument("--model", required=True, help="run directory of `lmforge finetune`")
    p.add_argument("--text", action="append", required=True, help="text (repeat for several)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("tag", help="tag each word of texts with a tagger from `lmforge finetune`")
    p.add_argument("--model", required=True, help="run directory of `lmforge finetune --task tag`")
    p.add_argument("--text", action="append", required=True, help="text (repeat for several)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser(
        "answer", help="extract an answer from a context with a QA model from `lmforge finetune`"
    )
    p.add_argument("--model", required=True, help="run directory of `lmforge finetune --task qa`")
    p.add_argument("--question", required=True, help="the question")
    p.add_argument("--context", required=True, help="the text that holds the answer")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("generate", help="continue prompts with a trained model")
    p.add_argument("--model", required=True, help="model or run directory")
    p.add_argument("--prompt", action="append", default=[], help="prompt (repeat for a batch)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-text")
    p.add_argument("--chat", action="store_true", help="each prompt is a user turn (chat template)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search (t5 models; default 1)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score: log p / len^this")
    _add_adapter_arg(p)
    _add_compile_arg(p)
    _add_sampling_args(p)

    p = sub.add_parser("fill-mask", help="a masked LM's top guesses for each [MASK] in a text")
    p.add_argument("--model", required=True, help="BERT model or run directory")
    p.add_argument("--text", required=True, help='text with [MASK] tokens, e.g. "the [MASK] of"')
    p.add_argument("--top-k", type=int, default=5, help="candidates per [MASK] (default 5)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("eval", help="evaluate a model")
    esub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = esub.add_parser("perplexity", help="sliding-window perplexity and bits per byte")
    e.add_argument("--model", required=True, help="model or run directory")
    e.add_argument("--data", required=True, nargs="+", help="text files, globs or a source name")
    e.add_argument("--context", type=int, help="window length (default: model max_seq_len)")
    e.add_argument("--stride", type=int, help="window step (default: context / 2)")
    e.add_argument("--batch-size", type=int, help="windows per forward pass")
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", default="fp32", help="fp32 (default), auto, bf16 or fp16")
    e.add_argument("--no-eos-prefix", action="store_true", help="do not score the first token")
    e.add_argument("--json", action="store_true", help="print a JSON object")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = esub.add_parser(
        "classify", help="zero- or few-shot classification by prompting (no training)"
    )
    e.add_argument("--model", required=True, help="decoder model directory or GGUF file")
    e.add_argument("--data", default="rotten-tomatoes", help="classification data or file")
    e.add_argument("--shots", type=int, default=0, help="demonstrations per prompt (default 0)")
    e.add_argument("--split", default="test", help="train, val or test (default test)")
    e.add_argument("--limit", type=int, default=0, help="score only the first N examples")
    e.add_argument("--seed", type=int, default=0, help="seed of the demonstrations' draw")
    e.add_argument("--instruction", default="", help="the prompt's first line")
    e.add_argument(
        "--verbalizer", action="append", default=[], metavar="LABEL=WORD",
        help="the word naming a label in the prompt (repeatable)",
    )  # fmt: skip
    e.add_argument("--max-text-tokens", type=int, default=96, help="each text cut to this")
    e.add_argument("--device", default="auto")
    e.add_argument("--out", help="directory for report.md and result.json")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "convert",
        help="convert a model between GGUF, Hugging Face and lmforge formats",
        description="Convert a model. The source format is detected: a GGUF file, a Hugging "
        "Face directory (config.json + safetensors) or an lmforge model directory.",
    )
    p.add_argument("source", help="GGUF file or model directory")
    p.add_argument("--out", required=True, help="output directory (or .gguf file)")
    p.add_argument("--to", choices=["lmforge", "hf", "gguf"], default="lmforge")
    p.add_argument(
        "--dtype",
        choices=["fp32", "f32", "bf16", "f16", "q8_0"],
        help="storage type: fp32|bf16|f16 for lmforge/hf, f32|f16|q8_0 for gguf (default full)",
    )
    p.add_argument(
        "--adapter",
        help="an adapter directory (adapter.json) for the source, its base: LoRA merged, "
        "adapter/prompt kept beside it (lmforge format only)",
    )

    p = sub.add_parser("chat", help="multi-turn chat with a model in the terminal")
    p.add_argument("--model", required=True, help="model or run directory")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument(
        "--template", default=None, help="chat template: chatml, plain, default or a .jinja file"
    )
    p.add_argument("--device", default="auto")
    _add_adapter_arg(p)
    _add_compile_arg(p)
    _add_sampling_args(p)

    sub.add_parser("presets", help="list the model presets with size and FLOPs per token")
    return parser


def _names(text: str) -> list[str]:
    """ "a, b,c" -> ["a", "b", "c"]."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{option} takes numbers, got {text!r}") from None


def _pairs(items: list[str], option: str) -> dict[str, str]:
    """["a=x", "b=y"] -> {"a": "x", "b": "y"}."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"{option} takes LABEL=WORD, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra and args.command not in ("pretrain", "finetune", "compare", "forgetting"):
        raise UserError(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "quickstart":
        from lmforge.recipes import quickstart

        quickstart.main(
            quickstart.QuickstartConfig(
                args.out, args.minutes, args.steps, args.source, args.vocab_size, args.family
            )
        )
    elif args.command == "tokenizer":
        from lmforge.recipes import tokenizer

        tokenizer.main(
            tokenizer.TokenizerTrainConfig(args.input, args.out, args.vocab_size, args.kind)
        )
    elif args.command == "data":
        from lmforge.recipes import data

        data.list_main() if args.action == "list" else data.fetch_main(args.name)
    elif args.command == "prepare":
        from lmforge.recipes import prepare

        prepare.main(prepare.PrepareConfig(args.input, args.tokenizer, args.out, args.val_fraction))
    elif args.command == "pretrain":
        from lmforge.recipes import pretrain

        if args.objective:
            extra = [*extra, f"--train.objective={args.objective}"]
        cfg = pretrain.load_config(args.config, extra, Path(args.out), args.resume)
        pretrain.main(cfg, args.out, resume=args.resume, show_progress=not args.no_progress)
    elif args.command == "finetune":
        from lmforge.recipes import finetune

        flags = {k: getattr(args, k) for k in ("model", "method", "task", "data")}
        cfg = finetune.load_config(args.config, extra, flags, Path(args.out), args.resume)
        finetune.main(cfg, args.out, resume=args.resume, show_progress=not args.no_progress)
    elif args.command == "classify":
        from lmforge.recipes import classify

        classify.main(classify.ClassifyConfig(args.model, args.text, args.device))
    elif args.command == "tag":
        from lmforge.recipes import tag

        tag.main(tag.TagConfig(args.model, args.text, args.device))
    elif args.command == "answer":
        from lmforge.recipes import answer

        answer.main(answer.AnswerConfig(args.model, args.question, args.context, args.device))
    elif args.command == "generate":
        from lmforge.recipes import generate

        params = _sampling_params(args)
        generate.main(
            generate.GenerateConfig(
                args.model,
                args.prompt,
                params,
                args.stop,
                args.device,
                args.ignore_eos,
                args.chat,
                num_beams=args.num_beams,
                length_penalty=args.length_penalty,
                adapter=args.adapter,
                compile=args.compile,
            )
        )
    elif args.command == "fill-mask":
        from lmforge.recipes import fill_mask

        fill_mask.main(fill_mask.FillMaskConfig(args.model, args.text, args.top_k, args.device))
    elif args.command == "eval" and args.action == "classify":
        from lmforge.recipes import prompt_classify

        prompt_classify.main(
            prompt_classify.PromptClassifyConfig(
                args.model,
                prompt_classify.ClassifyDataConfig(source=args.data),
                shots=args.shots,
                split=args.split,
                limit=args.limit,
                seed=args.seed,
                instruction=args.instruction,
                verbalizers=_pairs(args.verbalizer, "--verbalizer"),
                max_text_tokens=args.max_text_tokens,
                device=args.device,
                out=args.out,
                progress=not args.no_progress,
            )
        )
    elif args.command == "compare":
        from lmforge.recipes import compare

        compare.main(
            compare.CompareConfig(
                args.model,
                args.out,
                args.data,
                _names(args.methods),
                args.shots,
                args.train_subset,
                extra,
                not args.no_progress,
            )
        )
    elif args.command == "forgetting":
        from lmforge.recipes import forgetting

        forgetting.main(
            forgetting.ForgettingSweepConfig(
                args.model,
                args.out,
                args.data,
                _names(args.methods),
                [_number(a, "--alphas") for a in _names(args.alphas)],
                _names(args.corpora),
                args.replay_corpus,
                args.train_subset,
                extra,
                not args.no_progress,
            )
        )
    elif args.command == "eval":
        from lmforge.recipes import eval as eval_recipe

        eval_recipe.perplexity_main(
            eval_recipe.PerplexityConfig(
                args.model,
                args.data,
                args.context,
                args.stride,
                args.batch_size,
                args.device,
                args.precision,
                not args.no_eos_prefix,
                args.json,
                not args.no_progress,
            )
        )
    elif args.command == "convert":
        from lmforge.recipes import convert

        convert.main(
            convert.ConvertConfig(args.source, args.out, args.to, args.dtype, args.adapter)
        )
    elif args.command == "chat":
        from lmforge.recipes import chat

        params = _sampling_params(args)
        chat.main(
            chat.ChatConfig(
                args.model,
                args.system,
                params,
                args.template,
                args.device,
                adapter=args.adapter,
                compile=args.compile,
            )
        )
    elif args.command == "presets":
        import torch

        from lmforge.models import registry

        for name, family in registry.preset_names().items():
            with torch.device("meta"):  # shapes only: nothing is allocated
                model = registry.build_model(registry.get_preset(name))
            print(
                f"{name:<14} {family:<4} {model.num_params() / 1e6:8.2f}M params  "
                f"{model.flops_per_token() / 1e9:7.3f} GFLOPs/token (training, full context)"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return run(args, extra)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
