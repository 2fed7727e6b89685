"""``python -m l2rec COMMAND``: the same as the ``l2rec`` console script."""

import sys

from l2rec.cli import main

if __name__ == "__main__":  # spawned children import the main module: they must not run it
    sys.exit(main())
