"""Helpers shared by the test suites (on the path through `pythonpath` in pyproject.toml)."""

import json
from pathlib import Path

import torch

from lmforge.models import GPT, get_preset
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.loading import save_model
from lmforge.models.t5 import T5, T5Config
from lmforge.tokenizer import train_bpe, train_unigram, train_wordpiece

TINY_SHAPE = dict(
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=64,
    max_seq_len=64,
)


def tiny_gpt(preset: str, vocab_size: int, seed: int = 0, **overrides) -> GPT:
    """A randomly initialised model of `preset` at a tiny shape (TINY_SHAPE, then `overrides`)."""
    torch.manual_seed(seed)
    return GPT(get_preset(preset, vocab_size=vocab_size, **{**TINY_SHAPE, **overrides}))


FAMILY_SHAPE = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_seq_len=64)
"""The tiny shape of the fine-tuning CLI tests' models, for every family."""

VOCAB_SIZES = {"gpt": 300, "bert": 120, "t5": 120}
"""Tokenizer sizes of those tests: byte-level BPE (gpt), WordPiece (bert), Unigram (t5)."""


def tiny_model_dir(
    root: Path, family: str, texts: list[str], vocab_size: int | None = None
) -> Path:
    """A randomly initialised tiny model of `family` saved in root/family, with a tokenizer of its
    family's kind trained on `texts`."""
    vocab_size = vocab_size or VOCAB_SIZES[family]
    torch.manual_seed(0)
    if family == "gpt":
        tokenizer = train_bpe(texts, vocab_size, show_progress=False)
        model = tiny_gpt("gpt2-tiny", tokenizer.vocab_size, num_heads=2, num_kv_heads=2)
    elif family == "bert":
        tokenizer = train_wordpiece(texts, vocab_size, show_progress=False)
        model = Bert(BertConfig(vocab_size=tokenizer.vocab_size, dropout=0.0, **FAMILY_SHAPE))
    else:
        tokenizer = train_unigram(texts, vocab_size, num_sentinels=0, show_progress=False)
        model = T5(T5Config(vocab_size=tokenizer.vocab_size, **FAMILY_SHAPE))
    return save_model(model, root / family, tokenizer)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def metric_records(run: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def saved_classifier_accuracy(run: Path, data_file: Path) -> float:
    """Test accuracy of the classifier saved in `run` on the default seeded split of `data_file`:
    what the run reported, if the saved model is the one it scored."""
    from lmforge.data.classification import load_labelled_splits
    from lmforge.recipes.classify import load_classifier

    splits = load_labelled_splits(str(data_file))
    predicted = [p.label for p in load_classifier(run)(splits.texts["test"])]
    truth = [splits.label_names[i] for i in splits.labels["test"]]
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def cli_fails(args: list[str], capsys, match: str) -> None:
    """`lmforge ARGS` exits with status 2 and one `error: ...` line on stderr containing `match`."""
    from lmforge.cli import main as cli

    capsys.readouterr()
    code = cli(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
