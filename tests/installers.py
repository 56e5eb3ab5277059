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
    guard's (conftest): any other host would be refused.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("PIP_", "UV_", "PYTHON"))
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
    index_url: str, target: Path, *names: str, tmp: Path, verbose: bool = False
) -> subprocess.CompletedProcess[str]:
    """``pip install --no-deps --target TARGET NAMES`` from `index_url` (``…/simple/``)."""
    return subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--no-cache-dir",
            "--disable-pip-version-check", "--root-user-action=ignore", "--no-deps",
            *(["-vv"] if verbose else ["--quiet"]),
            "--index-url", index_url, "--target", str(target), *names,
        ],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=client_env(tmp),
    )  # fmt: skip


def uv_install(
    index_url: str, target: Path, *names: str, tmp: Path
) -> subprocess.CompletedProcess[str]:
    """``uv pip install --no-deps --target TARGET NAMES`` from `index_url`, for this Python."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    return subprocess.run(
        [
            uv, "pip", "install", "--quiet", "--no-config", "--no-cache", "--no-deps",
            "--python", sys.executable, "--index-url", index_url,
            "--target", str(target), *names,
        ],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=client_env(tmp),
    )  # fmt: skip


def installed_version(target: Path, module: str) -> str:
    """The version a test wheel (`tests.fake_pypi.build_wheel`) installed into `target`."""
    text = (target / module / "__init__.py").read_text()
    match = re.fullmatch(r'VERSION = "([^"]+)"\n', text)
    assert match, text
    return match.group(1)
