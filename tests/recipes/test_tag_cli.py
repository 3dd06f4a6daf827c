"""`lmforge finetune --task tag` end to end on tiny models of every family (gpt, bert, t5) and a
generated data set whose tags are learnable (the word "alice" is always a person, "paris" and "new
york" are places): entity F1 ends far above the untrained model's, the run directory is complete,
`lmforge tag` and `load_tagger` tag new text; the feature method trains the head alone on cached
word features (CoNLL input); bad input exits 2 with one line."""

import json
import random

import pytest
import torch
from helpers import cli_fails, metric_records, tiny_model_dir, write_jsonl

from lmforge.cli import main as cli
from lmforge.models.loading import load_model
from lmforge.recipes.finetune import build_config, load_backbone
from lmforge.recipes.tag import load_tagger
from lmforge.tasks import get_task

FILLER = "the a of and to in we saw met went from with old good very king queen city river".split()
ENTITIES = {("alice",): ["B-PER"], ("paris",): ["B-LOC"], ("new", "york"): ["B-LOC", "I-LOC"]}


def make_sentences(n: int, seed: int = 0) -> list[dict]:
    """Filler words with up to two entities each; about a fifth of the sentences have none."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(FILLER, k=rng.randint(3, 7))
        tags = ["O"] * len(words)
        for entity in rng.sample(sorted(ENTITIES), rng.randint(0, 2)):
            at = rng.randrange(len(words) + 1)
            words[at:at], tags[at:at] = list(entity), ENTITIES[entity]
        rows.append({"tokens": words, "tags": tags})
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("tag") / "sentences.jsonl"
    write_jsonl(path, make_sentences(300))
    return path


@pytest.fixture(scope="module")
def conll_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("tag") / "sentences.conll"
    blocks = [
        "\n".join(f"{w} {t}" for w, t in zip(r["tokens"], r["tags"])) for r in make_sentences(300)
    ]
    path.write_text("-DOCSTART- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def make_model_dir(root, family: str):
    """A randomly initialised tiny model of `family` with a tokenizer trained on the sentences."""
    return tiny_model_dir(
        root, family, [" ".join(r["tokens"]) for r in make_sentences(300, seed=1)] * 3
    )


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
    args = ["finetune", "--model", str(model_dir), "--method", method, "--task", "tag"]
    return cli([*args, "--data", str(data), "--out", str(out), *TINY_FINETUNE, *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, model_dirs, dataset):
    """family -> the run directory of a short full fine-tuning of its tiny model (made once)."""
    runs = {}

    def get(family: str):
        if family not in runs:
            out = tmp_path_factory.mktemp(f"tag-{family}") / "run"
            extra = ("--train.max_steps=60", "--train.lr=3e-3")
            assert finetune(model_dirs[family], dataset, out, "full", *extra) == 0
            runs[family] = out
        return runs[family]

    return get


def untrained_test_f1(model_dir, dataset) -> float:
    """Entity F1 on the test split of the base model with a fresh head: the random baseline."""
    task = get_task("tag")
    cfg = build_config({"task": "tag", "data": {"source": str(dataset)}})
    setup = task.setup(*load_backbone(str(model_dir)), cfg)
    return task.evaluate(setup.model, setup.data, "test", torch.device("cpu"), torch.float32).f1


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_full_finetuning_learns_the_tags(full_run, model_dirs, dataset, family, capsys):
    run = full_run(family)
    recs = metric_records(run)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    final = recs[-1]
    baseline = untrained_test_f1(model_dirs[family], dataset)
    assert final["test_entity_f1"] > 0.85 and final["val_entity_f1"] > 0.85, final
    assert final["test_entity_f1"] > baseline + 0.5, (final, baseline)
    assert final["test_token_accuracy"] > 0.9
    for name in ("config.yaml", "config.json", "model.safetensors", "tokenizer.json"):
        assert (run / name).is_file(), name
    for name in ("head.safetensors", "tagger.json", "loss.png", "report.md"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "entity F1 (micro)" in report and "| LOC |" in report and "| PER |" in report
    assert "words truncated (not scored) | 0 | 0 |" in report and "- gold: `" in report
    load_model(run)  # the fine-tuned backbone is a model directory of its own

    tagger = load_tagger(run)
    (tagged,) = tagger([["we", "met", "alice", "in", "new", "york", "with", "the", "king"]])
    tags = dict(tagged)
    assert (tags["alice"], tags["new"], tags["york"], tags["king"]) == (
        "B-PER",
        "B-LOC",
        "I-LOC",
        "O",
    )
    capsys.readouterr()
    assert cli(["tag", "--model", str(run), "--text", "we saw paris", "--text", "alice went"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[:5] == ["we\tO", "saw\tO", "paris\tB-LOC", "", "alice\tB-PER"], lines


def test_long_text_is_tagged_in_pieces(full_run):
    """A text longer than the tagger's input gets a tag for every word (consecutive pieces)."""
    words = ["we", "met", "alice", "in", "paris"] * 30  # 150 words > 64 tokens
    (tagged,) = load_tagger(full_run("bert"))([words])
    assert [w for w, _ in tagged] == words
    assert [t for _, t in tagged] == ["O", "O", "B-PER", "O", "B-LOC"] * 30


def test_feature_method_trains_the_head_on_cached_word_features(tmp_path, full_run, conll_dataset):
    """A linear probe on the word features of a backbone that knows the task (the fully
    fine-tuned one: a run directory is a model directory): a fresh head alone learns the tags."""
    run = tmp_path / "run"
    extra = ("--train.max_steps=150", "--train.lr=1e-2")
    assert finetune(full_run("bert"), conll_dataset, run, "feature", *extra) == 0
    recs = metric_records(run)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert recs[-1]["test_entity_f1"] > 0.85, recs[-1]
    report = (run / "report.md").read_text()
    assert "| trainable parameters | 132 of " in report  # 32 x 4 weights + 4 biases
    head_only = run / "checkpoints"
    assert sum(f.stat().st_size for f in head_only.rglob("model.safetensors")) < 4096
    assert "sentences.conll" in report
    assert dict(load_tagger(run)("we met alice")[0])["alice"] == "B-PER"


def test_bad_input_is_one_line_and_exit_2(tmp_path, model_dirs, dataset, capsys):
    bert = str(model_dirs["bert"])
    base = ["finetune", "--task", "tag", "--model", bert, "--out", str(tmp_path / "run")]
    base.append("--no-progress")

    def data(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    row = {"tokens": ["alice", "met", "bob"], "tags": ["B-PER", "O", "B-PER"]}
    no_tags = data("no_tags.jsonl", json.dumps({"tokens": ["alice"]}) + "\n")
    cli_fails([*base, "--data", no_tags], capsys, "row 1 has no field 'tags'")
    short = data("short.jsonl", json.dumps(row) + "\n" + json.dumps({**row, "tags": ["O"]}) + "\n")
    cli_fails([*base, "--data", short], capsys, "row 2: 3 tokens but 1 tags")
    cli_fails([*base, "--data", data("empty.jsonl", "")], capsys, "holds no sentences")
    cli_fails([*base, "--data", data("empty.conll", "\n\n")], capsys, "holds no sentences")
    cli_fails(
        [*base, "--data", data("bad.conll", "alice B-PER\nmet\n")], capsys, "line 2: expected"
    )
    not_bio = data("not_bio.jsonl", json.dumps({**row, "tags": ["PER", "O", "PER"]}) + "\n")
    cli_fails([*base, "--data", not_bio], capsys, "row 1: tag 'PER' is not a BIO tag")
    cli_fails(
        [*base, "--data", str(dataset), "--data.tags=O,B-PER,B-LOC"],
        capsys,
        "tag 'I-LOC' is not in data.tags",
    )
    cli_fails([*base, "--data", str(tmp_path / "nope.conll")], capsys, "not found")
    cli_fails(
        [*base, "--data", str(dataset), "--data.tokens_field=words"], capsys, "no field 'words'"
    )
    cli_fails([*base, "--data", str(dataset), "--head.pooling=mean"], capsys, "head.pooling")
    cli_fails([*base, "--data", "rotten-tomatoes"], capsys, "not tagged data")
    cli_fails(["tag", "--model", bert, "--text", "alice"], capsys, "not a fine-tuned tagger")
    assert not (tmp_path / "run").exists()  # nothing written by a refused run
