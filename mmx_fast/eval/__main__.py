"""``python -m mmx_fast.eval`` (also under ``torchrun -m mmx_fast.eval``): see ``mmx_fast.eval.cli``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
