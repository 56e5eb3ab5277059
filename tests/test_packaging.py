"""Packaging: the wheel carries every module and both console scripts, the lock file pins
every requirement with hashes, and a checkout still runs the scripts directly."""

from __future__ import annotations

import logging
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
SCRIPTS = {
    "pypi-mirror": "pypi_index_mirror.ops.command:main",
    "pypi-mirror-csv": "pypi_index_mirror.rstuf.bootstrap_csv:main",
    "pypi-mirror-proxy": "pypi_index_mirror.proxy.cli:main",
}
PACKAGE = "pypi_index_mirror"


def top_level_modules() -> set[str]:
    return {path.stem for path in REPO.glob("*.py")}


def package_files() -> set[str]:
    """Every module of the package, as a path relative to the checkout."""
    return {path.relative_to(REPO).as_posix() for path in (REPO / PACKAGE).rglob("*.py")}


def requirements() -> list[Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#", 1)[0]) for line in lines if line.split("#", 1)[0].strip()]


def project_version() -> str:
    """The version the build reads (pyproject's `attr`), read the same way: from the module."""
    module, _, name = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"].rpartition(".")
    source = (REPO / f"{module.replace('.', '/')}.py").read_text()
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
    for name in package_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
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
    assert package_files() <= names
    assert not any(name.startswith("tests/") for name in names)
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points
    required = [Requirement(line) for line in re.findall(r"(?m)^Requires-Dist: (.+)$", metadata)]
    always = {str(r) for r in required if r.marker is None}
    assert always == {str(r) for r in requirements()}
    extras = {str(r) for r in required if r.marker is not None}
    assert extras == {'boto3>=1.28; extra == "s3"'}  # --storage s3://, imported only then


def test_installed_console_scripts_run(wheel: Path, tmp_path: Path) -> None:
    """Installed into a venv, both scripts answer --version and --help (exit 0)."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    see_running_site_packages(python)
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


def see_running_site_packages(python: Path) -> None:
    """Let the venv of `python` import the dependencies this interpreter imports: no index needed.

    A ``.pth`` file naming the running interpreter's site directories, not
    ``system_site_packages``: that would give the base interpreter's packages, which
    lack the dependencies when the tests themselves run from a virtual environment
    (as the README installs them). The checkout is not among them, so the scripts
    import the installed modules.
    """
    site_dirs = [
        entry
        for entry in sys.path
        if Path(entry).name in ("site-packages", "dist-packages") and Path(entry).is_dir()
    ]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "outer-environment.pth").write_text("".join(f"{d}\n" for d in site_dirs))


@pytest.mark.parametrize("script", ["pypi_mirror.py", "generate_csv.py"])
def test_scripts_run_from_a_checkout(script: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--version"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [script, project_version()]


def test_every_module_logs_to_its_own_name_under_the_package() -> None:
    """`logging.getLogger(__name__)` everywhere: one tree that -v and -q set, and a record's
    logger says which module wrote it."""
    named = [
        path
        for path in sorted(package_files())
        if re.search(r"getLogger\(\s*[\"'f]", (REPO / path).read_text())
    ]
    assert named == [], "loggers named by hand"


def test_verbosity_sets_the_package_s_tree_and_leaves_libraries_at_warning() -> None:
    from pypi_index_mirror.ops import cli as cli_support
    from pypi_index_mirror.sync import run

    modules = [logging.getLogger(name) for name in (run.__name__, "pypi_index_mirror.http")]
    libraries = [logging.getLogger(name) for name in ("urllib3", "tuf", "requests")]
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        cli_support.configure_logging(verbose=True, quiet=False)
        assert all(module.isEnabledFor(logging.DEBUG) for module in modules)
        assert not any(library.isEnabledFor(logging.INFO) for library in libraries)
        cli_support.configure_logging(verbose=False, quiet=False)
        assert all(module.isEnabledFor(logging.INFO) for module in modules)
        assert not any(module.isEnabledFor(logging.DEBUG) for module in modules)
        cli_support.configure_logging(verbose=False, quiet=True)
        assert not any(module.isEnabledFor(logging.INFO) for module in modules)
        assert any(library.isEnabledFor(logging.WARNING) for library in libraries)
    finally:
        root.handlers[:], root.level = saved
        logging.getLogger(cli_support.PACKAGE_LOGGER).setLevel(logging.NOTSET)
