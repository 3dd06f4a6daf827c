"""A generated instruction set whose answers can be checked exactly: the `instructions` source of
`lmforge finetune --task sft`.

Each example is one user request and the one correct answer, computed by the generator:

    arithmetic   "What is 47 + 38?" -> "85"; subtraction; multiplication tables
    counting     letters in a word, words in a sentence, one letter's occurrences in a word
    reversing    a word spelled backwards, a list in reverse order
    formatting   a phrase in capital letters, numbers sorted, a JSON object with two fields

Answers are bare ("85", not "47 + 38 = 85."), so held-out exact match measures whether a model
follows the request, not only whether it knows the result: a chat model that has never seen the set
usually wraps correct answers in sentences, and SFT teaches it the format along with the skills.

Generation is a pure function of (count, seed): `numpy.random.default_rng(seed)` draws a kind, then
its operands. Requests are unique (a repeat is drawn again), so a held-out example's request never
appears in training; the split is made afterwards (data/splits.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from lmforge.errors import UserError

GENERATION_SEED = 1234
"""Seed of the built-in set; the split has its own (data.split_seed)."""

WORDS = (
    "apple", "river", "garden", "planet", "window", "orange", "silver", "forest", "candle",
    "pencil", "mirror", "rocket", "butter", "marble", "island", "jacket", "tunnel", "violin",
    "dragon", "pepper", "summer", "winter", "basket", "bridge", "castle", "cotton", "desert",
    "engine", "falcon", "guitar", "hammer", "jungle", "kitten", "ladder", "meadow", "needle",
    "oyster", "parrot", "rabbit", "saddle", "ticket", "valley", "wallet", "yellow", "zipper",
    "cat", "dog", "sun", "tree", "book", "lamp", "ship", "bird", "fish", "rain", "star", "moon",
    "cloud", "stone", "bread", "chair", "clock", "horse", "music", "paper", "water", "light",
    "banana", "library", "morning", "journey", "picture", "blanket", "captain", "diamond",
)  # fmt: skip
"""Common English words of 3 to 7 letters, the operands of the word tasks."""

NAMES = ("Ann", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas")

Example = tuple[str, str]
"""(request, answer)."""


def _add(rng: np.random.Generator) -> Example:
    a, b = rng.integers(1, 100, 2).tolist()
    return f"What is {a} + {b}?", str(a + b)


def _subtract(rng: np.random.Generator) -> Example:
    a, b = sorted(rng.integers(1, 100, 2).tolist(), reverse=True)
    return f"What is {a} - {b}?", str(a - b)


def _multiply(rng: np.random.Generator) -> Example:
    a, b = rng.integers(2, 13, 2).tolist()
    return f"What is {a} times {b}?", str(a * b)


def _word(rng: np.random.Generator) -> str:
    return WORDS[int(rng.integers(len(WORDS)))]


def _words(rng: np.random.Generator, low: int, high: int) -> list[str]:
    n = int(rng.integers(low, high + 1))
    return [WORDS[i] for i in rng.choice(len(WORDS), n, replace=False)]


def _count_letters(rng: np.random.Generator) -> Example:
    word = _word(rng)
    return f'How many letters are in the word "{word}"?', str(len(word))


def _count_words(rng: np.random.Generator) -> Example:
    sentence = " ".join(_words(rng, 3, 8))
    return f'How many words are in "{sentence}"?', str(len(sentence.split()))


def _count_letter(rng: np.random.Generator) -> Example:
    word = _word(rng)
    letter = word[int(rng.integers(len(word)))]
    return f'How many times does the letter "{letter}" appear in "{word}"?', str(word.count(letter))


def _reverse_word(rng: np.random.Generator) -> Example:
    word = _word(rng)
    return f'Spell the word "{word}" backwards.', word[::-1]


def _reverse_list(rng: np.random.Generator) -> Example:
    items = _words(rng, 3, 5)
    return f"Reverse the order of this list: {', '.join(items)}", ", ".join(reversed(items))


def _uppercase(rng: np.random.Generator) -> Example:
    phrase = " ".join(_words(rng, 2, 3))
    return f'Write "{phrase}" in capital letters.', phrase.upper()


def _sort_numbers(rng: np.random.Generator) -> Example:
    numbers = rng.choice(100, int(rng.integers(3, 6)), replace=False).tolist()
    listed = ", ".join(map(str, numbers))
    return f"Sort from smallest to largest: {listed}", ", ".join(map(str, sorted(numbers)))


def _json_object(rng: np.random.Generator) -> Example:
    name, age = NAMES[int(rng.integers(len(NAMES)))], int(rng.integers(18, 90))
    request = f'Write a JSON object with "name" set to {name} and "age" set to {age}.'
    return request, json.dumps({"name": name, "age": age})


KINDS: dict[str, Callable[[np.random.Generator], Example]] = {
    "add": _add,
    "subtract": _subtract,
    "multiply": _multiply,
    "count_letters": _count_letters,
    "count_words": _count_words,
    "count_letter": _count_letter,
    "reverse_word": _reverse_word,
    "reverse_list": _reverse_list,
    "uppercase": _uppercase,
    "sort_numbers": _sort_numbers,
    "json": _json_object,
}
"""Kind name -> generator of one (request, answer) from a numpy Generator."""


def generate_instructions(count: int, seed: int = GENERATION_SEED) -> list[dict]:
    """`count` unique examples as conversation rows:
    {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "kind": name}."""
    if count < 1:
        raise UserError(f"data.examples must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    rows: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > 20 * count + 1000:  # the kinds hold tens of thousands of distinct requests
            raise UserError(f"cannot generate {count:,} distinct instructions; ask for fewer")
        kind = kinds[int(rng.integers(len(kinds)))]
        request, answer = KINDS[kind](rng)
        if request in seen:
            continue
        seen.add(request)
        messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages, "kind": kind})
    return rows
