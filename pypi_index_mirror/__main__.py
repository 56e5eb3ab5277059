"""``python -m pypi_index_mirror``: the same as ``python pypi_mirror.py``."""

import sys

from pypi_index_mirror.ops.command import main

if __name__ == "__main__":
    sys.exit(main())
