"""`lmforge finetune --method qlora|adapter|prompt` end to end on tiny decoders: the loss falls,
the run reports what it costs, its output loads back (as a model directory, a classifier, and as an
adapter onto its base with `generate --adapter`, `chat --adapter` and `convert --adapter`), and
bad input is one line with exit status 2 and nothing written."""

import io
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
from lmforge.models.loading import load_model, save_model
from lmforge.peft import PromptTuned, WithAdapter
from lmforge.peft.adapter_files import read_adapter_info
from lmforge.peft.nf4 import NF4Linear
from lmforge.recipes.classify import load_classifier
from lmforge.tokenizer import Tokenizer

FILLER = "the movie story actors plot film scene music was is and quite very it a".split()
TINY = [
    "--train.batch_size=16",
    "--train.warmup_steps=5",
    "--train.eval_interval=30",
    "--train.log_interval=10",
    "--train.device=cpu",
    "--head.dropout=0.0",
    "--no-progress",
]


def reviews(n: int, seed: int = 0) -> list[dict]:
    """Texts whose label is the word "good" or "bad" somewhere among filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(FILLER, k=rng.randint(3, 7))
        label = rng.choice(["pos", "neg"])
        words.insert(rng.randrange(len(words) + 1), "good" if label == "pos" else "bad")
        rows.append({"text": " ".join(words), "label": label})
    return rows


def finetune(model_dir, data, out, method, *extra, task="classify"):
    args = ["finetune", "--model", str(model_dir), "--method", method, "--task", task]
    return cli([*args, "--data", str(data), "--out", str(out), *TINY, *extra])


def losses(run) -> list[float]:
    return [r["loss"] for r in metric_records(run) if "loss" in r]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("peft-data") / "reviews.jsonl"
    write_jsonl(path, reviews(300))
    return path


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    texts = [r["text"] for r in reviews(300, seed=1)] * 3
    return tiny_model_dir(tmp_path_factory.mktemp("peft-models"), "gpt", texts)


@pytest.fixture(scope="module")
def tuned_base(tmp_path_factory, gpt_dir, dataset):
    """A backbone that knows the task (a short full fine-tuning; its run is a model directory):
    the base of the adapter and prompt runs, whose few parameters then start from features worth
    adapting, as a pre-trained model's are."""
    out = tmp_path_factory.mktemp("peft-full") / "run"
    assert finetune(gpt_dir, dataset, out, "full", "--train.max_steps=60", "--train.lr=3e-3") == 0
    return out


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, gpt_dir, dataset):
    out = tmp_path_factory.mktemp("peft-qlora") / "run"
    extra = ("--train.max_steps=60", "--train.lr=2e-2")
    assert finetune(gpt_dir, dataset, out, "qlora", *extra) == 0
    return out


def test_qlora_learns_over_a_4bit_base_and_saves_a_plain_model(qlora_run, gpt_dir, tmp_path):
    run = qlora_run
    assert losses(run)[-1] < 0.5 * losses(run)[0], losses(run)
    assert metric_records(run)[-1]["test_accuracy"] > 0.8
    report = (run / "report.md").read_text()
    assert "| model weights in memory |" in report and "(all in fp32: " in report
    assert "| peak RSS: model loaded / through training and evaluation | " in report
    assert "| adapter size (adapter.safetensors) |" in report
    info = read_adapter_info(run)
    assert info["method"] == "qlora" and info["base_quantization"]["format"] == "nf4"
    assert info["base_quantization"]["double_quant"] is True

    merged = load_model(run)  # the adapters merged into the dequantized base: a plain model
    assert not any(isinstance(m, NF4Linear) for m in merged.modules())
    assert set(merged.state_dict()) == set(load_model(gpt_dir).state_dict())
    assert load_classifier(run)(["the film was good"])[0].label == "pos"

    # the adapter alone goes onto the plain base the user gave (fingerprint of the original)
    out = tmp_path / "merged"
    assert cli(["convert", str(gpt_dir), "--adapter", str(run), "--out", str(out)]) == 0
    onto_plain = load_model(out).state_dict()
    for name, tensor in merged.state_dict().items():  # NF4's rounding of the frozen weights apart
        assert torch.allclose(onto_plain[name], tensor, atol=0.05), name


def test_houlsby_adapters_learn_and_their_run_loads_with_them(
    tuned_base, gpt_dir, dataset, tmp_path, capsys
):
    run = tmp_path / "run"
    extra = ("--train.max_steps=60", "--adapter.bottleneck=8", "--train.lr=1e-2")
    assert finetune(tuned_base, dataset, run, "adapter", *extra) == 0
    assert losses(run)[-1] < 0.5 * losses(run)[0], losses(run)
    assert metric_records(run)[-1]["test_accuracy"] > 0.8
    cfg = load_model(gpt_dir).config
    C, L, m = cfg.hidden_size, cfg.num_layers, 8
    adapters = 2 * L * (2 * m * C + C + m)  # after attention and MLP: 2md + d + m each
    norms = (2 * L + 1) * C  # two a layer and the final one (weights only: no biases)
    report = (run / "report.md").read_text()
    assert f"| trainable parameters | {adapters + norms + 2 * C + 2:,} of " in report
    info = read_adapter_info(run)
    assert info["method"] == "adapter" and info["bottleneck"] == 8
    assert "layers.0.attn_norm.weight" in info["carried"]

    loaded = load_model(run)  # the base weights, with the adapters beside them rebuilt
    assert isinstance(loaded.layers[0].mlp, WithAdapter)
    classifier = load_classifier(run)
    good, bad = classifier(["the film was good", "the film was bad"])
    assert (good.label, bad.label) == ("pos", "neg")
    # the saved classifier (base, adapters rebuilt beside it, head) scores as the run reported
    reported = metric_records(run)[-1]["test_accuracy"]
    assert saved_classifier_accuracy(run, dataset) == pytest.approx(reported)

    # export: the lmforge format keeps the adapters; formats without a place for them refuse
    out = tmp_path / "kept"
    assert cli(["convert", str(run), "--out", str(out)]) == 0
    x = torch.tensor([[3, 5, 7, 11]])
    torch.testing.assert_close(load_model(out)(x), loaded(x))
    gguf = ["convert", str(run), "--to", "gguf", "--out", str(tmp_path / "m.gguf")]
    cli_fails(gguf, capsys, "cannot be merged into the weights")
    bf16 = ["convert", str(run), "--dtype", "bf16", "--out", str(tmp_path / "bf16")]
    cli_fails(bf16, capsys, "--dtype fp32")
    onto = ["convert", str(tuned_base), "--adapter", str(run), "--out", str(tmp_path / "again")]
    assert cli(onto) == 0
    torch.testing.assert_close(load_model(tmp_path / "again")(x), loaded(x))
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "bf16").exists()


def test_prompt_tuning_a_classifier_trains_the_prompt_and_head(tuned_base, dataset, tmp_path):
    run = tmp_path / "run"
    extra = ("--train.max_steps=60", "--prompt.num_tokens=8", "--train.block_size=40")
    assert finetune(tuned_base, dataset, run, "prompt", *extra) == 0
    assert losses(run)[-1] < 0.5 * losses(run)[0], losses(run)
    C = load_model(tuned_base).config.hidden_size
    assert f"| trainable parameters | {8 * C + 2 * C + 2:,} of " in (run / "report.md").read_text()
    classifier = load_classifier(run)
    assert isinstance(classifier.model.backbone, PromptTuned)
    good, bad = classifier(["the film was good", "the film was bad"])
    assert (good.label, bad.label) == ("pos", "neg")
    # the saved classifier (base, soft prompt beside it, head) scores as the run reported
    reported = metric_records(run)[-1]["test_accuracy"]
    assert saved_classifier_accuracy(run, dataset) == pytest.approx(reported)


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    """A decoder whose weights react to their input (drawn at std 0.3: one at the usual 0.02
    hardly does, a prompt included), and conversations to tune it on."""
    root = tmp_path_factory.mktemp("peft-sft")
    facts = {"capital of France": "Paris", "colour of grass": "green", "first number": "one"}
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is the {q}?"},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in facts.items()
    ] * 40
    write_jsonl(root / "facts.jsonl", rows)
    texts = [m["content"] for r in rows[:3] for m in r["messages"]] * 10
    plain = tiny_model_dir(root / "models", "gpt", texts)
    model = load_model(plain)
    model.init_weights(std=0.3)
    return save_model(model, root / "reactive", Tokenizer.from_file(plain)), root / "facts.jsonl"


def test_prompt_tuning_a_language_model_and_generating_with_the_prompt(
    chat_data, tmp_path, capsys, monkeypatch
):
    """Instruction tuning (sft) of a bare decoder: the model itself is wrapped. The run, and the
    base with `--adapter RUN`, generate the same text; a different base is refused."""
    base, facts = chat_data
    run = tmp_path / "run"
    extra = ("--train.max_steps=60", "--prompt.num_tokens=8", "--train.block_size=44")
    sft = ("--data.max_new_tokens=4", "--train.eval_interval=60")
    assert finetune(base, facts, run, "prompt", *extra, *sft, task="sft") == 0
    assert losses(run)[-1] < 0.8 * losses(run)[0], losses(run)
    assert isinstance(load_model(run), PromptTuned)

    def generate(*args) -> str:
        capsys.readouterr()
        greedy = ["--temperature", "0", "--max-new-tokens", "6", "--prompt", "What is the"]
        assert cli(["generate", *args, *greedy]) == 0
        return capsys.readouterr().out

    assert generate("--model", str(run)) == generate("--model", str(base), "--adapter", str(run))
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\n"))
    chat = ["chat", "--model", str(base), "--adapter", str(run), "--temperature", "0"]
    assert cli([*chat, "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    other = changed_copy(base, tmp_path / "other")
    cli_fails(
        ["generate", "--model", str(other), "--adapter", str(run), "--prompt", "x"],
        capsys,
        "different base model",
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    cli_fails(
        ["chat", "--model", str(other), "--adapter", str(run)], capsys, "different base model"
    )
    compiled = ["generate", "--model", str(run), "--prompt", "x", "--compile"]
    cli_fails(compiled, capsys, "--compile does not support prompt-tuned models")


def changed_copy(base, path):
    """Another model of the same shape: `base` with one weight changed a little."""
    model = load_model(base)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.add_(1e-3)
    return save_model(model, path, Tokenizer.from_file(base))


def test_bad_settings_and_families_are_one_line_and_exit_2(tmp_path, gpt_dir, dataset, capsys):
    out = tmp_path / "run"
    for method, setting, match in [
        ("lora", "--lora.rank=0", "lora.rank must be at least 1"),
        ("qlora", "--lora.rank=-2", "lora.rank must be at least 1"),
        ("adapter", "--adapter.bottleneck=0", "adapter.bottleneck must be at least 1"),
        ("prompt", "--prompt.num_tokens=0", "prompt.num_tokens must be at least 1"),
        ("prompt", "--prompt.init=text", "prompt.init=text needs prompt.text"),
        ("adapter", "--adapter.layers=5", "adapter.layers [5] are not layers of the model"),
        ("prompt", "--prompt.num_tokens=30", "lower train.block_size to 34"),
    ]:
        cli_fails(
            [
                "finetune",
                "--model",
                str(gpt_dir),
                "--method",
                method,
                "--data",
                str(dataset),
                "--out",
                str(out),
                "--no-progress",
                setting,
            ],
            capsys,
            match,
        )
    bert = tiny_model_dir(tmp_path / "models", "bert", [r["text"] for r in reviews(100)] * 3)
    cli_fails(
        [
            "finetune",
            "--model",
            str(bert),
            "--method",
            "prompt",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--no-progress",
        ],
        capsys,
        "prompt tuning is implemented for decoder (gpt) models, not bert",
    )
    assert not out.exists()  # nothing written by a refused run
