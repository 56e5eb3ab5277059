"""Rewrite the generated option table in docs/options.md from ops/options.py's declarations.

Run from the checkout: ``python -m tools.gen_options_doc``. Only the part between the two
marker comments is replaced; the prose around it is written by hand.
tests/test_settings.py fails while the file differs from what this would write.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pypi_index_mirror.ops import settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "options.md"
BEGIN = (
    "<!-- generated from ops/options.py by `python -m tools.gen_options_doc`: "
    "edit the declarations there, not this table -->"
)
END = "<!-- end of the generated table -->"


def with_table(text: str, table: str) -> str:
    """`text` with the part between the markers replaced by `table`; ValueError without them."""
    head, begin, rest = text.partition(BEGIN + "\n")
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{DOC} lacks the markers {BEGIN!r} and {END!r}")
    return head + begin + table + end + tail


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    updated = with_table(text, settings.options_markdown())
    if updated != text:
        DOC.write_text(updated, encoding="utf-8")
        print(f"rewrote the option table in {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
