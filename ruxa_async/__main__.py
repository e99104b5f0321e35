"""``python -m ruxa_async``: the ``ruxa-async`` command line."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
