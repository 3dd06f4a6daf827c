"""Import and export of other formats (Hugging Face checkpoints; GGUF to come)."""
