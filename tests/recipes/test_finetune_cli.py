"""`lmforge finetune --task classify` end to end on tiny models of every family (gpt, bert, t5)
and a generated data set whose label is learnable (a text holds "good" or "bad"): the loss falls,
accuracy beats chance, the run directory is complete and the classifier loads back
(`lmforge classify`, `load_classifier`); bad input exits 2 with one line."""

import random

import pytest
import torch
from helpers import (
    cli_fails,
    metric_records,
    saved_classifier_accuracy,
    tiny_model_dir,
    write_jsonl,
)

from lmforge.cli import main as cli
from lmforge.models.loading import load_model
from lmforge.recipes.classify import load_classifier

FILLER = "the movie story actors plot film scene music was is and quite very it a".split()


def make_examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(FILLER, k=rng.randint(3, 7))
        label = rng.choice(["pos", "neg"])
        words.insert(rng.randrange(len(words) + 1), "good" if label == "pos" else "bad")
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("cls") / "reviews.jsonl"
    write_jsonl(path, make_examples(300))
    return path


def make_model_dir(root, family: str):
    """A randomly initialised tiny model of `family` with a tokenizer trained on the texts."""
    return tiny_model_dir(root, family, [r["text"] for r in make_examples(300, seed=1)] * 3)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: make_model_dir(root, family) for family in ("gpt", "bert", "t5")}


TINY_FINETUNE = [
    "--train.batch_size=16",
    "--train.warmup_steps=5",
    "--train.eval_interval=30",
    "--train.log_interval=10",
    "--train.device=cpu",
    "--head.dropout=0.0",
    "--no-progress",
]


def finetune(model_dir, data, out, method="full", *extra):
    args = ["finetune", "--model", str(model_dir), "--method", method, "--task", "classify"]
    return cli([*args, "--data", str(data), "--out", str(out), *TINY_FINETUNE, *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, model_dirs, dataset):
    """family -> the run directory of a short full fine-tuning of its tiny model (made once)."""
    runs = {}

    def get(family: str):
        if family not in runs:
            out = tmp_path_factory.mktemp(f"full-{family}") / "run"
            extra = ("--train.max_steps=60", "--train.lr=3e-3")
            assert finetune(model_dirs[family], dataset, out, "full", *extra) == 0
            runs[family] = out
        return runs[family]

    return get


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_full_finetuning_learns_the_label(full_run, family, capsys):
    run = full_run(family)
    recs = metric_records(run)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    final = recs[-1]
    assert final["test_accuracy"] > 0.8 and final["val_accuracy"] > 0.8, final
    for name in ("config.yaml", "config.json", "model.safetensors", "tokenizer.json"):
        assert (run / name).is_file(), name
    for name in ("head.safetensors", "classifier.json", "loss.png", "report.md"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "trainable parameters" in report and "macro F1" in report and "peak memory" in report
    load_model(run)  # the fine-tuned backbone is a model directory of its own

    classifier = load_classifier(run)
    good, bad = classifier(["the film was good", "the film was bad"])
    assert (good.label, bad.label) == ("pos", "neg")
    capsys.readouterr()
    assert cli(["classify", "--model", str(run), "--text", "very good music"]) == 0
    assert capsys.readouterr().out.startswith("pos\t")


def test_feature_method_trains_the_head_on_cached_features(tmp_path, full_run, dataset):
    """A linear probe on the features of a backbone that knows the task (the fully fine-tuned
    one: a run directory is a model directory): a fresh head alone learns the label."""
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"  # a run file; command-line overrides win over it
    config.write_text("method: full\ntrain:\n  max_steps: 150\n  lr: 1.0e-2\n", encoding="utf-8")
    assert finetune(full_run("gpt"), dataset, run, "feature", "--config", str(config)) == 0
    recs = metric_records(run)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert recs[-1]["test_accuracy"] > 0.8, recs[-1]
    report = (run / "report.md").read_text()
    assert "| trainable parameters | 66 of " in report  # 32 x 2 weights + 2 biases
    head_only = run / "checkpoints"
    assert sum(f.stat().st_size for f in head_only.rglob("model.safetensors")) < 4096
    saved = (run / "config.yaml").read_text()
    assert "method: feature" in saved and "max_steps: 150" in saved
    # the head trained on standardized features is saved folded: it reads raw features and
    # scores the test split as the run reported
    assert saved_classifier_accuracy(run, dataset) == pytest.approx(recs[-1]["test_accuracy"])


def test_lora_trains_only_its_adapters_and_saves_a_plain_model(
    tmp_path, model_dirs, dataset, full_run, capsys
):
    run = tmp_path / "run"
    extra = ("--train.max_steps=150", "--train.lr=2e-2", "--lora.targets=*_proj", "--lora.rank=4")
    assert finetune(model_dirs["gpt"], dataset, run, "lora", *extra) == 0
    recs = metric_records(run)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert recs[-1]["test_accuracy"] > 0.8, recs[-1]
    base = load_model(model_dirs["gpt"])
    cfg = base.config
    C, H, Hkv, D, F = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    per_layer = [(C, H * D), (C, Hkv * D), (C, Hkv * D), (H * D, C), (C, F), (F, C)]
    lora = cfg.num_layers * sum(4 * (i + o) for i, o in per_layer if i and o)
    report = (run / "report.md").read_text()
    assert f"| trainable parameters | {lora + 2 * C + 2:,} of " in report  # adapters and head
    merged = load_model(run)  # the adapters merged: a plain model of the base's shape
    assert set(merged.state_dict()) == set(base.state_dict())
    assert load_classifier(run)(["the film was good"])[0].label == "pos"

    # the adapters alone, merged onto their base by convert, give the same model
    assert (run / "adapter.safetensors").stat().st_size < 0.2 * (
        run / "model.safetensors"
    ).stat().st_size
    out = tmp_path / "merged"
    assert cli(["convert", str(model_dirs["gpt"]), "--adapter", str(run), "--out", str(out)]) == 0
    converted = load_model(out).state_dict()
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(converted[name], tensor, atol=1e-6), name
    other = ["convert", str(full_run("gpt")), "--adapter", str(run), "--out", str(tmp_path / "x")]
    cli_fails(other, capsys, "different base model")


def test_bad_input_is_one_line_and_exit_2(tmp_path, model_dirs, dataset, capsys):
    gpt = str(model_dirs["gpt"])
    base = ["finetune", "--out", str(tmp_path / "run"), "--no-progress"]
    cli_fails([*base, "--model", gpt, "--data", str(tmp_path / "nope.jsonl")], capsys, "not found")
    cli_fails([*base, "--model", gpt, "--data", str(dataset), "--method", "lora9"], capsys, "lora9")
    cli_fails(
        [*base, "--model", str(tmp_path / "nomodel"), "--data", str(dataset)], capsys, "nomodel"
    )
    cli_fails(
        [*base, "--model", gpt, "--data", str(dataset), "--task", "translate-poems"],
        capsys,
        "unknown task",
    )
    cli_fails(
        [*base, "--model", gpt, "--data", str(dataset), "--data.label_field=stars"],
        capsys,
        "no field 'stars'",
    )
    cli_fails(
        [*base, "--model", gpt, "--data", str(dataset), "--data.labels=pos,neutral"],
        capsys,
        "not in data.labels",
    )
    cli_fails([*base, "--model", gpt, "--data", str(dataset), "--train.lrr=1"], capsys, "train.lrr")
    lora = [*base, "--model", gpt, "--data", str(dataset), "--method", "lora"]
    cli_fails([*lora, "--lora.targets=query"], capsys, "match no linear layer")
    cli_fails(["classify", "--model", gpt, "--text", "good"], capsys, "not a fine-tuned classifier")
    assert not (tmp_path / "run").exists()  # nothing written by a refused run


@pytest.mark.slow
def test_rotten_tomatoes_feature_run(tmp_path, model_dirs):
    """The built-in data (fetched once from PyPI into the cache): the pipeline runs end to end."""
    run = tmp_path / "rt"
    extra = ("--data.train_subset=400", "--train.max_steps=50")
    assert finetune(model_dirs["gpt"], "rotten-tomatoes", run, "feature", *extra) == 0
    assert (run / "report.md").read_text().count("rotten-tomatoes") >= 1
