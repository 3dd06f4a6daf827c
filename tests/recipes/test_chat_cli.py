"""`lmforge chat` with piped stdin (/reset, /system, Ctrl-C, errors) and `lmforge generate --chat`,
on a tiny model built here; plus SmolLM2 from its GGUF (slow)."""

import io

import pytest
from helpers import tiny_gpt

from lmforge.cli import main as cli
from lmforge.infer import SamplingParams
from lmforge.infer.chat import ChatSession
from lmforge.infer.engine import Engine
from lmforge.models import GPT, get_preset
from lmforge.models.loading import load_model_and_tokenizer, save_model
from lmforge.tokenizer import train_bpe
from lmforge.tokenizer.chat import get_chat_template

TEXT = (
    "Hello there! How are you today? I am fine, thank you. What is the capital of France? "
    "The capital of France is Paris. Be brief and polite.\n"
)
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
OWN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny random Llama with a ChatML-ready BPE tokenizer (no template of its own)."""
    tokenizer = train_bpe([TEXT] * 20, 300, show_progress=False)
    model = tiny_gpt(
        "llama-tiny", tokenizer.vocab_size, num_heads=2, num_kv_heads=1, max_seq_len=128
    )
    return save_model(model, tmp_path_factory.mktemp("chat") / "model", tokenizer)


@pytest.fixture(scope="module")
def tokenizer(chat_model):
    return load_model_and_tokenizer(chat_model)[1]


def script(monkeypatch, tokenizer, *pieces, interrupt_first=False):
    """Make the engine emit `pieces` whatever the prompt, and record the prompts it gets.

    With `interrupt_first`, the first generation raises KeyboardInterrupt after one token."""
    ids = [t for p in pieces for t in tokenizer.encode(p)]
    calls: list[dict] = []

    def fake_generate(self, prompts, params, stop_token_ids=frozenset()):
        calls.append({"prompt": tokenizer.decode(prompts[0]), "stop": set(stop_token_ids)})
        for n, token in enumerate(ids):
            if interrupt_first and len(calls) == 1 and n == 1:
                raise KeyboardInterrupt
            yield [token] * len(prompts)

    monkeypatch.setattr(Engine, "generate", fake_generate)
    return calls


def chat(monkeypatch, model_dir, stdin, *options):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin) if isinstance(stdin, str) else stdin)
    return cli(["chat", "--model", str(model_dir), "--max-new-tokens", "8", *options])


def test_chat_piped_with_system_and_reset(monkeypatch, capsys, chat_model, tokenizer):
    calls = script(monkeypatch, tokenizer, "Fine.", "<|im_end|>", "never shown")
    stdin = (
        "Hello there!\n\n/system Be brief.\nHow are you?\n/reset\nWhat is the capital?\n/exit\nx\n"
    )
    assert chat(monkeypatch, chat_model, stdin) == 0
    out, err = capsys.readouterr()
    assert out == "Fine.\nFine.\nFine.\n"
    assert "(system message set)" in err and "(history cleared)" in err
    template = get_chat_template(tokenizer)
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    system = {"role": "system", "content": "Be brief."}
    answer = {"role": "assistant", "content": "Fine."}
    assert [c["prompt"] for c in calls] == [
        template.render([user("Hello there!")], True),
        template.render([system, user("Hello there!"), answer, user("How are you?")], True),
        template.render([system, user("What is the capital?")], True),  # after /reset
    ]
    assert tokenizer.token_to_id("<|im_end|>") in calls[0]["stop"]


def test_chat_uses_the_model_template_and_system_option(monkeypatch, capsys, tmp_path, tokenizer):
    model_dir = tmp_path / "own"
    tokenizer.chat_template = OWN_TEMPLATE
    try:
        cfg = get_preset("llama-tiny", vocab_size=tokenizer.vocab_size, hidden_size=32)
        save_model(GPT(cfg), model_dir, tokenizer)
    finally:
        tokenizer.chat_template = None
    calls = script(monkeypatch, tokenizer, "Paris.", "<|im_end|>")
    assert chat(monkeypatch, model_dir, "What is the capital?\n/system\nHi\n") == 0
    assert SMOLLM2_SYSTEM in calls[0]["prompt"]
    assert chat(monkeypatch, model_dir, "What is the capital?\n", "--system", "Be brief.") == 0
    assert calls[2]["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert "(system message removed)" in capsys.readouterr().err


@pytest.mark.parametrize("compile_option", [[], ["--compile"]])
def test_chat_real_tiny_model_greedy(monkeypatch, capsys, chat_model, compile_option):
    stdin = "Hello there!\nWhat is the capital of France?\n"  # end of input quits
    assert chat(monkeypatch, chat_model, stdin, "--temperature", "0", *compile_option) == 0
    out = capsys.readouterr().out
    model, tokenizer = load_model_and_tokenizer(chat_model)
    session = ChatSession(model, tokenizer, params=SamplingParams(temperature=0, max_new_tokens=8))
    expected = [session.send("Hello there!"), session.send("What is the capital of France?")]
    assert out == "".join(a + "\n" for a in expected)
    assert "<|im_end|>" not in out


def test_ctrl_c_during_an_answer_keeps_the_session(monkeypatch, capsys, chat_model, tokenizer):
    calls = script(monkeypatch, tokenizer, "Paris is", "<|im_end|>", interrupt_first=True)
    assert chat(monkeypatch, chat_model, "What is the capital?\nHello there!\n") == 0
    out, err = capsys.readouterr()
    assert "(answer interrupted)" in err
    partial = tokenizer.decode(tokenizer.encode("Paris is")[:1])
    assert out == f"{partial}\nParis is\n"
    assert (
        f"<|im_start|>assistant\n{partial}<|im_end|>\n<|im_start|>user\nHello" in calls[1]["prompt"]
    )


class _CtrlCAtPrompt(io.StringIO):
    """stdin whose second read is interrupted by Ctrl-C."""

    reads = 0

    def readline(self, *args):
        self.reads += 1
        if self.reads == 2:
            raise KeyboardInterrupt
        return super().readline(*args)


def test_ctrl_c_at_the_prompt_quits_cleanly(monkeypatch, capsys, chat_model, tokenizer):
    calls = script(monkeypatch, tokenizer, "Fine.", "<|im_end|>")
    assert chat(monkeypatch, chat_model, _CtrlCAtPrompt("Hello there!\nnever read\n")) == 0
    assert capsys.readouterr().out == "Fine.\n\n"
    assert len(calls) == 1


def test_chat_message_too_long_is_reported_and_the_session_goes_on(
    monkeypatch, capsys, chat_model, tokenizer
):
    calls = script(monkeypatch, tokenizer, "Fine.", "<|im_end|>")
    stdin = "Hello there! " * 80 + "\n/help\n/nope\nHello there!\n"
    assert chat(monkeypatch, chat_model, stdin) == 0
    out, err = capsys.readouterr()
    assert "error: the message needs" in err and "context of 128 tokens" in err
    assert "commands: /reset" in err and "unknown command /nope" in err
    assert out == "Fine.\n" and len(calls) == 1


def test_chat_bad_template_is_one_line_error(capsys, monkeypatch, chat_model, tmp_path):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m.content }}", encoding="utf-8")
    for template, match in [
        (tmp_path / "missing.jinja", "unknown chat template"),
        (broken, "syntax"),
    ]:
        assert chat(monkeypatch, chat_model, "Hi\n", "--template", str(template)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_generate_chat_applies_template_and_stops_at_end_of_turn(
    monkeypatch, capsys, chat_model, tokenizer
):
    calls = script(monkeypatch, tokenizer, "Paris.", "<|im_end|>", " And more.")
    question = "What is the capital of France?"
    args = ["generate", "--model", str(chat_model), "--prompt", question, "--chat"]
    assert cli(args) == 0
    assert capsys.readouterr().out == "Paris.\n"
    template = get_chat_template(tokenizer)
    assert calls[0]["prompt"] == template.render([{"role": "user", "content": question}], True)
    assert cli([*args, "--prompt", "Hello there!"]) == 0
    assert capsys.readouterr().out == (
        f"--- [0] ---\n> {question}\nParis.\n--- [1] ---\n> Hello there!\nParis.\n"
    )


@pytest.mark.parametrize("compile_option", [[], ["--compile"]])
def test_generate_chat_real_tiny_model(capsys, chat_model, compile_option):
    args = ["generate", "--model", str(chat_model), "--chat", "--temperature", "0", *compile_option]
    assert cli([*args, "--prompt", "Hello there!", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    model, tokenizer = load_model_and_tokenizer(chat_model)
    session = ChatSession(model, tokenizer, params=SamplingParams(temperature=0, max_new_tokens=6))
    assert out == session.send("Hello there!") + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True])
def test_smollm2_greedy_knows_the_capital_of_france(compiled):
    gguf = pytest.importorskip("lmforge.interop.gguf")
    from lmforge.data.sources import fetch
    from lmforge.infer import compile_decoding

    path = fetch("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tokenizer = gguf.load_gguf(path)
    if compiled:
        compile_decoding(model)
    session = ChatSession(model, tokenizer, params=SamplingParams(temperature=0, max_new_tokens=24))
    assert session.template.end_of_turn == ("<|im_end|>",)
    assert SMOLLM2_SYSTEM in session.prompt("What is the capital of France?")
    answer = session.send("What is the capital of France?")
    assert "Paris" in answer, answer
