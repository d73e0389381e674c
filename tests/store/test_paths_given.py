"""Paths users pass: bytes and other non-paths are ``CkptError``s with a hint, never raw exceptions; an export
into a mount point (a container's ``/output`` volume) works."""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.interop import export, import_folder


@pytest.fixture
def saved(tmp_path: Path) -> ckpt.Store:
    store = ckpt.init(tmp_path / "s")
    store.save({"model": {"w": np.arange(8, dtype=np.float32)}}, "main", model="m")
    return store


def test_bytes_and_other_non_paths_are_ckpt_errors(saved: ckpt.Store, tmp_path: Path) -> None:
    b = os.fsencode(tmp_path / "x")
    calls: dict[str, Any] = {
        "init": lambda: ckpt.init(b),
        "open": lambda: ckpt.open(b),
        "sync_to": lambda: saved.sync_to(b),
        "repair": lambda: saved.repair(b),
        "Checkpointer(bytes)": lambda: ckpt.Checkpointer(b, "cp"),
        "Checkpointer(int)": lambda: ckpt.Checkpointer(3, "cp"),  # type: ignore[arg-type]
        "export": lambda: export(saved, "main", b),
        "import": lambda: import_folder(saved, b),
        "verify(trust=[bytes])": lambda: saved.verify(trust=[b]),
        "verify(trust=[int])": lambda: saved.verify(trust=[3]),  # type: ignore[list-item]
        "verify(trust=int)": lambda: saved.verify(trust=3),  # type: ignore[arg-type]
        "freeze(signer=bytes)": lambda: saved.freeze("main", name="r1", signer=b),
    }
    for label, call in calls.items():
        with pytest.raises(ckpt.CkptError) as err:
            call()
        assert type(err.value).__name__ != "CkptError" or err.value.hint, label
        if "bytes" in label or label in ("init", "open", "sync_to", "repair", "export", "import"):
            assert "os.fsdecode" in str(err.value.hint), label
    assert "r1" not in saved.tags()


def test_a_single_trust_path_is_one_file_not_its_characters(saved: ckpt.Store, tmp_path: Path) -> None:
    with pytest.raises(ckpt.RecordError, match=r"nokey\.pub"):
        saved.verify(trust=str(tmp_path / "nokey.pub"))  # type: ignore[arg-type]


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs mount (needs root; skipped elsewhere)."""
    point = tmp_path / "output"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "none", str(point)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield point
    finally:
        gc.collect()  # memory maps of files on it (an import's) go first
        subprocess.run(["umount", "-l", str(point)], check=False)  # lazy: detached even if still busy


def test_export_into_a_mount_point(saved: ckpt.Store, mount_point: Path) -> None:
    from safetensors.numpy import load_file

    export(saved, "main", mount_point)
    assert os.path.ismount(mount_point)
    assert sorted(os.listdir(mount_point)) == ["model.safetensors"]
    np.testing.assert_array_equal(load_file(str(mount_point / "model.safetensors"))["w"], np.arange(8))

    (mount_point / "notes.txt").write_bytes(b"keep")
    saved.save({"model": {"w": np.arange(8, dtype=np.float32) * 2, "v": np.ones(64, np.float32)}}, "main")
    result = export(saved, "main", mount_point, force=True, shard_size=200)  # two shards over the single file
    assert os.path.ismount(mount_point)
    names = sorted(os.listdir(mount_point))
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert (mount_point / "notes.txt").read_bytes() == b"keep"
    assert not [n for n in names if n.startswith(".ckpt-export")]
    assert "model.safetensors" in [os.path.basename(str(r)) for r in result.removed]
    back = ckpt.init(mount_point.parent / "back")
    import_folder(back, mount_point, branch="main")
    got = back.load("main")
    np.testing.assert_array_equal(got["model"]["w"], np.arange(8) * 2)
