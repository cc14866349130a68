"""``python -m mmx_fast``: the ``mmx-fast`` command line (see ``mmx_fast.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
