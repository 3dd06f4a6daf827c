"""Tokenizers: byte-level BPE, GPT-2's BPE and character-level, all saved as one `tokenizer.json`.

- `core.py`   the `Tokenizer` wrapper (encode/decode, save/load, fingerprint) and `load_tokenizer`
- `train.py`  `train_bpe` (byte-level BPE), `train_char` (nanoGPT's character vocabulary) and
              `train_wordpiece` (BERT), `train_unigram` (T5, with sentinels)
- `gpt2.py`   GPT-2's tokenizer rebuilt offline from the `gpt2.tiktoken` ranks file
- `chat.py`   Jinja chat templates: render conversations, tokenize them with an assistant mask
"""

from lmforge.tokenizer.chat import ChatTemplate, apply_chat_template, get_chat_template
from lmforge.tokenizer.core import EOS_TOKEN, Tokenizer, load_tokenizer
from lmforge.tokenizer.gpt2 import gpt2_tokenizer, load_gpt2_tokenizer
from lmforge.tokenizer.train import (
    DEFAULT_SPECIAL_TOKENS,
    WORDPIECE_SPECIAL_TOKENS,
    train_bpe,
    train_char,
    train_unigram,
    train_wordpiece,
)

__all__ = [
    "ChatTemplate",
    "DEFAULT_SPECIAL_TOKENS",
    "EOS_TOKEN",
    "Tokenizer",
    "WORDPIECE_SPECIAL_TOKENS",
    "apply_chat_template",
    "get_chat_template",
    "gpt2_tokenizer",
    "load_gpt2_tokenizer",
    "load_tokenizer",
    "train_bpe",
    "train_char",
    "train_unigram",
    "train_wordpiece",
]
