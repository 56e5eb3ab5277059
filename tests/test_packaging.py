"""Packaging: the wheel carries every module and both console scripts, the lock file pins
every requirement with hashes, and a checkout still runs the scripts directly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.mirror_helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# No pip.conf of this machine (extra indexes, constraints): --no-index means no index at all.
PIP_OFFLINE = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
SCRIPTS = {"pypi-mirror": "pypi_mirror:main", "pypi-mirror-csv": "generate_csv:main"}


def top_level_modules() -> set[str]:
    return {path.stem for path in REPO.glob("*.py")}


def requirements() -> list[Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#", 1)[0]) for line in lines if line.split("#", 1)[0].strip()]


def project_version() -> str:
    """The version the build reads (pyproject's `attr`), read the same way: from the module."""
    module, _, name = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"].rpartition(".")
    source = (REPO / f"{module}.py").read_text()
    match = re.search(rf'(?m)^{name} = "([^"]+)"$', source)
    assert match, f"{module}.{name} is not a string literal"
    return match.group(1)


def test_every_top_level_module_is_packaged() -> None:
    """A new module left out of py-modules would be missing from every installed copy."""
    listed = PYPROJECT["tool"]["setuptools"]["py-modules"]
    assert sorted(listed) == sorted(top_level_modules())
    assert PYPROJECT["project"]["scripts"] == SCRIPTS


def test_lock_pins_every_requirement_with_hashes() -> None:
    """requirements.lock (deployment) and requirements.txt (ranges) cannot drift apart."""
    text = (REPO / "requirements.lock").read_text()
    pins = dict(re.findall(r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text))
    pinned = {canonicalize_name(name): version for name, version in pins.items()}
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"requirements.lock does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.lock pins {name}=={pinned[name]}, outside {requirement}"
        )
    # Every requirement line has hashes (pip --require-hashes refuses the file otherwise).
    blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", text)
    for block in blocks:
        if re.match(r"[A-Za-z0-9]", block):
            assert "--hash=sha256:" in block, block.splitlines()[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline from a copy of the sources (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy2(REPO / name, source / name)
    for module in top_level_modules():
        shutil.copy2(REPO / f"{module}.py", source / f"{module}.py")
    shutil.copytree(
        REPO / "pypi_index_mirror",
        source / "pypi_index_mirror",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    built = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
            "--no-index", "--disable-pip-version-check", "--wheel-dir", str(tmp / "dist"),
            str(source),
        ],
        capture_output=True, text=True, timeout=120, env=PIP_OFFLINE,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (found,) = (tmp / "dist").glob("*.whl")
    return found


def test_wheel_holds_the_modules_scripts_and_dependencies(wheel: Path) -> None:
    version = project_version()
    assert wheel.name == f"pypi_index_mirror-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"pypi_index_mirror-{version}.dist-info"
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert {f"{module}.py" for module in top_level_modules()} <= names
    assert not any(name.startswith("tests/") for name in names)
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points
    required = [Requirement(line) for line in re.findall(r"(?m)^Requires-Dist: (.+)$", metadata)]
    assert {str(r) for r in required} == {str(r) for r in requirements()}


def test_installed_console_scripts_run(wheel: Path, tmp_path: Path) -> None:
    """Installed into a venv, both scripts answer --version and --help (exit 0)."""
    env_dir = tmp_path / "venv"
    # The dependencies come from this interpreter's site-packages: no index is needed.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
            "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel),
        ],
        capture_output=True, text=True, timeout=120, env=PIP_OFFLINE,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    for script in SCRIPTS:
        for flag in ("--version", "--help"):
            result = subprocess.run(
                [str(env_dir / "bin" / script), flag],
                capture_output=True, text=True, timeout=60, cwd=tmp_path,
            )  # fmt: skip
            assert result.returncode == 0, (script, flag, result.stderr)
        version = subprocess.run(
            [str(env_dir / "bin" / script), "--version"], capture_output=True, text=True
        )
        assert version.stdout.split()[-1] == project_version()


@pytest.mark.parametrize("script", ["pypi_mirror.py", "generate_csv.py"])
def test_scripts_run_from_a_checkout(script: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--version"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [script, project_version()]
