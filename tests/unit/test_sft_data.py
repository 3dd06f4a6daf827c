"""SFT data: the loss mask covers exactly the assistant's tokens and end-of-turn, packing does not
leak attention across conversations, the generated instruction set's answers are right, and bad
conversations are one clear error each."""

import json
import re

import pytest
import torch
from helpers import tiny_gpt, write_jsonl

from lmforge.data.conversations import check_conversation, read_conversation_file
from lmforge.data.instructions import KINDS, generate_instructions
from lmforge.data.sft import collate_packed, encode_conversation, pack_rows
from lmforge.errors import UserError
from lmforge.eval.sft import answer_scores
from lmforge.tokenizer import train_bpe
from lmforge.tokenizer.chat import get_chat_template
from lmforge.train.fused_ce import IGNORE_INDEX
from lmforge.train.losses import causal_lm_loss

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six."},
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [m["content"] for m in CONVERSATION] + ["the quick brown fox jumps over a lazy dog"]
    return train_bpe(texts * 30, 320, show_progress=False)


def supervised_text(tokenizer, y: list[int]) -> list[str]:
    """The runs of consecutive supervised targets, decoded with their special tokens."""
    runs, current = [], []
    for t in [*y, IGNORE_INDEX]:
        if t == IGNORE_INDEX:
            if current:
                runs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(t)
    return runs


@pytest.mark.parametrize("template", ["chatml", "plain"])
def test_mask_covers_exactly_the_answers_and_their_end_of_turn(tokenizer, template):
    chat = get_chat_template(tokenizer, template)
    (x, y), cut = encode_conversation(chat, CONVERSATION, max_length=200)
    assert not cut and len(x) == len(y)
    ids = chat.tokenize(CONVERSATION).ids
    assert x == ids[:-1]
    assert all(t in (IGNORE_INDEX, ids[i + 1]) for i, t in enumerate(y))  # targets are next ids
    end = "<|im_end|>" if template == "chatml" else "<|endoftext|>"
    assert supervised_text(tokenizer, y) == [f"Four.{end}", f"Six.{end}"]


def test_a_long_conversation_is_cut_and_flagged(tokenizer):
    chat = get_chat_template(tokenizer, "chatml")
    (x, y), cut = encode_conversation(chat, CONVERSATION, max_length=12)
    assert cut and len(x) == len(y) == 12


def test_pack_rows_first_fit_decreasing():
    lengths = [5, 9, 3, 7, 2, 4]
    packs = pack_rows(lengths, 10)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 10 for p in packs)
    assert packs == [[1], [3, 2], [0, 5], [4]]  # 9 | 7+3 | 5+4 | 2: deterministic


def test_packing_does_not_leak_attention_across_conversations(tokenizer):
    """Each conversation in a packed row gets the logits and loss it gets alone."""
    torch.manual_seed(0)
    model = tiny_gpt("llama-tiny", tokenizer.vocab_size, max_seq_len=128).eval()
    chat = get_chat_template(tokenizer, "chatml")
    conversations = [CONVERSATION[1:3], CONVERSATION, CONVERSATION[:3]]
    rows = [encode_conversation(chat, c, 128)[0] for c in conversations]
    x, y, positions, mask = collate_packed([rows], pad_id=0)
    assert mask.shape == (1, 1, x.size(1), x.size(1))
    with torch.no_grad():
        packed = model(x, positions=positions, mask=mask)[0]  # (T, V)
        start = 0
        for row_x, _ in rows:
            alone = model(torch.tensor([row_x]))[0]
            torch.testing.assert_close(packed[start : start + len(row_x)], alone)
            start += len(row_x)
        separate = [
            causal_lm_loss(model, (torch.tensor([rx]), torch.tensor([ry]))) for rx, ry in rows
        ]
        counts = [sum(t != IGNORE_INDEX for t in ry) for _, ry in rows]
        expected = sum(loss * n for loss, n in zip(separate, counts)) / sum(counts)
        torch.testing.assert_close(causal_lm_loss(model, (x, y, positions, mask)), expected)


def test_without_the_mask_packing_would_leak(tokenizer):
    """The check above can fail: plain causal attention over the same row changes the logits."""
    torch.manual_seed(0)
    model = tiny_gpt("llama-tiny", tokenizer.vocab_size, max_seq_len=128).eval()
    chat = get_chat_template(tokenizer, "chatml")
    rows = [encode_conversation(chat, c, 128)[0] for c in (CONVERSATION[1:3], CONVERSATION)]
    x, _, positions, _ = collate_packed([rows], pad_id=0)
    with torch.no_grad():
        leaky = model(x, positions=positions)[0, len(rows[0][0]) :]
        alone = model(torch.tensor([rows[1][0]]))[0]
    assert not torch.allclose(leaky, alone, atol=1e-4)


ANSWER_CHECKS = {
    "add": lambda q: str(sum(map(int, re.findall(r"\d+", q)))),
    "subtract": lambda q: str(int(re.findall(r"\d+", q)[0]) - int(re.findall(r"\d+", q)[1])),
    "multiply": lambda q: str(int(re.findall(r"\d+", q)[0]) * int(re.findall(r"\d+", q)[1])),
    "count_letters": lambda q: str(len(re.findall(r'"(\w+)"', q)[0])),
    "count_words": lambda q: str(len(re.findall(r'"(.+)"', q)[0].split())),
    "count_letter": lambda q: str(re.findall(r'"(\w+)"', q)[1].count(re.findall(r'"(\w)"', q)[0])),
    "reverse_word": lambda q: re.findall(r'"(\w+)"', q)[0][::-1],
    "reverse_list": lambda q: ", ".join(reversed(q.split(": ", 1)[1].split(", "))),
    "uppercase": lambda q: re.findall(r'"(.+)"', q)[0].upper(),
    "sort_numbers": lambda q: ", ".join(map(str, sorted(map(int, re.findall(r"\d+", q))))),
    "json": lambda q: json.dumps(
        {"name": re.findall(r"to (\w+) and", q)[0], "age": int(re.findall(r"\d+", q)[0])}
    ),
}


def test_generated_instructions_have_the_right_answers():
    rows = generate_instructions(2000, seed=7)
    assert {r["kind"] for r in rows} == set(KINDS) == set(ANSWER_CHECKS)
    requests = [r["messages"][0]["content"] for r in rows]
    assert len(set(requests)) == len(rows)  # unique: held-out requests are never trained on
    for row in rows:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert assistant["content"] == ANSWER_CHECKS[row["kind"]](user["content"]), row
    assert generate_instructions(50, seed=7) == rows[:50]  # a pure function of (count, seed)


def test_answer_scores_exact_and_contained():
    exact, contained, by_kind = answer_scores(
        [" 85 ", "It is 85.", "HELLO  world", "hello world"],
        ["85", "85", "HELLO world", "HELLO WORLD"],
        ["add", "add", "upper", "upper"],
    )
    assert exact == 0.5 and contained == 0.75
    assert by_kind == {"add": (0.5, 2), "upper": (0.5, 2)}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"text": "hi"}, "no 'messages' field (fields: text)"),
        ({"messages": []}, "empty conversation"),
        ({"messages": "hello"}, "must be a list of messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "has role 'bot'"),
        ({"messages": [{"role": "user", "content": 3}]}, "has no 'content' string"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ],
)
def test_bad_conversation_rows_name_file_and_row(tmp_path, row, message):
    path = tmp_path / "chat.jsonl"
    good = {"messages": CONVERSATION[1:3]}
    write_jsonl(path, [good, row])
    with pytest.raises(UserError, match=re.escape(message)) as e:
        read_conversation_file(path)
    assert f"{path} row 2" in str(e.value)


def test_check_conversation_keeps_role_and_content_only():
    messages = [
        {"role": "user", "content": "a", "name": "x"},
        {"role": "assistant", "content": "b"},
    ]
    assert check_conversation(messages, "here") == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]
