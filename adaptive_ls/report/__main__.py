"""``python -m adaptive_ls.report``: the same command as ``adaptive-ls-report``."""
import sys

from adaptive_ls.report import main

sys.exit(main())
