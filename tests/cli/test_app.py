"""The group: store selection, global options, errors and exit codes."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.cli import cli, main
from ckpt.cli.app import find_store
from ckpt.cli.commands._common import parse_duration, parse_options, parse_size_option

from .conftest import Invoke, parse


def test_store_flag_selects_the_store(invoke: Invoke, store: ckpt.Store) -> None:
    result = invoke("ls", "--json")
    assert parse(result) == {"branches": {}, "tags": {}}


def test_env_var_selects_the_store(runner: CliRunner, store: ckpt.Store, store_path: Path) -> None:
    result = runner.invoke(cli, ["ls", "--json"], env={"CKPT_STORE": str(store_path)})
    assert result.exit_code == 0, result.output
    assert parse(result)["branches"] == {}


def test_nearest_store_is_found_walking_up(
    runner: CliRunner, store: ckpt.Store, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = store_path.parent / "a" / "b" / "c"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_store() == store_path.resolve()
    store.save({"w": [1]}, message="found me")
    result = runner.invoke(cli, ["log", "--json"])
    assert result.exit_code == 0, result.output
    assert parse(result)[0]["message"] == "found me"


def test_a_dot_ckpt_folder_without_config_is_not_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    assert find_store() is None


def test_flag_beats_env(runner: CliRunner, store: ckpt.Store, store_path: Path, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["--store", str(store_path), "ls"], env={"CKPT_STORE": str(tmp_path / "nowhere")})
    assert result.exit_code == 0, result.output


def test_no_store_says_how_to_create_one(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["log"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: no ckpt store in")
    assert lines[1].startswith("hint: ") and "`ckpt init`" in lines[1] and "--store" in lines[1]
    assert result.stdout == ""


def test_missing_store_at_url_is_error_with_hint(invoke: Invoke) -> None:
    result = invoke("log", code=1)
    assert result.stderr.startswith("error: no ckpt store at")
    assert "hint: create one with `ckpt init" in result.stderr


def test_ckpt_error_exits_1_with_one_error_line_and_hint(invoke: Invoke, store: ckpt.Store) -> None:
    result = invoke("show", "nope", code=1)
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: no branch, tag or snapshot matches 'nope'"
    assert lines[1].startswith("hint: ")
    assert len(lines) == 2


def test_usage_errors_exit_2_and_look_like_ckpt_errors(invoke: Invoke, store: ckpt.Store) -> None:
    cases = {
        ("log", "--bogus"): ("error: no such option '--bogus'", "usage: ckpt log [OPTIONS] [REV]"),
        ("nosuchcommand",): ("error: no such command 'nosuchcommand'", "`ckpt --help` lists the commands"),
        ("diff", "main"): ("error: missing argument 'B'", "usage: ckpt diff [OPTIONS] A B"),
        ("gc", "--grace", "soon"): ("error: invalid value for --grace: not a duration", "`ckpt gc --help`"),
        ("init", "--chunk-size", "lots"): ("error: invalid value for --chunk-size", "usage: ckpt init"),
        ("--store-option", "novalue", "ls"): ("error: invalid value for --store-option", "`ckpt --help`"),
    }
    for args, (error, hint) in cases.items():
        lines = invoke(*args, code=2).stderr.strip().splitlines()
        assert len(lines) == 2, (args, lines)
        assert lines[0].startswith(error), (args, lines)
        assert lines[1].startswith("hint: ") and hint in lines[1], (args, lines)
        assert not any(line.startswith(("Error:", "Usage:", "Try ")) for line in lines)


def test_plain_ckpt_prints_the_help(runner: CliRunner) -> None:
    result = runner.invoke(cli, [])
    assert "Commands:" in result.output and "error:" not in result.output


def test_hints_speak_the_command_line_and_python_in_its_own_terms(invoke: Invoke, tmp_path: Path) -> None:
    """A CLI hint names commands and flags, the Python hint (part of str(error)) names the API."""
    with pytest.raises(ckpt.StoreNotFoundError) as info:
        ckpt.open(str(tmp_path / "nowhere"))
    assert "ckpt.init(url)" in str(info.value) and "`ckpt init" not in str(info.value)
    assert str(info.value).splitlines()[1] == f"hint: {info.value.hint}"
    assert "`ckpt init [URL]`" in (info.value.cli_hint or "") and "ckpt.init" not in (info.value.cli_hint or "")
    result = invoke("log", code=1)
    assert "`ckpt init [URL]`" in result.stderr and "ckpt.init(" not in result.stderr
    assert result.stderr.count("hint:") == 1  # printed once, not once more inside the message


def test_relation_choices_match_the_record_model() -> None:
    import typing

    from ckpt.cli.commands.transfer import _RELATIONS
    from ckpt.model import Relation

    assert list(typing.get_args(Relation)) == _RELATIONS


def test_debug_shows_the_traceback(runner: CliRunner, store: ckpt.Store, store_path: Path) -> None:
    with pytest.raises(ckpt.RevisionNotFoundError):
        runner.invoke(cli, ["--debug", "--store", str(store_path), "show", "nope"], catch_exceptions=False)
    with pytest.raises(ckpt.RevisionNotFoundError):
        runner.invoke(
            cli, ["--store", str(store_path), "show", "nope"], env={"CKPT_DEBUG": "1"}, catch_exceptions=False
        )


def test_main_exits_with_the_status(store: ckpt.Store, store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--store", str(store_path), "show", "nope"])
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit) as e:
        main(["--store", str(store_path), "ls"])
    assert e.value.code == 0


def test_version_and_help(invoke: Invoke) -> None:
    assert ckpt.__version__ in invoke("--version", store=False).stdout
    text = invoke("--help", store=False).stdout
    for command in ("init", "log", "show", "ls", "branch", "tag", "freeze", "prune", "restore", "import", "diff"):
        assert command in text
    for command in ("verify", "gc", "sync"):
        assert command in text
    assert "Examples" in invoke("log", "-h", store=False).stdout


def test_store_options_reach_the_backend(invoke: Invoke, store: ckpt.Store) -> None:
    # the local backend takes one option, durable; an unknown one would be refused by fsspec-free local code
    invoke("--store-option", "durable=false", "ls", "--json")


def test_parse_options() -> None:
    opts = parse_options(
        ["endpoint_url=http://127.0.0.1:9000", "anon=false", "use_ssl=true", 'client_kwargs={"region_name": "x"}'],
        flag="--x",
    )
    assert opts == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "use_ssl": True,
        "client_kwargs": {"region_name": "x"},
    }
    assert parse_options(["key=a=b"], flag="--x") == {"key": "a=b"}
    with pytest.raises(click.BadParameter):
        parse_options(["=x"], flag="--x")


def test_parse_duration_and_size() -> None:
    assert parse_duration("0", flag="--g").total_seconds() == 0
    assert parse_duration("90s", flag="--g").total_seconds() == 90
    assert parse_duration("1.5h", flag="--g").total_seconds() == 5400
    assert parse_duration("7d", flag="--g").days == 7
    for bad in ("", "h", "-1h", "1x", "soon"):
        with pytest.raises(click.BadParameter):
            parse_duration(bad, flag="--g")
    assert parse_size_option("5GB", flag="--s") == 5 * 10**9
    assert parse_size_option(None, flag="--s") is None
    for bad in ("0", "lots"):
        with pytest.raises(click.BadParameter):
            parse_size_option(bad, flag="--s")


def test_python_dash_m_runs_the_cli(store: ckpt.Store, store_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "ckpt", "--store", str(store_path), "ls", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert '"branches"' in out.stdout
