"""A small fixed index whose pages warehouse itself rendered: the stand-in is held to those bytes.

`build_fixed_index` makes, in a `FakePyPI`, one project that exercises every rule of
warehouse's detail page (``warehouse/packaging/utils.py`` ``_simple_detail`` and
``templates/api/simple/detail.html``): a legacy version sorted first, two releases that compare
equal (``1.0``, ``1.0.0``) whose files interleave by filename, a release with no files (left out
of ``versions``), a yank with a reason that needs escaping and is not ASCII, a yank without one,
``requires-python``, core metadata, provenances with and without core metadata (two spaces
before ``data-provenance``), and upload times with and without microseconds; plus a quarantined
project and one with a non-normalized name for the roots.

The expected bytes under ``fixtures/warehouse/`` were made by feeding these same inputs to
warehouse's own ``_simple_detail``/``_simple_index`` and its templates (pypi/warehouse 6b62157,
Jinja2 with autoescape, ``trim_blocks`` and ``lstrip_blocks``; JSON through its
``json-with-newline`` renderer), outside this repository: only the bytes are kept here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.fake_pypi import FakePyPI, make_dist_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "warehouse"
NOW = 1_700_000_000  # the clock the fixed index is built with
PROJECT = "Fixed.Project"
NORMALIZED = "fixed-project"
YANK_REASON = 'Broken: "quotes" & <tags>, Ünïcode'


def build_fixed_index(fake: FakePyPI) -> None:
    """Build the fixed index in `fake` (made with ``clock=lambda: NOW``)."""

    def dist(filename: str, python_version: str, provenance: bool, uploaded: int = NOW):
        return make_dist_file(NORMALIZED, filename, python_version, uploaded, provenance=provenance)

    day = 86_400
    fake.add_release(
        PROJECT, "2004d", [dist("fixed_project-2004d.tar.gz", "source", False, NOW - 9 * day)]
    )
    fake.add_release(PROJECT, "0.8", [dist("fixed_project-0.8-py3-none-any.whl", "py3", False)])
    fake.yank_release(PROJECT, "0.8")
    fake.add_release(PROJECT, "0.9", [dist("fixed_project-0.9.tar.gz", "source", True)])
    fake.yank_release(PROJECT, "0.9", YANK_REASON)
    no_micros = dataclasses.replace(
        dist("fixed_project-1.0-py3-none-any.whl", "py3", False), upload_micros=0
    )
    fake.add_release(
        PROJECT,
        "1.0",
        [dist("fixed_project-1.0.tar.gz", "source", True), no_micros],
        requires_python="<4,>=3.8",
    )
    fake.add_release(PROJECT, "1.0.0", [dist("fixed_project-1.0.0-py3-none-any.whl", "py3", True)])
    fake.add_release(PROJECT, "3.0", [])
    fake.add_release("Other_Name", "0.1", [dist("other_name-0.1.tar.gz", "source", False)])
    fake.create_project("held")
    fake.quarantine_project("held")
