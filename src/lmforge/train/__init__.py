"""Training: one loop for every objective (loop.py), with its optimizer, schedule, checkpoints,
metrics and multi-process data parallelism in small modules beside it."""
