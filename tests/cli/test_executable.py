"""The installed ``ckpt`` program in a subprocess: without torch, exit codes, no bars in pipes, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import ckpt

from .conftest import child_env, ckpt_executable
from .test_transfer import hf_folder, same_files


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ckpt_executable(), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env or child_env(),
        cwd=cwd,
    )


@pytest.fixture
def no_torch(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import torch`` raises ImportError."""
    fake = tmp_path / "hide-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("torch is hidden in this test")\n')
    pythonpath = os.pathsep.join(p for p in (str(fake.parent), os.environ.get("PYTHONPATH", "")) if p)
    return child_env(PYTHONPATH=pythonpath)


def test_torch_is_really_hidden(no_torch: dict[str, str]) -> None:
    import sys

    out = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch, capture_output=True, text=True)
    assert out.returncode == 1 and "torch is hidden" in out.stderr


def test_every_command_runs_without_torch(no_torch: dict[str, str], tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    src = hf_folder(tmp_path / "hf", shards=2)
    tuned = hf_folder(tmp_path / "tuned", shards=2, seed=5)

    def ok(*args: str) -> str:
        out = run("--store", store, *args, env=no_torch)
        assert out.returncode == 0, (args, out.stderr)
        assert "torch" not in out.stderr, out.stderr
        return out.stdout

    ok("init", "--chunk-size", "4KiB")
    base = json.loads(ok("import", str(src), "--model", "base", "--json"))
    ok("freeze", "main", "--name", "base-v1")
    child = json.loads(
        ok("import", str(tuned), "--branch", "tuned", "--parent", "base-v1", "--relation", "finetune", "--json")
    )
    assert child["parents"] == [base["id"]]
    assert len(json.loads(ok("log", "tuned", "--json"))) == 2
    assert "finetune" in ok("log", "--graph", "--all")
    assert json.loads(ok("show", "tuned", "--tensors", "--json"))["tensors"]["count"] == 6
    d = json.loads(ok("diff", "base-v1", "tuned", "--json"))
    assert (d["changed"], d["unchanged"]) == (4, 2)  # the int64 ids are the same in both
    assert all(t["relative_change"] > 0 for t in d["tensors"] if t["status"] == "changed")
    assert "F16" in ok("diff", "base-v1", "tuned")
    assert json.loads(ok("ls", "--json"))["tags"]["base-v1"]["frozen"] is True
    ok("branch", "exp", "--at", "base-v1")
    ok("tag", "t1", "tuned")
    ok("restore", "base-v1", "--to", str(tmp_path / "out"))
    same_files(src, tmp_path / "out")
    assert json.loads(ok("verify", "--json"))["ok"] is True
    ok("sync", store, str(tmp_path / "copy"), "--all", "--init")
    assert json.loads(ok("gc", "--dry-run", "--json"))["dry_run"] is True


def test_exit_codes_and_messages(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    out = run("log", cwd=empty)
    assert out.returncode == 1
    assert out.stderr.startswith("error: no ckpt store in")
    assert out.stderr.count("\n") == 2 and "\nhint: create one here with `ckpt init`" in out.stderr
    store = tmp_path / ".ckpt"
    assert run("init", str(store)).returncode == 0
    out = run("--store", str(store), "show", "nope")
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "hint: " in out.stderr
    assert "Traceback" not in out.stderr
    out = run("--debug", "--store", str(store), "show", "nope")
    assert out.returncode == 1 and "Traceback" in out.stderr and "RevisionNotFoundError" in out.stderr
    assert "\nhint: list what exists with `store.branches()`" in out.stderr  # the traceback shows the hint
    out = run("--store", str(store), "show", "nope", env=child_env(CKPT_DEBUG="1"))
    assert "Traceback" in out.stderr
    assert run("--store", str(store), "log", "--bogus").returncode == 2
    out = run("frobnicate")
    assert out.returncode == 2 and out.stderr.startswith("error: no such command 'frobnicate'")
    # found by walking up from a subfolder
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    out = run("log", "--json", cwd=sub)
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_no_progress_bars_in_pipes(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    ckpt.init(store, chunk_size=4096).save({"w": np.arange(50_000, dtype=np.float32)})
    for args in (
        ["verify"],
        ["restore", "main", "--to", str(tmp_path / "o")],
        ["sync", store, store + "2", "--all", "--init"],
    ):
        out = run("--store", store, *args)
        assert out.returncode == 0, out.stderr
        assert out.stderr == "", (args, out.stderr)


def test_ctrl_c_leaves_the_store_consistent(tmp_path: Path) -> None:
    src = ckpt.init(str(tmp_path / "src"), chunk_size=4096)
    rng = np.random.default_rng(0)
    for i in range(3):
        src.save({"w": rng.standard_normal(400_000).astype(np.float32)}, step=i)  # ~390 chunks each
    dst = str(tmp_path / "dst")
    proc = subprocess.Popen(
        [ckpt_executable(), "sync", src.url, dst, "--all", "--init"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    deadline = time.monotonic() + 60
    while not (Path(dst) / "chunks").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err
    if proc.returncode == 130:
        assert "interrupted: what was copied stays, and every record on the destination is whole" in err
        assert "Traceback" not in err
    copy = ckpt.open(dst)
    assert copy.verify().ok
    for head in copy.branches().values():  # no ref points at missing data
        assert copy.get(head)
    out = run("sync", src.url, dst, "--all")
    assert out.returncode == 0, out.stderr
    assert ckpt.open(dst).branches() == src.branches()
    assert ckpt.open(dst).verify().ok
