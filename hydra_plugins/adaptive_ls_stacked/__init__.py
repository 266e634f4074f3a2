"""``hydra/launcher=stacked``: a sweep's jobs that differ only in seeds, noise and smoothing trained as one model."""
