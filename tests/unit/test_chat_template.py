"""Chat templates (render, errors, end of turn, assistant mask) and `ChatSession` (history,
truncation to the context window, stopping at end-of-turn, interrupted answers)."""

import pytest
from helpers import tiny_gpt

from lmforge.errors import UserError
from lmforge.infer import SamplingParams
from lmforge.infer.chat import ChatSession
from lmforge.infer.engine import Engine
from lmforge.models import GPT
from lmforge.tokenizer import Tokenizer, train_bpe, train_char
from lmforge.tokenizer.chat import (
    CHATML_TEMPLATE,
    PLAIN_TEMPLATE,
    ChatTemplate,
    apply_chat_template,
    default_chat_template,
    get_chat_template,
    render_chat,
)

# SmolLM2-135M-Instruct's own template (from its GGUF metadata): ChatML with a default system prompt.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

TEXT = (
    "Hello there! How are you today? I am fine, thank you. What is the capital of France? "
    "The capital of France is Paris. Be brief and polite.\n"
)
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,!?:\n"

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there!"},
    {"role": "assistant", "content": "Hi! How are you?"},
    {"role": "user", "content": "Fine, thank you."},
    {"role": "assistant", "content": "Good.\nThe capital of France is Paris."},
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe([TEXT] * 20, 300, show_progress=False)


def masked_runs(tokenizer: Tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded text of each maximal run of masked tokens."""
    runs: list[list[int]] = []
    previous = 0
    for token, m in zip(ids, mask):
        if m and not previous:
            runs.append([])
        if m:
            runs[-1].append(token)
        previous = m
    return [tokenizer.decode(r) for r in runs]


# ----------------------------------------------------------------------------------- rendering
def test_chatml_renders_by_hand():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert render_chat(messages, CHATML_TEMPLATE) == expected
    prompt = render_chat(messages[:1], CHATML_TEMPLATE, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    system = [{"role": "system", "content": "Be brief."}, *messages[:1]]
    assert render_chat(system, CHATML_TEMPLATE, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2_template_adds_its_default_system_prompt():
    user = [{"role": "user", "content": "What is the capital of France?"}]
    assert render_chat(user, SMOLLM2_TEMPLATE, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    own = [{"role": "system", "content": "Be brief."}, *user]
    assert render_chat(own, SMOLLM2_TEMPLATE) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    )


def test_plain_template_with_and_without_end_of_text():
    messages = CONVERSATION[:3]
    with_eos = train_char(CHARS)
    assert default_chat_template(with_eos) == PLAIN_TEMPLATE
    assert apply_chat_template(with_eos, messages, add_generation_prompt=True) == (
        "Be brief.\n\nUser: Hello there!\nAssistant: Hi! How are you?<|endoftext|>\nAssistant: "
    )
    without = train_char(CHARS, special_tokens=())
    assert apply_chat_template(without, messages) == (
        "Be brief.\n\nUser: Hello there!\nAssistant: Hi! How are you?\n"
    )


def test_template_choice(bpe, tmp_path):
    assert default_chat_template(bpe) == CHATML_TEMPLATE
    assert get_chat_template(bpe).source == CHATML_TEMPLATE  # no template of its own: the default
    assert get_chat_template(bpe, "plain").source == PLAIN_TEMPLATE
    with pytest.raises(UserError, match="no chat template of its own"):
        get_chat_template(bpe, "model")
    file = tmp_path / "t.jinja"
    file.write_text(SMOLLM2_TEMPLATE, encoding="utf-8")
    assert get_chat_template(bpe, file).source == SMOLLM2_TEMPLATE
    with pytest.raises(UserError, match="unknown chat template"):
        get_chat_template(bpe, "chatml2")
    # The model's own template travels with the tokenizer (chat_template.jinja) and wins.
    own = Tokenizer.from_json(bpe.to_json())
    own.chat_template = SMOLLM2_TEMPLATE
    own.save(tmp_path / "tok")
    loaded = Tokenizer.from_file(tmp_path / "tok")
    assert get_chat_template(loaded).source == SMOLLM2_TEMPLATE


def test_transformers_helpers_and_generation_block():
    source = (
        "{% for m in messages %}{% generation %}{{ m | tojson }}{% endgeneration %}"
        "{% if loop.index == 1 %}{% break %}{% endif %}{% endfor %}"
        "|{{ strftime_now('%Y') | length }}|{{ bos_token }}|{{ eos_token }}"
    )
    messages = [{"role": "user", "content": "é"}, {"role": "user", "content": "x"}]
    assert render_chat(messages, source, bos_token="<s>", eos_token="</s>") == (
        '{"role": "user", "content": "é"}|4|<s>|</s>'
    )


@pytest.mark.parametrize(
    "source, match",
    [
        ("{% for m in messages %}{{ m['content'] }}", "syntax error"),
        ("{{ raise_exception('roles must alternate') }}", "refused the conversation: roles must"),
        ("{{ tools.name }}", "UndefinedError"),
        ("{{ messages.append(1) }}", "SecurityError"),  # the environment is immutable
        ("{{ ''.__class__.__mro__ }}", "SecurityError|Undefined"),
    ],
)
def test_template_that_fails_to_render_is_one_line_user_error(source, match):
    with pytest.raises(UserError, match=match) as e:
        render_chat([{"role": "user", "content": "Hi"}], source)
    assert "\n" not in str(e.value)


def test_bad_messages_are_user_errors():
    with pytest.raises(UserError, match="list of"):
        render_chat("Hi", CHATML_TEMPLATE)
    with pytest.raises(UserError, match="no 'role'"):
        render_chat([{"content": "Hi"}], CHATML_TEMPLATE)


# --------------------------------------------------------------------------------- end of turn
def test_end_of_turn_and_stop_tokens(bpe):
    chatml = get_chat_template(bpe)
    assert chatml.end_of_turn == ("<|im_end|>",)
    assert chatml.stop_token_ids == {
        bpe.token_to_id("<|im_end|>"),
        bpe.token_to_id("<|endoftext|>"),
    }
    assert chatml.stop_strings == []
    plain = get_chat_template(train_char(CHARS))
    assert plain.end_of_turn == ("<|endoftext|>",)
    assert plain.stop_strings == ["\nUser:"]
    newline = get_chat_template(train_char(CHARS, special_tokens=()))
    assert newline.end_of_turn == ("\n",)
    assert newline.stop_token_ids == set()
    assert newline.stop_strings == ["\n", "\nUser:"]


# ---------------------------------------------------------------------------- assistant mask
def test_chatml_mask_covers_answers_and_end_of_turn_only(bpe):
    template = get_chat_template(bpe)
    tokens = template.tokenize(CONVERSATION)
    assert len(tokens.ids) == len(tokens.assistant_mask)
    full = template.render(CONVERSATION)
    assert bpe.decode(tokens.ids) == full
    # Boundaries sit at special tokens and newlines: the ids are those of the whole text.
    assert tokens.ids == bpe.encode(full)
    assert masked_runs(bpe, tokens.ids, tokens.assistant_mask) == [
        "Hi! How are you?<|im_end|>",
        "Good.\nThe capital of France is Paris.<|im_end|>",
    ]
    unmasked = bpe.decode([t for t, m in zip(tokens.ids, tokens.assistant_mask) if not m])
    assert unmasked == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there!<|im_end|>\n"
        "<|im_start|>assistant\n\n<|im_start|>user\nFine, thank you.<|im_end|>\n"
        "<|im_start|>assistant\n\n"
    )
    im_end = bpe.token_to_id("<|im_end|>")
    ends = [i for i, t in enumerate(tokens.ids) if t == im_end]
    assert [tokens.assistant_mask[i] for i in ends] == [0, 0, 1, 0, 1]


def test_mask_with_a_real_model_template(bpe):
    template = ChatTemplate(SMOLLM2_TEMPLATE, bpe)
    tokens = template.tokenize(CONVERSATION[1:])  # no system message: the default one is added
    assert bpe.decode(tokens.ids).startswith("<|im_start|>system\nYou are a helpful AI")
    assert masked_runs(bpe, tokens.ids, tokens.assistant_mask) == [
        "Hi! How are you?<|im_end|>",
        "Good.\nThe capital of France is Paris.<|im_end|>",
    ]


def test_plain_template_masks(bpe):
    char = train_char(CHARS)
    tokens = get_chat_template(char).tokenize(CONVERSATION)
    assert masked_runs(char, tokens.ids, tokens.assistant_mask) == [
        "Hi! How are you?<|endoftext|>",
        "Good.\nThe capital of France is Paris.<|endoftext|>",
    ]
    newline = train_char(CHARS, special_tokens=())
    tokens = get_chat_template(newline).tokenize(CONVERSATION[:4])
    assert masked_runs(newline, tokens.ids, tokens.assistant_mask) == ["Hi! How are you?\n"]


def test_mask_of_a_conversation_without_answers_is_all_zero(bpe):
    tokens = get_chat_template(bpe).tokenize(CONVERSATION[:2])
    assert tokens.ids and not any(tokens.assistant_mask)


def test_template_that_is_not_prefix_stable_is_rejected(bpe):
    # Writes the number of messages first, so earlier renderings are not prefixes of later ones.
    counting = "{{ messages | length }}" + CHATML_TEMPLATE
    with pytest.raises(UserError, match="not prefix-stable"):
        ChatTemplate(counting, bpe).tokenize(CONVERSATION)
    no_prompt = CHATML_TEMPLATE.split("{% if add_generation_prompt")[0]
    with pytest.raises(UserError, match="ignores add_generation_prompt"):
        ChatTemplate(no_prompt, bpe).tokenize(CONVERSATION)


# --------------------------------------------------------------------------------- ChatSession
@pytest.fixture(scope="module")
def model(bpe) -> GPT:
    return tiny_gpt(
        "llama-tiny", bpe.vocab_size, num_heads=2, num_kv_heads=1, max_seq_len=128
    ).eval()


def script(monkeypatch, tokenizer, *pieces, interrupt_after=None):
    """Make the engine emit `pieces` (texts, each encoded) whatever the prompt; record prompts.

    With `interrupt_after=n`, the first generation raises KeyboardInterrupt after n tokens."""
    ids = [t for p in pieces for t in tokenizer.encode(p)]
    calls: list[dict] = []

    def fake_generate(self, prompts, params, stop_token_ids=frozenset()):
        calls.append({"prompt": tokenizer.decode(prompts[0]), "stop": set(stop_token_ids)})
        for n, token in enumerate(ids):
            if interrupt_after is not None and n == interrupt_after and len(calls) == 1:
                raise KeyboardInterrupt
            yield [token] * len(prompts)

    monkeypatch.setattr(Engine, "generate", fake_generate)
    return calls


def test_session_stops_at_end_of_turn_and_keeps_history(monkeypatch, bpe, model):
    calls = script(monkeypatch, bpe, "Paris.", "<|im_end|>", "Extra text")
    session = ChatSession(model, bpe, params=SamplingParams(max_new_tokens=8), system="Be brief.")
    assert session.send("What is the capital of France?") == "Paris."
    assert session.send("Hello there!") == "Paris."
    system = {"role": "system", "content": "Be brief."}
    question = {"role": "user", "content": "What is the capital of France?"}
    assert calls[0]["prompt"] == session.template.render([system, question], True)
    assert calls[1]["prompt"] == session.template.render(session.messages[:-1], True)
    assert "assistant\nParis.<|im_end|>\n<|im_start|>user\nHello there!" in calls[1]["prompt"]
    assert bpe.token_to_id("<|im_end|>") in calls[0]["stop"]
    roles = [m["role"] for m in session.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    session.set_system("")
    session.reset()
    assert session.messages == []


def test_session_keeps_an_interrupted_answer(monkeypatch, bpe, model):
    script(monkeypatch, bpe, "Paris is", "<|im_end|>", interrupt_after=1)
    session = ChatSession(model, bpe, params=SamplingParams(max_new_tokens=8))
    shown = []
    with pytest.raises(KeyboardInterrupt):
        for piece in session.stream("What is the capital of France?"):
            shown.append(piece)
    assert session.history[-1] == {"role": "assistant", "content": "".join(shown)}
    assert session.send("Hello there!") == "Paris is"  # the session goes on
    answer = session.stream("Be brief.")
    next(answer)
    answer.close()  # closing the stream early also records what was shown
    assert session.history[-1]["role"] == "assistant" and len(session.history) == 6


def test_session_truncates_history_from_the_oldest_turns(monkeypatch, bpe, model):
    script(monkeypatch, bpe, "Fine.", "<|im_end|>")
    params = SamplingParams(max_new_tokens=8)
    session = ChatSession(model, bpe, params=params, system="Be brief.")
    exchanges = [
        [{"role": "user", "content": f"Hello there! {i}"}, {"role": "assistant", "content": "Hi!"}]
        for i in range(6)
    ]
    session.history = [m for pair in exchanges for m in pair]
    prompt = session.prompt("What is the capital of France?")
    budget = session.context - params.max_new_tokens
    assert len(bpe.encode(prompt)) <= budget
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello")
    kept = len(session.history) // 2
    assert 0 < kept < 6 and session.dropped == 12 - 2 * kept
    assert session.history == [m for pair in exchanges[6 - kept :] for m in pair]  # newest kept
    one_more = [*exchanges[5 - kept], *session.history]  # one more exchange would not fit
    question = {"role": "user", "content": "What is the capital of France?"}
    rendered = session.template.render([session.messages[0], *one_more, question], True)
    assert len(bpe.encode(rendered)) > budget


def test_session_message_that_cannot_fit_is_a_user_error(monkeypatch, bpe, model):
    script(monkeypatch, bpe, "Fine.", "<|im_end|>")
    session = ChatSession(model, bpe, params=SamplingParams(max_new_tokens=8))
    session.history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi"}]
    with pytest.raises(UserError, match="context of 128 tokens"):
        session.send("Hello there! " * 60)
    assert len(session.history) == 2  # unchanged
    too_long_answer = ChatSession(model, bpe, params=SamplingParams(max_new_tokens=128))
    with pytest.raises(UserError, match="lower --max-new-tokens"):
        too_long_answer.send("Hi")


def test_session_on_a_tiny_model_is_deterministic_when_greedy(bpe, model):
    params = SamplingParams(temperature=0, max_new_tokens=6)
    answers = []
    for _ in range(2):
        session = ChatSession(model, bpe, params=params)
        answers.append([session.send("Hello there!"), session.send("What is the capital?")])
        assert len(session.history) == 4
    assert answers[0] == answers[1]
    assert all("<|im_end|>" not in a for a in answers[0])
