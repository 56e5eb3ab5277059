"""The deployment examples: the systemd units, the example config and the README's cron line.

The units are checked by systemd's own verifier (with the paths of this checkout put in,
since the example's /opt and /srv do not exist here) and against the code, the example
config and the nginx config they must agree with (one set of paths); the cron line is run
as cron runs it: `sh -c` with cron's bare environment (no venv, PATH=/usr/bin:/bin).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pypi_index_mirror.mirror.store import DEFAULT_MIRROR_DIR, DEFAULT_STATE_FILE, MirrorLayout
from pypi_index_mirror.ops import command as pypi_mirror
from pypi_index_mirror.ops import settings
from pypi_index_mirror.ops.cli import EXIT_PARTIAL, EXIT_TERMINATED
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import REPO

SERVICE = REPO / "deploy" / "pypi-mirror.service"
TIMER = REPO / "deploy" / "pypi-mirror.timer"
WATCH = REPO / "deploy" / "pypi-mirror-watch.service"
NGINX = REPO / "serving" / "nginx.conf"
EXAMPLE_CONFIG = REPO / "pypi-mirror.example.toml"
# Where the examples put things: the checkout with its venv, and the mirror's directory.
CHECKOUT, VENV_PYTHON, DATA = (
    "/opt/pypi-index-mirror",
    "/opt/pypi-index-mirror/.venv/bin/python",
    "/srv/pypi-mirror",
)
CRON_ENV = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "LOGNAME": "root", "HOME": "/root"}


def guard_variables() -> dict[str, str]:
    """The test guard's proxy variables (tests/conftest.py), kept in cron's bare environment."""
    names = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    return {name: value for name, value in os.environ.items() if name.lower() in names}


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_service_is_a_hardened_oneshot_that_agrees_with_the_code() -> None:
    service = unit(SERVICE)["Service"]
    assert service["Type"] == "oneshot"
    assert service["User"] == "pypi-mirror"
    assert service["WorkingDirectory"] == DATA
    assert service["ReadWritePaths"] == DATA  # the one writable place under ProtectSystem
    assert service["ProtectSystem"] == "strict"
    interpreter, script = service["ExecStart"].split()[:2]
    assert (interpreter, script) == (VENV_PYTHON, f"{CHECKOUT}/pypi_mirror.py")
    assert service["SuccessExitStatus"].split() == [str(EXIT_PARTIAL), str(EXIT_TERMINATED)]
    assert "TimeoutStopSec" in service


def test_timer_runs_the_service_every_five_minutes_without_overlap() -> None:
    timer = unit(TIMER)["Timer"]
    assert timer["OnUnitInactiveSec"] == "5min"
    assert "Unit" not in timer  # the service of the same name


def test_watch_service_runs_the_watch_with_the_oneshots_hardening() -> None:
    """The long-running unit: the same user, paths and sandbox as the one-shot, restarted on
    failure, SIGTERM's 143 a clean stop, and the interval one the code accepts."""
    watch, oneshot = unit(WATCH)["Service"], unit(SERVICE)["Service"]
    assert watch["Type"] == "exec"
    interpreter, script, *args = watch["ExecStart"].split()
    assert (interpreter, script) == (VENV_PYTHON, f"{CHECKOUT}/pypi_mirror.py")
    assert args[0] == "--watch" and settings.config_from(args, pypi_mirror.build_parser(), {}).watch
    assert watch["SuccessExitStatus"].split() == [str(EXIT_TERMINATED)]
    assert watch["Restart"] == "on-failure" and "TimeoutStopSec" in watch
    shared = {key: value for key, value in oneshot.items() if key not in WATCH_ONLY_DIFFERS}
    assert {key: watch.get(key) for key in shared} == shared


# what the long-running unit sets otherwise than the one-shot
WATCH_ONLY_DIFFERS = {"Type", "ExecStart", "SuccessExitStatus", "TimeoutStartSec"}


def test_nginx_serves_what_the_service_writes() -> None:
    (root,) = re.findall(r"(?m)^\s*root\s+([^;]+);", NGINX.read_text())
    assert root == f"{DATA}/pypi-index-mirror/pypi_mirror"


def nginx_root() -> Path:
    (root,) = re.findall(r"(?m)^\s*root\s+([^;]+);", NGINX.read_text())
    return Path(root)


def test_one_set_of_paths_in_the_unit_the_example_config_nginx_and_cron() -> None:
    """The unit runs with the defaults in its working directory; the example config names
    them absolutely; nginx serves that mirror's tree; the unit may write both; cron cds there."""
    service = unit(SERVICE)["Service"]
    working = Path(service["WorkingDirectory"])
    by_unit = (working / DEFAULT_MIRROR_DIR, working / DEFAULT_STATE_FILE)
    example = settings.config_from(
        ["--config", str(EXAMPLE_CONFIG)], pypi_mirror.build_parser(), environ={}
    )
    assert (example.mirror_dir, example.state_file) == by_unit
    assert nginx_root() == MirrorLayout(example.mirror_dir).served_dir
    writable = [Path(path) for path in service["ReadWritePaths"].split()]
    for path in (example.mirror_dir, example.state_file):
        assert any(path.is_relative_to(place) for place in writable), path
    assert not example.state_file.is_relative_to(MirrorLayout(example.mirror_dir).served_dir)
    assert f"cd {working} &&" in readme_cron_line()


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify (it insists the ExecStart binary exists: this checkout's)."""
    verify = shutil.which("systemd-analyze")
    text = SERVICE.read_text().replace(VENV_PYTHON, sys.executable).replace(CHECKOUT, str(REPO))
    (tmp_path / SERVICE.name).write_text(text)
    shutil.copy2(TIMER, tmp_path / TIMER.name)
    watch = WATCH.read_text().replace(VENV_PYTHON, sys.executable).replace(CHECKOUT, str(REPO))
    (tmp_path / WATCH.name).write_text(watch)
    if verify is None:  # not a systemd machine: the parse checks above are all there is
        return
    result = subprocess.run(
        [
            verify,
            "verify",
            str(tmp_path / SERVICE.name),
            str(tmp_path / TIMER.name),
            str(tmp_path / WATCH.name),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def readme_cron_line() -> str:
    readme = (REPO / "README.md").read_text()
    (line,) = re.findall(r"(?m)^\*/5 \* \* \* \* .+$", readme)
    return line


def test_readme_cron_line_works_under_crons_environment(tmp_path: Path) -> None:
    """The line as cron runs it (sh -c, bare PATH): a first sync into the directory it
    changes to, its output in mirror.log, exit 0."""
    command = readme_cron_line().split(" ", 5)[5]
    assert f"cd {DATA} &&" in command and VENV_PYTHON in command
    data = tmp_path / "srv"
    data.mkdir()
    command = (
        command.replace(VENV_PYTHON, sys.executable)
        .replace(CHECKOUT, str(REPO))
        .replace(DATA, str(data))
    )
    command = re.sub(r"RSTUF_API_URL=\S+ ", "", command)  # no RSTUF for a first sync
    with FakePyPI() as pypi:
        pypi.add_release("numpy", "1.0", files=2)
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            env={**CRON_ENV, **guard_variables(), "PYPI_URL": pypi.url},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, (command, (data / "mirror.log").read_text())
    assert (data / "pypi-index-mirror" / "pypi_mirror" / "simple" / "numpy" / "index.html").exists()
    assert (data / "state.json").exists()  # beside the mirror directory, as the unit has it
    assert not (data / "pypi-index-mirror" / "state.json").exists()
    assert "summary added=1" in (data / "mirror.log").read_text()


def readme_exit_codes() -> dict[int, str]:
    """The README's exit-code table: code -> meaning."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    return {int(code): meaning for code, meaning in re.findall(r"(?m)^\| (\d+) \| (.+) \|$", table)}


def test_readme_exit_codes_and_the_unit_agree_on_what_is_success() -> None:
    """The unit's SuccessExitStatus is the README's, every code it counts as success is one
    that waits for the next run or a clean stop, and the configuration errors a person must
    fix (RSTUF's 401, 403, a URL that is no RSTUF) are exit 1, which marks the unit failed."""
    success = unit(SERVICE)["Service"]["SuccessExitStatus"]
    readme = (REPO / "README.md").read_text()
    assert f"`SuccessExitStatus={success}`" in readme
    codes = readme_exit_codes()
    assert {0, 1, 2, 3, 4, EXIT_PARTIAL, EXIT_TERMINATED} <= codes.keys()
    for code in map(int, success.split()):
        assert code in codes
        assert not re.search(r"401|403|misconfigured", codes[code]), code
    assert all(words in codes[1] for words in ("401", "403", "no RSTUF API", "outbox"))
    assert "not bootstrapped" in codes[EXIT_PARTIAL]  # RSTUF's own 404: a wait, not an error
