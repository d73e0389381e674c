"""A store never mixes its objects with other files: ``init`` refuses a non-empty folder, and ``gc`` deletes only
files named as ckpt names its objects (a user's ``chunks/notes.txt`` or ``tmp/scratch`` is reported, kept)."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

import ckpt

FOREIGN = {
    "chunks/notes.txt": b"my notes",
    "chunks/ab/not-a-digest": b"x",
    "chunks/" + "0" * 64: b"a digest-named file outside its fan-out folder",
    "tables/data.csv": b"1,2,3",
    "snapshots/ab/" + "ab" * 32: b"no .json",
    "tmp/scratch.bin": b"scratch",
}


def test_init_refuses_a_folder_with_files_of_its_own(tmp_path: Any) -> None:
    project = tmp_path / "project"
    (project / "chunks").mkdir(parents=True)
    (project / "chunks" / "notes.txt").write_bytes(b"my notes")
    (project / "tmp").mkdir()
    with pytest.raises(ckpt.StoreError, match="not empty") as err:
        ckpt.init(project)
    assert "ckpt-store" in str(err.value.hint)
    assert not (project / "ckpt.json").exists()
    assert (project / "chunks" / "notes.txt").read_bytes() == b"my notes"
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".env").write_bytes(b"A=1")
    with pytest.raises(ckpt.StoreError, match="not empty"):
        ckpt.init(hidden)
    (tmp_path / "empty").mkdir()
    ckpt.init(tmp_path / "empty")  # an empty folder, or a new one, is fine
    ckpt.init(tmp_path / "new")
    with pytest.raises(ckpt.StoreExistsError):
        ckpt.init(tmp_path / "new")  # a store stays a store


@pytest.mark.s3
def test_init_refuses_a_non_empty_s3_prefix(s3_server: dict[str, Any]) -> None:
    import fsspec

    prefix = f"ckpt-test/{uuid.uuid4().hex[:10]}"
    fs = fsspec.filesystem("s3", **s3_server)
    fs.pipe(f"{prefix}/data/train.csv", b"1,2")
    with pytest.raises(ckpt.StoreError, match="not empty"):
        ckpt.init(f"s3://{prefix}", **s3_server)
    assert fs.cat(f"{prefix}/data/train.csv") == b"1,2"


def test_gc_deletes_only_files_named_as_ckpt_objects(store: ckpt.Store) -> None:
    store.save({"w": np.arange(100, dtype=np.float32)}, "main")
    store.save({"w": np.zeros(100, dtype=np.float32)}, "main")
    store.prune("main~1")
    for path, data in FOREIGN.items():
        store.backend.replace(path, data)
    report = store.gc(grace=timedelta(0), expire_reflog=timedelta(0))
    assert report.chunks >= 1  # ckpt's own garbage went (the pruned snapshot's chunks)
    if store.backend.local_path("x") is None:  # tmp/ is the local backend's own folder, not listed remotely
        assert set(report.foreign) >= set(FOREIGN) - {"tmp/scratch.bin"}
    else:
        assert set(report.foreign) == set(FOREIGN)
    for path, data in FOREIGN.items():
        assert store.backend.read(path) == data, path
    np.testing.assert_array_equal(store.load("main")["w"], np.zeros(100, dtype=np.float32))


def test_a_user_tmp_folder_survives_gc(tmp_path: Any) -> None:
    """The breaker's case: files of the user's own ``tmp/`` inside a store's folder."""
    store = ckpt.init(tmp_path / "s")
    store.save({"w": np.arange(10, dtype=np.float32)}, "main")
    os.makedirs(tmp_path / "s" / "tmp", exist_ok=True)
    (tmp_path / "s" / "tmp" / "run-notes.txt").write_bytes(b"keep me")
    store.gc(grace=timedelta(0))
    assert (tmp_path / "s" / "tmp" / "run-notes.txt").read_bytes() == b"keep me"
