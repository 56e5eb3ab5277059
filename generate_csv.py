"""Entry point: write RSTUF's bootstrap CSV of the mirror (``python3 generate_csv.py``).

The code lives in ``pypi_index_mirror.rstuf.bootstrap_csv``; this file stays so that
every documented command keeps working.
"""

import sys

from pypi_index_mirror.rstuf.bootstrap_csv import main

if __name__ == "__main__":
    sys.exit(main())
