"""Entry point: keep a local mirror of PyPI's simple index (``python pypi_mirror.py``).

The code lives in the package ``pypi_index_mirror`` (its docstring is the module map);
this file stays so that every documented command, cron line and unit keeps working.
"""

import sys

from pypi_index_mirror.ops.command import main

if __name__ == "__main__":
    sys.exit(main())
