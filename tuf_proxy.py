#!/usr/bin/env python3
"""Serve the mirror's index pages to pip and uv only once python-tuf has verified them.

``python tuf_proxy.py --mirror-url URL --tuf-metadata-url URL --tuf-root FILE``
(or the console script ``pypi-mirror-proxy``); then ``pip install --index-url
http://127.0.0.1:8080/simple/ ...``. The code is in ``pypi_index_mirror/proxy/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pypi_index_mirror.proxy.cli import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
