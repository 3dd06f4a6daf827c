"""`shakespeare-names`: silver-standard named entities in Shakespeare's dialogue, generated.

Made from the plays of the `shakespeare` source (data/sources.py; public domain texts) as data
for `lmforge finetune --task tag` (data/tagging.py), in the BIO tags of CoNLL-2003 (Tjong Kim Sang
& De Meulder, 2003): PER for the plays' characters, LOC for places. "Silver standard": the tags
come from a gazetteer matched word by word, not from annotators, so a name that is missing from
the lists (a character mentioned but not listed, a place not in `PLACES`) stays O.

1. Names. For every play (a file with a "Persons Represented" / "Dramatis Personae" list) the
   names of its characters are taken from that list: the part of each entry before its first
   comma, less titles, roles and nationalities (`NOT_NAMES`: "King", "Lady", "Sir", "English",
   ...) and words after "of" ("Earl of Kent" names a title, not a person). A candidate that occurs
   in lower case `COMMON_WORD_COUNT` (3) or more times in the whole corpus is a common word
   ("Page", "Will", "Bottom") and is dropped. The names of all plays form one gazetteer, so a
   character is tagged wherever any play mentions them. Places are the fixed list `PLACES`
   (which wins over a character of the same name).
2. Sentences. The dialogue from the first act on (blocks after a speaker heading such as "Ham."
   or "LADY CAPULET."; stage directions in [brackets] removed) is cut into sentences at . ! ?
   and split into words by `split_words` (punctuation apart, a possessive 's apart).
3. Tags. Every word found in the gazetteer (exact, case-sensitive match) is PER or LOC;
   consecutive words of one type form one entity (B- then I-: "John Falstaff").
4. Selection. Sentences of 4 to 40 words are kept, each text once; of those with an entity
   `SHAKESPEARE_ENTITY_SENTENCES` (3,000) are drawn, and a third as many without one, by
   `random.Random(SHAKESPEARE_SEED)`, and kept in corpus order.

The result is deterministic: 4,000 sentences from 37 plays, with 517 character names and 78
places in the gazetteer (2,877 train entities after the default split).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.errors import UserError

SHAKESPEARE_SEED = 0
SHAKESPEARE_ENTITY_SENTENCES = 3000
"""Sentences with at least one entity in `shakespeare-names`; a third as many have none."""
SENTENCE_WORDS = (4, 40)
"""Shortest and longest sentence (in words) that `shakespeare-names` keeps."""
COMMON_WORD_COUNT = 3
"""A name candidate seen this often in lower case is a common word, not a name."""

PLACES = frozenset(
    """Agincourt Alexandria Antioch Arden Athens Belmont Birnam Bohemia Bordeaux Britain Calais
    Candia Carthage Colchos Corinth Coventry Crete Cyprus Delphos Denmark Dover Dunsinane Eastcheap
    Egypt Elsinore England Ephesus Epidamnum Florence France Genoa Germany Greece Harfleur Illyria
    Inverness Ireland Italy Jerusalem Lisbon London Mantua Marseilles Messina Mexico Milan Mytilene
    Naples Navarre Norway Padua Pentapolis Persia Philippi Pisa Poland Rhodes Rome Rouen Russia
    Sardis Scotland Sicilia Spain Syracuse Tarsus Thebes Tripoli Troy Tunis Tyre Venice Verona
    Vienna Wales Westminster Windsor Wittenberg""".split()
)
"""Place names (LOC) of `shakespeare-names`, written here: countries and cities of the plays.
Titles that name people in the plays (York, Kent, Gloucester, Burgundy, Paris) are left out."""

NOT_NAMES = frozenset(
    """a an and the of to in with at his her their my other old young two three four first second
    third fourth fifth sixth seventh eighth king queen prince princess duke duchess earl lord
    lords lady ladies sir dame friar master mistress mrs doctor cardinal archbishop bishop abbot
    abbess count countess marquis captain general lieutenant sergeant knight thane son daughter
    brother sister father mother wife husband servant servants page boy child don signior
    citizen senator tribune officer gentleman gentlewoman ghost chorus nurse clown fool archduke
    marquess triumvir crier dancer mariner scrivener courtezan carriers clowns falconers gaolers
    outlaws reapers scribes secretaries shepherdesses apparitions magnificoes amazons goths
    induction albans athenian british dutchman english florentine french frenchman greek roman
    romans scotch sicilian trojan volscian""".split()
)
"""Words of a dramatis-personae entry that are never part of a name (compared in lower case):
titles, kinships, roles, groups and nationalities ("English Ambassadors")."""

_PERSONAE = re.compile(r"^(persons represented|dramatis personae)", re.IGNORECASE)
_PERSONAE_END = re.compile(r"^(scene|act|the prologue|induction)\b", re.IGNORECASE)
_FIRST_ACT = re.compile(r"^act (i|1|first)\b", re.IGNORECASE)
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'. ]{0,40}\.$")
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z]+(?:(?:'(?!s\b)|-)[A-Za-z]+)*|'s\b|'[A-Za-z]+|--|\d+|\S")


def split_words(text: str) -> list[str]:
    """Words and punctuation of `text`, as `shakespeare-names` splits them: "Hamlet's sword--"
    -> ["Hamlet", "'s", "sword", "--"] (elisions such as "reliev'd" and "'tis", and hyphenated
    words, stay whole)."""
    return _WORD.findall(text)


def _personae_names(lines: list[str]) -> list[str]:
    """Name candidates of a play's dramatis personae (see the module docstring)."""
    start = next((i for i, line in enumerate(lines) if _PERSONAE.match(line.strip())), None)
    if start is None:
        return []
    names = []
    for line in lines[start + 1 :]:
        if _PERSONAE_END.match(line.strip()):
            break
        entry = re.split(r"[,}]", line.strip(), maxsplit=1)[0]
        after_of = False
        for word in re.findall(r"[A-Za-z]+", entry):
            lowered = word.lower()
            if after_of or lowered in NOT_NAMES:
                after_of = lowered == "of" or (after_of and lowered == "the")
                continue
            if len(word) >= 3 and word[0].isupper():
                names.append(word.capitalize())
    return names


def _speech_sentences(lines: list[str]) -> Iterator[str]:
    """Sentences of the speeches from the first act on: blocks (between blank lines) whose first
    line is a speaker heading such as "Ham." or "LADY CAPULET.", stage directions removed."""
    first_act = next((i for i, line in enumerate(lines) if _FIRST_ACT.match(line.strip())), 0)
    block: list[str] = []
    for line in [*lines[first_act:], ""]:
        if line.strip():
            block.append(line.strip())
            continue
        if len(block) >= 2 and _SPEAKER.match(block[0]) and len(block[0].split()) <= 3:
            speech = _STAGE_DIRECTION.sub(" ", " ".join(block[1:]))
            for sentence in _SENTENCE_END.split(" ".join(speech.split())):
                if sentence:
                    yield sentence
        block = []


def tag_words(words: Sequence[str], names: frozenset[str], places: frozenset[str]) -> list[str]:
    """BIO tags by exact match: a word in `places` is LOC, in `names` PER; a run of words of one
    type is one entity."""
    tags, previous = [], None
    for word in words:
        kind = "LOC" if word in places else "PER" if word in names else None
        tags.append("O" if kind is None else ("I-" if kind == previous else "B-") + kind)
        previous = kind
    return tags


def generate_shakespeare_names(
    play_files: Sequence[Path],
    entity_sentences: int = SHAKESPEARE_ENTITY_SENTENCES,
    seed: int = SHAKESPEARE_SEED,
) -> tuple[list[list[str]], list[list[str]], dict]:
    """(words, tags, facts) of the silver-standard data made from `play_files` (module docstring);
    files without a dramatis personae list (the poems) are skipped."""
    plays = {}
    for path in sorted(play_files):
        lines = path.read_text(encoding="utf-8").splitlines()
        candidates = _personae_names(lines)
        if candidates:
            plays[path.name] = (lines, candidates)
    if not plays:
        raise UserError("no play with a dramatis personae list found for shakespeare-names")
    lowercase = Counter(
        word
        for lines, _ in plays.values()
        for line in lines
        for word in re.findall(r"\b[a-z]+\b", line)
    )
    names = frozenset(
        name
        for _, candidates in plays.values()
        for name in candidates
        if lowercase[name.lower()] < COMMON_WORD_COUNT and name not in PLACES
    )
    with_entities, without, seen = [], [], set()
    lo, hi = SENTENCE_WORDS
    for lines, _ in plays.values():
        for sentence in _speech_sentences(lines):
            words = split_words(sentence)
            if not lo <= len(words) <= hi or sentence in seen:
                continue
            seen.add(sentence)
            tags = tag_words(words, names, PLACES)
            (with_entities if any(t != "O" for t in tags) else without).append((words, tags))
    rng = random.Random(seed)
    n_entity = min(entity_sentences, len(with_entities))
    n_plain = min(n_entity // 3, len(without))
    chosen = sorted(rng.sample(range(len(with_entities)), n_entity))
    plain = sorted(rng.sample(range(len(without)), n_plain))
    rows = [with_entities[i] for i in chosen] + [without[i] for i in plain]
    facts = {
        "plays": len(plays),
        "person_names": len(names),
        "place_names": len(PLACES),
        "sentences_with_entities": n_entity,
        "sentences_without_entities": n_plain,
        "generation_seed": seed,
    }
    return [w for w, _ in rows], [t for _, t in rows], facts
