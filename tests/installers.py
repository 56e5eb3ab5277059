"""pip and uv run as a user runs them, against an index on loopback: one way for every test.

The serving tests (nginx in front of a directory or a bucket), the TUF proxy's and the
formats' all install real wheels through an index with unmodified installers; each
runs them here, in an environment that reads no configuration, cache or index of
this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

INSTALL_TIMEOUT = 300  # seconds: a bound for a hung installer, not a speed limit


def client_env(tmp: Path) -> dict[str, str]:
    """pip's and uv's environment: no config file or index of this machine, no cache.

    Only the index given on the command line (loopback) is asked; files come from the
    stand-in's loopback file host, where the pages link. The proxy variables are the test
    guard's (conftest): any other host would be refused. No terminal width (``COLUMNS``,
    which pytest-xdist's workers have): uv would wrap its messages, which tests read whole.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("PIP_", "UV_", "PYTHON")) and key not in ("COLUMNS", "LINES")
    }
    env.update(
        {
            "PIP_CONFIG_FILE": os.devnull,  # pip reads no pip.conf at all
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            "UV_NO_CONFIG": "1",
            "UV_NO_CACHE": "1",
            "UV_PYTHON_DOWNLOADS": "never",
            "HOME": str(tmp),
            "XDG_CACHE_HOME": str(tmp / "cache"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
        }
    )
    return env


def pip_install(
    index_url: str,
    target: Path,
    *names: str,
    tmp: Path,
    verbose: bool = False,
    retries: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``pip install --no-deps --target TARGET NAMES`` from `index_url` (``…/simple/``).

    ``retries=False`` (``--retries 0``) for an install the test expects to be refused with
    a status pip retries (502): pip would ask four more times, with backoff, for the same
    answer, and report the same error after the last.
    """
    return subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--no-cache-dir",
            "--disable-pip-version-check", "--root-user-action=ignore", "--no-deps",
            *(["-vv"] if verbose else ["--quiet"]), *([] if retries else ["--retries", "0"]),
            "--index-url", index_url, "--target", str(target), *names,
        ],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=client_env(tmp),
    )  # fmt: skip


def uv_install(
    index_url: str, target: Path, *names: str, tmp: Path, retries: bool = True
) -> subprocess.CompletedProcess[str]:
    """``uv pip install --no-deps --target TARGET NAMES`` from `index_url`, for this Python.

    ``retries=False`` (``UV_HTTP_RETRIES=0``): as pip's, for an install expected to be
    refused with a status uv retries (three times, over ~10 s).
    """
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    env = client_env(tmp)
    if not retries:
        env["UV_HTTP_RETRIES"] = "0"
    return subprocess.run(
        [
            uv, "pip", "install", "--quiet", "--no-config", "--no-cache", "--no-deps",
            "--python", sys.executable, "--index-url", index_url,
            "--target", str(target), *names,
        ],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env,
    )  # fmt: skip


def installed_version(target: Path, module: str) -> str:
    """The version a test wheel (`tests.fake_pypi.build_wheel`) installed into `target`."""
    text = (target / module / "__init__.py").read_text()
    match = re.fullmatch(r'VERSION = "([^"]+)"\n', text)
    assert match, text
    return match.group(1)
