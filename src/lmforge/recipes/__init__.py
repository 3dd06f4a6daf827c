"""One readable file per CLI command. Each exposes `main(cfg)` and does no work at import time."""
