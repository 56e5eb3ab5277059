"""Settings from the command line, the environment and a TOML config file, and --version."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pypi_index_mirror.ops import command as pypi_mirror
from pypi_index_mirror.ops import options, settings
from pypi_index_mirror.ops.cli import VERSION, UsageError
from pypi_index_mirror.rstuf import bootstrap_csv as generate_csv
from tests.mirror_helpers import REPO
from tools import gen_options_doc

EXAMPLE = REPO / "pypi-mirror.example.toml"


def config(argv: list[str], environ: dict[str, str] | None = None) -> settings.Config:
    return settings.config_from(argv, pypi_mirror.build_parser(), environ=environ or {})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refused(argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(UsageError) as caught:
        config(argv, environ)
    return str(caught.value)


# --- precedence: command line > environment > file > default


def test_each_source_overrides_the_one_below(tmp_path: Path) -> None:
    file = write(tmp_path / "m.toml", "workers = 3\ntimeout = 7.5\nretries = 2\n")
    env = {"PYPI_MIRROR_WORKERS": "4", "PYPI_MIRROR_TIMEOUT": "8"}
    assert config([]).workers == settings.DEFAULTS.workers == 10
    from_file = config(["--config", str(file)])
    assert (from_file.workers, from_file.timeout, from_file.retries) == (3, 7.5, 2)
    from_env = config(["--config", str(file)], env)
    assert (from_env.workers, from_env.timeout, from_env.retries) == (4, 8.0, 2)
    from_cli = config(["--config", str(file), "--workers", "5"], env)
    assert (from_cli.workers, from_cli.timeout, from_cli.retries) == (5, 8.0, 2)


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    named = write(tmp_path / "env.toml", "workers = 3\n")
    given = write(tmp_path / "cli.toml", "workers = 5\n")
    assert config([], {options.CONFIG_ENV: str(named)}).workers == 3
    assert config(["--config", str(given)], {options.CONFIG_ENV: str(named)}).workers == 5
    assert config([], {"PYPI_MIRROR_WORKERS": ""}).workers == 10  # empty: unset


def test_conventional_environment_variables_and_switches(tmp_path: Path) -> None:
    file = write(tmp_path / "m.toml", 'pypi-url = "https://file.example"\nverbose = true\n')
    env = {"PYPI_URL": "https://env.example/", "RSTUF_API_URL": "https://rstuf.example"}
    got = config(["--config", str(file)], env)
    assert (got.pypi_url, got.rstuf_url, got.verbose) == (
        "https://env.example",
        "https://rstuf.example",
        True,
    )
    assert not config(["--config", str(file)], {"PYPI_MIRROR_VERBOSE": "0"}).verbose


def test_a_higher_source_choosing_quiet_replaces_a_lower_ones_verbose(tmp_path: Path) -> None:
    file = write(tmp_path / "m.toml", "verbose = true\n")
    got = config(["--config", str(file), "-q"])
    assert (got.verbose, got.quiet) == (False, True)
    got = config(["--config", str(file)], {"PYPI_MIRROR_QUIET": "yes"})
    assert (got.verbose, got.quiet) == (False, True)
    both = write(tmp_path / "both.toml", "verbose = true\nquiet = true\n")
    assert "verbose and quiet exclude each other" in refused(["--config", str(both)])
    assert "exclude each other" in refused(["-v", "-q"])


# --- paths


def test_relative_paths_in_the_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write(
        tmp_path / "etc" / "m.toml",
        'mirror-dir = "data"\nstate = "../var/state.json"\nmetrics-file = "/abs/m.prom"\n',
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # cron's working directory is $HOME, not the file's
    got = config(["--config", "../etc/m.toml"])
    assert got.mirror_dir == tmp_path / "etc" / "data"
    assert got.state_file == tmp_path / "var" / "state.json"
    assert got.metrics_file == Path("/abs/m.prom")
    assert config(["--config", str(file), "--mirror-dir", "x"]).mirror_dir == Path("x")


def test_the_state_defaults_to_the_working_directory_whatever_the_mirror(tmp_path: Path) -> None:
    """./state.json, beside the mirror directory: a config file that keeps it elsewhere says so."""
    file = write(tmp_path / "m.toml", 'mirror-dir = "data"\n')
    assert config(["--config", str(file)]).state_file == Path("state.json")
    assert config(["--mirror-dir", "/srv/m"]).state_file == Path("state.json")


def test_a_home_relative_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    file = write(tmp_path / "m.toml", 'mirror-dir = "~/mirror"\n')
    assert config(["--config", str(file)]).mirror_dir == tmp_path / "home" / "mirror"


# --- what is refused, and how it is named


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('mirror_dir = "x"\n', ["unknown key 'mirror_dir'", "did you mean 'mirror-dir'"]),
        ("[mirror]\nworkers = 3\n", ["unknown key 'mirror'"]),
        ("dry-run = true\n", ["unknown key 'dry-run'", "give it on the command line"]),
        ("full-check = true\n", ["unknown key 'full-check'", "command line"]),
        ("status = true\n", ["unknown key 'status'", "command line"]),
        ('rstuf-token = "s3cret"\n', ["unknown key 'rstuf-token'", "RSTUF_API_TOKEN"]),
        ('config = "other.toml"\n', ["unknown key 'config'", "cannot name another"]),
        ("workers = 100\n", ["workers: must be from 1 to 32, not 100"]),
        ("workers = 0\n", ["workers: must be from 1 to 32, not 0"]),
        ('workers = "8"\n', ["workers: must be a whole number, not '8'"]),
        ("workers = 2.5\n", ["workers: must be a whole number, not 2.5"]),
        ("timeout = true\n", ["timeout: must be a number, not True"]),
        ("timeout = 0.01\n", ["timeout: must be from 0.05 to 3600, not 0.01"]),
        ("grace = nan\n", ["grace: must be a finite number"]),
        ('pypi-url = "pypi.org"\n', ["pypi-url: not an http:// or https:// URL"]),
        ('pypi-url = "https://pypi.org/simple"\n', ["pypi-url:", "base URL"]),
        ("mirror-dir = 5\n", ["mirror-dir: must be a string, not 5"]),
        ('mirror-dir = ""\n', ["mirror-dir: must not be empty"]),
        ('verbose = "yes"\n', ["verbose: must be true or false, not 'yes'"]),
        ("workers = \n", ["is not valid TOML"]),
    ],
)
def test_a_bad_file_is_refused_with_the_key_named(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    file = write(tmp_path / "m.toml", text)
    message = refused(["--config", str(file)])
    assert message.startswith(f"config file {file}"), message
    for word in words:
        assert word in message, message


def test_a_missing_or_unreadable_config_file_is_named(tmp_path: Path) -> None:
    assert "does not exist" in refused(["--config", str(tmp_path / "none.toml")])
    assert "cannot read config file" in refused(["--config", str(tmp_path)])
    write(tmp_path / "latin1.toml", "")
    (tmp_path / "latin1.toml").write_bytes(b'pypi-url = "\xff"\n')
    assert "cannot read config file" in refused(["--config", str(tmp_path / "latin1.toml")])


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("PYPI_MIRROR_WORKERS", "many", "not a number: 'many'"),
        ("PYPI_MIRROR_RETRIES", "99", "must be from 0 to 20, not 99"),
        ("PYPI_MIRROR_VERBOSE", "maybe", "not true or false"),
        ("PYPI_URL", "ftp://x", "not an http:// or https:// URL"),
    ],
)
def test_a_bad_environment_variable_is_named(name: str, value: str, words: str) -> None:
    message = refused([], {name: value})
    assert message.startswith(f"environment variable {name}: ") and words in message


PATH_OPTIONS = [option for option in options.OPTIONS if option.path] + [options.CONFIG_OPTION]
EMPTY = "must not be empty (an unset variable?): give a path"


@pytest.mark.parametrize("option", PATH_OPTIONS, ids=lambda option: option.key)
def test_an_empty_path_is_refused_from_every_source(
    option: options.Option, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--mirror-dir "$DIR"`` with DIR unset (a cron line) is refused, never the cwd."""
    with pytest.raises(SystemExit) as exited:
        config([f"--{option.key}", ""])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.endswith(f"error: argument --{option.key}: {EMPTY}")
    assert option.env_name is not None
    assert refused([], {option.env_name: ""}) == f"environment variable {option.env_name}: {EMPTY}"
    if option.in_file:
        file = write(tmp_path / "m.toml", f'{option.key} = ""\n')
        assert refused(["--config", str(file)]) == f"config file {file}: {option.key}: {EMPTY}"


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("pypi_mirror.py", ["--mirror-dir", ""]),
        ("generate_csv.py", ["--mirror-dir", ""]),
        ("generate_csv.py", ["--output", ""]),
    ],
)
def test_an_empty_path_on_the_command_line_ends_with_exit_2_and_writes_nothing(
    script: str, args: list[str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / script), *args, "--pypi-url", "http://127.0.0.1:9"]
        if script == "pypi_mirror.py"
        else [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"argument {args[0]}: must not be empty" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_flags_are_checked() -> None:
    assert "--json goes with --status" in refused(["--json"])
    assert "--status only reads" in refused(["--status", "--dry-run"])
    got = config(["--status", "--json"])
    assert got.status and got.status_json


def test_a_bad_config_file_ends_the_cli_with_one_line_and_exit_2(tmp_path: Path) -> None:
    file = write(tmp_path / "m.toml", "workers = 100\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "pypi_mirror.py"), "--config", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    error, summary = lines  # one line for the error, then the summary every run ends with
    assert "workers: must be from 1 to 32, not 100" in error, lines
    assert " summary " in summary and summary.endswith(" exit=2"), lines
    assert not (tmp_path / "pypi-index-mirror").exists()


# --- the example config


def example_keys() -> tuple[set[str], set[str]]:
    """The keys set in the example, and those shown commented out (``# key = value``)."""
    text = EXAMPLE.read_text()
    active = set(tomllib.loads(text))
    commented = set(re.findall(r"^# ([a-z-]+) = ", text, flags=re.MULTILINE))
    return active, commented


def test_the_example_config_documents_every_file_key() -> None:
    active, commented = example_keys()
    file_keys = {option.key for option in options.OPTIONS if option.in_file}
    assert active | commented == file_keys
    assert not active & commented
    for key in commented:  # only what has no default is left for the operator to set
        option = next(option for option in options.OPTIONS if option.key == key)
        assert getattr(settings.DEFAULTS, option.dest) is None, key


def test_the_example_config_parses_to_a_valid_config(tmp_path: Path) -> None:
    got = config(["--config", str(EXAMPLE)])
    assert got.mirror_dir == Path("/srv/pypi-mirror/pypi-index-mirror")  # tests/test_deploy.py
    document = tomllib.loads(EXAMPLE.read_text())
    for option in options.OPTIONS:
        if option.key in document and not option.path:
            value = getattr(got, option.dest)
            value = list(value) if option.many else value  # a TOML array, held as a tuple
            expected = document[option.key]
            if hasattr(option.parse, "show"):  # a duration: "7d" in the file, seconds held
                assert option.parse is not None
                expected = option.parse(expected)
            assert value == expected, option.key
    # and with the commented-out keys switched on
    enabled = re.sub(r"^# ([a-z-]+ = )", r"\1", EXAMPLE.read_text(), flags=re.MULTILINE)
    full = config(["--config", str(write(tmp_path / "full.toml", enabled))])
    assert full.rstuf_url == "https://rstuf.internal"
    assert full.metrics_file == Path("/var/lib/prometheus/node-exporter/pypi_mirror.prom")


# --- generate_csv.py reads the same file


def test_generate_csv_finds_the_mirror_the_config_file_names(tmp_path: Path) -> None:
    file = write(tmp_path / "m.toml", 'mirror-dir = "data"\nworkers = 32\nretries = 1\n')
    argv = ["--config", str(file)]
    ours = config(argv)
    csv = generate_csv.parse_options(generate_csv.build_parser().parse_args(argv), environ={})
    assert (csv.mirror_dir, csv.state_path) == (ours.mirror_dir, ours.state_file)
    assert csv.mirror_dir == tmp_path / "data"
    assert csv.workers == generate_csv.usable_cpus()  # the sync's workers are not the hashers
    from_env = generate_csv.parse_options(
        generate_csv.build_parser().parse_args([]), environ={options.CONFIG_ENV: str(file)}
    )
    assert from_env.mirror_dir == tmp_path / "data"
    overridden = generate_csv.parse_options(
        generate_csv.build_parser().parse_args([*argv, "--state", "s.json"]), environ={}
    )
    assert overridden.state_path == Path("s.json")


def test_generate_csv_refuses_a_bad_config_file_like_the_sync(tmp_path: Path) -> None:
    file = write(tmp_path / "m.toml", 'mirror_dir = "data"\n')
    result = subprocess.run(
        [sys.executable, str(REPO / "generate_csv.py"), "--config", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "unknown key 'mirror_dir'" in result.stderr and "Traceback" not in result.stderr


# --- the option reference, docs/options.md


def test_the_option_reference_is_what_settings_generates() -> None:
    text = gen_options_doc.DOC.read_text(encoding="utf-8")
    assert text == gen_options_doc.with_table(text, settings.options_markdown()), (
        f"docs/options.md's option table is out of date: run `{settings.OPTIONS_DOC_COMMAND}`"
    )


def test_the_option_reference_has_a_row_per_option_with_its_sources() -> None:
    rows = {
        row.split(" | ")[0].split("`--", 1)[1].split()[0].rstrip("`"): row
        for row in settings.options_markdown().splitlines()[2:]
    }
    assert set(rows) == {o.key for o in options.OPTIONS} | {"config", "version"}
    assert rows["workers"] == (
        "| `--workers N` | `PYPI_MIRROR_WORKERS` | `workers` | `10` | 1-32 | "
        "concurrent page fetches |"
    )
    assert "`RSTUF_API_URL` | `rstuf-url` |" in rows["rstuf-url"]
    assert "| command line only |" in rows["dry-run"] and "PYPI_MIRROR" not in rows["dry-run"]
    assert "(comma- or space-separated) | `exclude` (an array) |" in rows["exclude"]
    assert "`67108864` (64 MiB) | 1024-1073741824 |" in rows["max-page-bytes"]
    assert rows["verbose"].startswith("| `-v`, `--verbose` |")
    assert "token" not in "".join(rows.values()), (
        "the RSTUF token is environment only, never an option"
    )


def test_the_option_table_is_replaced_only_between_its_markers() -> None:
    text = f"# Options\n\nprose\n\n{gen_options_doc.BEGIN}\nold\n{gen_options_doc.END}\nmore\n"
    assert gen_options_doc.with_table(text, "new\n") == text.replace("old\n", "new\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        gen_options_doc.with_table("# Options\n", "new\n")


# --- --version


@pytest.mark.parametrize("script", ["pypi_mirror.py", "generate_csv.py"])
def test_version(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"{script} {VERSION}"
