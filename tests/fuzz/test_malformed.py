"""One test per class of malformed input that used to escape as a builtin exception (issue 11, item 6).

Each names the input, the surface that read it, and the ``CkptError`` (with a hint) it must raise now;
names and paths that could never be stored are refused up front, before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.cli import cli
from ckpt.errors import (
    BackendError,
    CkptError,
    IntegrityError,
    InvalidNameError,
    RecordError,
    RevisionNotFoundError,
    UnsupportedStateError,
)
from ckpt.model import canonical_json, digest_bytes
from ckpt.store import _layout as layout


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    s = ckpt.init(str(tmp_path / "s"), chunk_size=64)
    s.save({"w": np.arange(4, dtype=np.float32), "step": 1}, model="m")
    s.save({"w": np.arange(4, dtype=np.float32), "step": 2})
    return s


def _root(store: ckpt.Store) -> Path:
    return Path(store.url)


def _put_record(store: ckpt.Store, kind: str, data: bytes) -> str:
    digest = digest_bytes(data)
    path = _root(store) / (layout.snapshot_path(digest) if kind == "snapshot" else layout.table_path(digest))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _point_main(store: ckpt.Store, sid: str) -> None:
    (_root(store) / layout.branch_path("main")).write_bytes(json.dumps({"id": sid}).encode())


def _head_record(store: ckpt.Store) -> dict:
    return json.loads((_root(store) / layout.snapshot_path(store.branches()["main"])).read_bytes())


def _with_table(store: ckpt.Store, table: dict) -> str:
    digest = _put_record(store, "table", canonical_json(table))
    record = {**_head_record(store), "table": digest}
    sid = _put_record(store, "snapshot", canonical_json(record))
    _point_main(store, sid)
    return sid


def _refused(exc: type[CkptError], fn, *args, **kwargs) -> CkptError:
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert info.value.hint, f"{type(info.value).__name__} without a hint: {info.value}"
    return info.value


# -- records ---------------------------------------------------------------------------------------------


def test_a_record_that_is_a_json_string(store: ckpt.Store) -> None:
    sid = _put_record(store, "snapshot", b'"just a string"')
    _point_main(store, sid)
    err = _refused(RecordError, store.log, "main")
    assert "JSON object was expected" in str(err)


@pytest.mark.parametrize("where", ["snapshot", "branch", "tag", "config"])
def test_deeply_nested_json(store: ckpt.Store, where: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    if where == "snapshot":
        _point_main(store, _put_record(store, "snapshot", deep))
        _refused(RecordError, store.load, "main")
    elif where == "branch":
        (_root(store) / layout.branch_path("main")).write_bytes(deep)
        _refused(RecordError, store.resolve, "main")
    elif where == "tag":
        store.tag("v1")
        (_root(store) / layout.tag_path("v1")).write_bytes(b'{"id":' * 5000 + b"1" + b"}" * 5000)
        _refused(RecordError, store.tags)
    else:
        (_root(store) / layout.CONFIG).write_bytes(b'{"format": "ckpt", "x": ' + deep + b"}")
        _refused(RecordError, ckpt.open, store.url)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_not_json(store: ckpt.Store, literal: str) -> None:
    """Python's json reads ``NaN`` and ``1e999`` (as inf); canonical JSON never holds them, and a tree holding
    one could not be exported (``state.json``) or saved again."""
    table = store.table("main").model_dump(mode="json")
    data = canonical_json({**table, "tree": {"$dict": [["x", 0.5]]}}).replace(b"0.5", literal.encode())
    digest = _put_record(store, "table", data)
    _point_main(store, _put_record(store, "snapshot", canonical_json({**_head_record(store), "table": digest})))
    err = _refused(RecordError, store.load, "main")
    assert "not valid JSON" in str(err)


def test_lone_surrogates_in_a_record(store: ckpt.Store) -> None:
    record = json.dumps({**_head_record(store), "message": "\ud800"}).encode()
    _point_main(store, _put_record(store, "snapshot", record))
    err = _refused(RecordError, store.resolve, "main")
    assert "lone surrogate" in str(err)


def test_a_bad_created_at_no_longer_breaks_log(store: ckpt.Store) -> None:
    record = canonical_json({**_head_record(store), "created_at": "yesterday"})
    _point_main(store, _put_record(store, "snapshot", record))
    _refused(RecordError, store.log, "main")
    result = CliRunner().invoke(cli, ["--store", store.url, "log"])
    assert result.exit_code == 1 and "created_at" in result.output and "Traceback" not in result.output


def test_ids_in_records_are_digests(store: ckpt.Store) -> None:
    """A parent like ``../../x`` would be a path out of ``snapshots/``: refused when the record is read."""
    record = canonical_json({**_head_record(store), "parents": ["../../../etc/passwd"]})
    _point_main(store, _put_record(store, "snapshot", record))
    _refused(RecordError, store.log, "main")
    (_root(store) / layout.branch_path("main")).write_bytes(b'{"id": "../../x"}')
    _refused(RecordError, store.resolve, "main")


def test_a_damaged_reflog_time_never_reaches_gc(store: ckpt.Store) -> None:
    logs = sorted((_root(store) / layout.reflog_prefix("refs/heads/main")).iterdir())
    entry = json.loads(logs[-1].read_bytes())
    logs[-1].write_bytes(json.dumps({**entry, "time": "2026-11-28T10:0X:00.000000Z"}).encode())
    assert len(store.reflog()) == len(logs) - 1  # the damaged entry is skipped, never a crash
    damage = [d for d in store.verify().damage if d.object == "reflog"]
    assert [d.digest for d in damage] == [f"{layout.reflog_prefix('refs/heads/main')}{logs[-1].name}"]
    with pytest.raises(IntegrityError, match="reflog"):  # gc is fail-closed: it names the damage
        store.gc(dry_run=True)
    assert store.gc(dry_run=True, on_damage="keep").damage


@pytest.mark.parametrize(
    "tree",
    [
        {"$dict": [["w"]]},  # a pair without its value
        {"$dict": [[True, 1]]},  # a bool key
        {"$dict": "w"},
        {"$tensor": 5},
        {"$tensor": "nope"},  # a tensor the table does not hold
        {"$float": "zero"},
        {"a": 1, "b": 2},
    ],
)
def test_malformed_state_tree_nodes(store: ckpt.Store, tree: object) -> None:
    table = store.table("main").model_dump(mode="json")
    _with_table(store, {**table, "tree": tree})
    _refused(RecordError, store.load, "main")
    _refused(RecordError, store.tensors, "main")


@pytest.mark.parametrize("shape", [[0, 2**70], [2**63], [-1], [1] * 65, [2**40, 2**40, 0]])
def test_shapes_no_array_library_can_hold(store: ckpt.Store, shape: list[int]) -> None:
    table = store.table("main").model_dump(mode="json")
    table["tensors"]["w"] = {"dtype": "F32", "shape": shape, "chunks": [], "kind": "numpy"}
    _with_table(store, table)
    _refused(RecordError, store.load, "main")


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a//b", "a\\b", "x" * 300, "a/" * 2000 + "b", "a\x00b"])
def test_attached_file_paths_that_cannot_be_restored(store: ckpt.Store, path: str, tmp_path: Path) -> None:
    if "\\" not in path:  # a save reads a backslash as a Windows separator; a stored table never holds one
        _refused(RecordError, store.save, {"x": 1}, files={path: b"data"})
    table = store.table("main").model_dump(mode="json")
    table["files"] = {path: {"size": 0, "chunks": []}}
    _with_table(store, table)
    _refused(RecordError, store.files, "main")


def test_a_newer_format_version_with_a_huge_minor(store: ckpt.Store) -> None:
    config = json.loads((_root(store) / layout.CONFIG).read_bytes())
    (_root(store) / layout.CONFIG).write_bytes(json.dumps({**config, "format_version": "1." + "9" * 5000}).encode())
    _refused(RecordError, ckpt.open, store.url)


# -- names, revisions, URLs, sizes ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["main\ud800", "é" * 101, "a/" + "\U0001f600" * 51, "x" * 201])
def test_names_that_cannot_be_stored_are_refused_up_front(store: ckpt.Store, name: str) -> None:
    _refused(InvalidNameError, store.branch, name)
    _refused(InvalidNameError, store.tag, name)
    _refused(InvalidNameError, store.save, {"x": 1}, branch=name)
    assert sorted(store.branches()) == ["main"]


@pytest.mark.parametrize(
    "rev", ["ma\x00in", "main\ud800", "main~" + "9" * 5000, "main@{" + "9" * 5000 + "}", "x" * 5000, "ma\nin", 42]
)
def test_revisions_that_name_nothing(store: ckpt.Store, rev: object) -> None:
    _refused(RevisionNotFoundError, store.resolve, rev)


@pytest.mark.parametrize("name", ["ma\x00in", "a\ud800"])
def test_deleting_refs_by_impossible_names(store: ckpt.Store, name: str) -> None:
    with pytest.raises(RevisionNotFoundError):
        store.delete_branch(name)
    with pytest.raises(RevisionNotFoundError):
        store.delete_tag(name)
    assert store.reflog(f"refs/heads/{name}") == []


@pytest.mark.parametrize("url", ["/tmp/a\x00b", "memory://\ud800", "zip://", "bogus-proto://x"])
def test_urls_no_backend_can_open(url: str) -> None:
    _refused(BackendError, ckpt.open, url)


@pytest.mark.parametrize("size", ["abc", "1e400", "", 2**63, 0, -5])
def test_chunk_sizes(tmp_path: Path, size: object) -> None:
    _refused(RecordError, ckpt.init, str(tmp_path / "s"), chunk_size=size)
    assert not (tmp_path / "s" / layout.CONFIG).exists()


# -- what a save accepts is what a reader accepts ------------------------------------------------------


def test_a_state_tree_too_deep_to_read_back_is_refused(store: ckpt.Store) -> None:
    state: dict = {}
    node = state
    for _ in range(2000):
        node["x"] = {}
        node = node["x"]
    _refused(UnsupportedStateError, store.save, state)


def test_metadata_too_deep_to_read_back_is_refused(store: ckpt.Store) -> None:
    deep: list = []
    node = deep
    for _ in range(3000):
        node.append([])
        node = node[0]
    with pytest.raises(RecordError):
        store.save({"x": 1}, metadata={"deep": deep})
    assert len(store.log("main")) == 2  # the branch did not move
