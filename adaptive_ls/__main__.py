"""``python -m adaptive_ls ...``: the same command as ``adaptive-ls ...``."""
from adaptive_ls.cli import entry

entry()
