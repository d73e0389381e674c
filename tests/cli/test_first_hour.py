"""What a new user reads: names never cut, true plurals, no trailing spaces, hints that fit the reader."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.cli.app import INTERRUPTED_BY_COMMAND

from .conftest import Invoke, child_env, parse, weights

LONG_TAG = "tiny-llama-instruct-experimental-2026-11-28"


@pytest.fixture
def named(store: ckpt.Store) -> ckpt.Store:
    """A store whose ref names and ids are wider than an 80-column terminal leaves room for."""
    store.save({"model": weights(0)}, model="tiny-llama-instruct-experimental", step=100, message="a first save")
    store.save({"model": weights(1)}, model="tiny-llama-instruct-experimental", step=200, message="m " * 30)
    store.tag(LONG_TAG, "main~1", message="a tag with a long name")
    store.freeze("main", name="tiny-llama-instruct-2026-11-28")
    store.branch("exp/very-long-branch-name-for-a-learning-rate-sweep", at="main~1")
    return store


@pytest.mark.parametrize("command", [["ls"], ["tag"], ["branch"], ["reflog"]])
@pytest.mark.parametrize("columns", ["80", "60"])
def test_ids_and_ref_names_are_never_cut(invoke: Invoke, named: ckpt.Store, command: list[str], columns: str) -> None:
    out = invoke(*command, env={"COLUMNS": columns}).stdout
    assert "…" not in out
    lines = out.splitlines()
    names = {*named.branches(), *named.tags()} if command != ["tag"] else set(named.tags())
    if command == ["branch"]:
        names = set(named.branches())
    for name in names:
        assert any(re.search(rf"(^|\s){re.escape(name)}(\s|$)", line) for line in lines), (name, out)
    ids = {named.resolve(n).short_id for n in names}
    for short in ids:
        assert any(short in line for line in lines), (short, out)
    assert all(line == line.rstrip() for line in lines), "trailing spaces"


def test_tables_have_no_trailing_spaces(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    for args in (["ls"], ["reflog"], ["show", "main", "--tensors"], ["diff", "main~1", "main"], ["log"]):
        for line in invoke(*args).stdout.splitlines():
            assert line == line.rstrip(), (args, line)


def test_counts_of_one_are_singular(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"model": {"w": np.zeros(8, np.float32)}}, step=1)
    texts = [
        invoke("verify").stdout,
        invoke("show", "main").stdout,
        invoke("sync", store.url, str(tmp_path / "copy"), "--all", store=False).stdout,
        invoke("gc", "--grace", "0").stdout,
    ]
    text = "\n".join(texts)
    assert "checked 1 snapshot, 1 chunk" in text
    assert "copied 1 snapshot, 1 chunk" in text
    assert "1 snapshot from the root" in text
    for wrong in ("1 snapshots", "1 chunks", "1 files", "1 tensors", "(s)", "1 refs", "1 problems"):
        assert wrong not in text, wrong


def test_gc_after_prune_says_what_the_grace_period_spared(invoke: Invoke, store: ckpt.Store) -> None:
    if "young_chunks" not in ckpt.GcReport.model_fields:
        pytest.skip("GcReport.young_chunks comes with the storecore branch")
    for i in range(3):
        store.save({"model": weights(i)}, step=i)
    invoke("prune", "main~2")
    out = invoke("gc").stdout
    assert out.startswith("freed 0 B of storage")
    assert re.search(r"spared \d+ chunks? \([\d.]+ KiB\) .*less than 1h ago \(--grace\)", out), out
    assert "`ckpt gc --grace 0`" in out
    assert "spared" not in invoke("gc", "--grace", "0").stdout


def test_byte_figures_use_one_formatter_and_count_chunks_as_stored(
    invoke: Invoke, store: ckpt.Store, tmp_path: Path
) -> None:
    """sync counts the bytes it wrote as they lie on the destination's disk, in the unit every command prints."""
    from ckpt.cli.output import human_bytes

    store.save({"model": weights(0)})
    data = parse(invoke("sync", store.url, str(tmp_path / "c"), "--all", "--json", store=False))
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c" / "chunks").rglob("*") if p.is_file())
    assert data["bytes"] == on_disk
    text = invoke("sync", store.url, str(tmp_path / "d"), "--all", store=False).stdout
    assert f"({human_bytes(on_disk)})" in text
    assert f"({human_bytes(ckpt.open(store.url).verify().bytes)})" in invoke("verify").stdout


def test_short_hex_prefix_says_how_many_digits_it_needs(invoke: Invoke, store: ckpt.Store) -> None:
    snap = store.save({"w": np.zeros(4, np.float32)})
    result = invoke("show", snap.id[:3], code=1)
    assert result.stderr.splitlines()[1] == "hint: an id prefix needs at least 4 hex digits: give more of the id"
    with pytest.raises(ckpt.RevisionNotFoundError, match="at least 4 hex digits"):
        store.resolve(snap.id[:2])
    assert invoke("show", snap.id[:4]).exit_code == 0


def test_hints_of_raise_sites_fit_their_reader(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    """Python hints name the API, CLI hints name commands and flags (and neither names the other's)."""
    snap = store.save({"model": weights(0)}, model="m")
    store.save({"model": weights(1)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cases = [
        (
            lambda: ckpt.hf.export_folder(store, "main", out),
            ["restore", "main", "--to", str(out)],
            "force=True",
            "--force",
        ),
        (lambda: store.prune("main"), ["prune", "main"], "store.reset(", "`ckpt reset main"),
        (lambda: store.resolve("main@{9}"), ["show", "main@{9}"], "store.reflog()", "`ckpt reflog main`"),
        (lambda: store.resolve("nosuch"), ["show", "nosuch"], "store.branches()", "`ckpt ls`"),
    ]
    import ckpt.hf

    for call, argv, py, cli in cases:
        with pytest.raises(ckpt.CkptError) as info:
            call()
        assert py in str(info.value) and cli not in str(info.value), str(info.value)
        result = invoke(*argv, code=1)
        assert cli in result.stderr and py not in result.stderr, result.stderr
        assert result.stderr.count("hint:") == 1
    del snap


def test_ctrl_c_messages_say_what_each_command_leaves_behind() -> None:
    assert "store was only read" in INTERRUPTED_BY_COMMAND["restore"]
    assert "save" not in INTERRUPTED_BY_COMMAND["restore"]
    for read in ("log", "show", "ls", "reflog", "diff", "verify"):
        assert "nothing was changed" in INTERRUPTED_BY_COMMAND[read]


def test_a_folder_holding_a_store_names_that_store(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    """`ckpt sync . DST` (as the README writes it) syncs the .ckpt store of the current folder."""
    store.save({"w": np.zeros(4, np.float32)})
    project = Path(store.url).parent
    invoke("sync", str(project), str(tmp_path / "backup"), "--all", store=False)
    assert ckpt.open(str(tmp_path / "backup")).branches() == store.branches()
    assert invoke("--store", str(project), "log", "--json", store=False).exit_code == 0


def test_log_without_main_shows_the_only_branch_or_every_branch(invoke: Invoke, store: ckpt.Store) -> None:
    store.save({"w": np.zeros(4, np.float32)}, "quickstart", message="only one")
    out = invoke("log").stdout
    assert "only one" in out and "quickstart" in out
    store.branch("retry", at="quickstart")
    store.save({"w": np.ones(4, np.float32)}, "retry", message="on retry")
    result = invoke("log")
    assert "only one" in result.stdout and "on retry" in result.stdout
    assert "no branch 'main'" in result.stderr


def test_cli_startup_imports_only_what_the_command_needs(tmp_path: Path) -> None:
    """`ckpt --help` imports no pydantic, numpy, fsspec or training code; `ckpt log` no numpy or training."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    store.save({"w": [1, 2]}, step=1)
    script = textwrap.dedent(
        """
        import sys
        from ckpt.cli import main
        try:
            main(sys.argv[1:])
        except SystemExit:
            pass
        heavy = ("pydantic", "numpy", "torch", "fsspec", "ckpt.store", "ckpt.training", "ckpt.diff", "rich.progress")
        print(" ".join(m for m in heavy if m in sys.modules))
        """
    )

    def loaded(*argv: str) -> set[str]:
        out = subprocess.run(
            [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=child_env(), check=True
        )
        return set(out.stdout.splitlines()[-1].split())

    assert loaded("--help") == set()
    assert loaded("log", "--help") == set()
    assert loaded("--store", store.url, "log", "-n", "20") & {"numpy", "torch", "ckpt.training", "ckpt.diff"} == set()
