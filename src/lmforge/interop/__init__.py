"""Import and export of other formats, all through the same in-memory pair (`GPT`, `Tokenizer`).

- `hf.py`         Hugging Face directories (config.json + safetensors + tokenizer files), both ways;
                  `hf_gpt2.py`, `hf_llama.py`, `hf_bert.py` and `hf_t5.py` hold the per-architecture
                  name and layout tables
- `gguf.py`       GGUF files (llama.cpp), both ways; `gguf_read.py` parses and dequantizes,
                  `gguf_layout.py` maps names and rotary row order, `gguf_tokenizer.py` moves the
                  tokenizer and chat template in and out of the metadata
"""

from lmforge.interop.gguf import load_gguf, save_gguf
from lmforge.interop.hf import load_hf, save_hf

__all__ = ["load_gguf", "load_hf", "save_gguf", "save_hf"]
