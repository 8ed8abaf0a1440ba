"""``python -m plugformer``: the ``plugformer`` command."""

import sys

from plugformer.cli import main

if __name__ == "__main__":
    sys.exit(main())
