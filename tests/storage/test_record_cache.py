"""History on an object store: records read through the local record cache, in batches, counted request by request.

A real S3 server (moto on 127.0.0.1, the ``s3_server`` fixture); every request the store's own s3fs client sends
is counted by a botocore hook. Snapshot records and tensor tables are immutable and content-addressed, so the
cache (``CKPT_RECORD_CACHE``, a fresh folder per test from tests/conftest.py) may answer for them forever;
refs, pruned markers and listings are always read from the store.
"""

from __future__ import annotations

import collections
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.errors import RevisionNotFoundError
from ckpt.model import digest_bytes
from ckpt.store import store_parts
from ckpt.store._records import RecordCache

pytestmark = pytest.mark.s3

HISTORY = 24


class Counter:
    """Requests a store's own s3fs client sends, by method."""

    def __init__(self, store: ckpt.Store) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        store_parts(store).backend.fs.s3.meta.events.register("before-send.s3", self._hook)  # type: ignore[attr-defined]

    def _hook(self, request: Any, **_: Any) -> None:
        with self._lock:
            self.seen[request.method] += 1

    def take(self) -> int:
        with self._lock:
            n, self.seen = sum(self.seen.values()), collections.Counter()
        return n


def _open(url: str, opts: dict[str, Any]) -> tuple[ckpt.Store, Counter]:
    store = ckpt.open(url, skip_instance_cache=True, **opts)  # its own client: only its requests are counted
    return store, Counter(store)


@pytest.fixture(scope="module")
def history(s3_server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """A store on S3 with ``HISTORY`` snapshots on main (written once for the module, without a cache)."""
    url = f"s3://ckpt-test/history-{uuid.uuid4().hex[:10]}"
    old = os.environ.get("CKPT_RECORD_CACHE")
    os.environ["CKPT_RECORD_CACHE"] = "off"
    try:
        store = ckpt.init(url, chunk_size=4096, **s3_server)
        for i in range(HISTORY):
            store.save(
                {"w": np.full(4, i, dtype=np.float32), "step": i}, branch="main", step=i, metrics={"loss": 1 / (i + 1)}
            )
    finally:
        if old is None:
            os.environ.pop("CKPT_RECORD_CACHE")
        else:
            os.environ["CKPT_RECORD_CACHE"] = old
    return url, dict(s3_server)


def _cache_dir() -> Path:
    return Path(os.environ["CKPT_RECORD_CACHE"])


def test_log_after_the_first_call_costs_a_few_requests(
    history: tuple[str, dict[str, Any]],
) -> None:
    url, opts = history
    store, requests = _open(url, opts)
    first = store.log("main")
    assert [s.step for s in first] == list(range(HISTORY - 1, -1, -1))
    assert requests.take() <= HISTORY + 6  # the walk, then one listing and one batched read of the rest
    again = store.log("main")
    assert again == first
    # the branch (one GET, no HEAD first), the tag of that name (a name both a branch and a tag is refused as
    # ambiguous), the pruned markers: no record again
    assert requests.take() == 3
    other, other_requests = _open(url, opts)  # another process, the same cache folder
    assert other.log("main") == first
    assert other_requests.take() == 3
    cached = sorted(p.name for p in (_cache_dir() / "snapshots").rglob("*.json"))
    assert cached == sorted(f"{s.id}.json" for s in first)


def test_a_cold_log_reads_records_in_one_batch_not_one_at_a_time(history: tuple[str, dict[str, Any]]) -> None:
    url, opts = history
    store, requests = _open(url, opts)
    lists: list[str] = []
    backend = store_parts(store).backend
    list_ = backend.list

    def counting_list(prefix: str) -> Any:
        lists.append(prefix)
        return list_(prefix)

    backend.list = counting_list  # type: ignore[method-assign]
    reads: list[list[str]] = []
    read_many = backend.read_many

    def counting_read_many(paths: Any, **kw: Any) -> Any:
        paths = list(paths)
        reads.append(paths)
        return read_many(paths, **kw)

    backend.read_many = counting_read_many  # type: ignore[method-assign]
    log = store.log("main")
    assert len(log) == HISTORY
    assert lists.count("snapshots/") == 1
    assert len(reads) == 1 and len(reads[0]) == HISTORY - 5  # the head and 4 parents were read one by one
    requests.take()


def test_the_cache_never_changes_what_log_shows(history: tuple[str, dict[str, Any]]) -> None:
    url, opts = history
    store, _ = _open(url, opts)
    truth = store.log("main")
    # a tampered entry (another record's bytes), a truncated one and a planted file: each is read, found not to
    # hash to its address, deleted and read from the store again
    target, other, third = truth[3], truth[4], truth[5]
    folder = _cache_dir() / "snapshots"
    (folder / target.id[:2] / f"{target.id}.json").write_bytes(
        (folder / other.id[:2] / f"{other.id}.json").read_bytes()
    )
    (folder / third.id[:2] / f"{third.id}.json").write_bytes(b"{}")
    fresh, requests = _open(url, opts)
    assert fresh.log("main") == truth
    assert requests.take() == 3 + 2  # branch, the tag of that name, markers, and the two records read again
    assert digest_bytes((folder / target.id[:2] / f"{target.id}.json").read_bytes()) == target.id
    assert digest_bytes((folder / third.id[:2] / f"{third.id}.json").read_bytes()) == third.id


def test_pruned_flags_come_from_the_store_not_the_cache(history: tuple[str, dict[str, Any]]) -> None:
    url, opts = history
    store, _ = _open(url, opts)
    store.log("main")  # everything cached, nothing pruned
    victim = f"{url}-pruned"
    copy = ckpt.init(victim, chunk_size=4096, **opts)
    a = copy.save({"w": np.zeros(4, dtype=np.float32)}, branch="main", step=1)
    copy.save({"w": np.ones(4, dtype=np.float32)}, branch="main", step=2)
    assert [s.pruned for s in copy.log("main")] == [False, False]
    copy.prune(a.id)
    assert [s.pruned for s in copy.log("main")] == [False, True]
    assert [s.pruned for s in _open(victim, opts)[0].log("main")] == [False, True]


def test_verify_reads_the_store_itself(history: tuple[str, dict[str, Any]]) -> None:
    url, opts = history
    store = ckpt.init(f"{url}-verify", chunk_size=4096, **opts)
    a = store.save({"w": np.zeros(4, dtype=np.float32)}, branch="main", step=1)
    b = store.save({"w": np.ones(4, dtype=np.float32)}, branch="main", step=2)
    assert [s.id for s in store.log("main")] == [b.id, a.id]  # both records and tables cached now
    backend = store_parts(store).backend
    backend.delete([f"snapshots/{a.id[:2]}/{a.id}.json", f"tables/{b.table[:2]}/{b.table}.json"])
    report = store.verify()
    assert not report.ok
    assert {(d.object, d.digest, d.kind) for d in report.damage} >= {("table", b.table, "missing")}
    # the record of a is gone from the store: verify reads no cache (a dangling parent is damage)
    assert any(a.id in d.snapshots for d in report.damage)
    # by id, a revision is checked against the store, not the cache
    with pytest.raises(RevisionNotFoundError):
        store.resolve(a.id)


def test_tables_are_read_through_the_cache_too(history: tuple[str, dict[str, Any]]) -> None:
    url, opts = history
    store, requests = _open(url, opts)
    table = store.table("main~3")
    requests.take()
    assert store.table("main~3") == table
    assert requests.take() <= 3  # branch and markers: the parent records and the table come from the cache
    assert store.tensors("main~3")["w"].tolist() == [20.0] * 4
    assert requests.take() <= 5  # the tensor's one chunk (and the refs): no record, no table


def test_snapshots_reads_every_record_in_one_batch(history: tuple[str, dict[str, Any]]) -> None:
    url, opts = history
    store, requests = _open(url, opts)
    snaps = store.snapshots()
    assert sorted(s.step for s in snaps if s.step is not None) == list(range(HISTORY))
    assert requests.take() <= HISTORY + 3
    assert store.snapshots() == snaps
    assert requests.take() <= 3  # the listings only


def test_the_cache_can_be_turned_off_and_is_not_used_for_local_stores(
    history: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, opts = history
    monkeypatch.setenv("CKPT_RECORD_CACHE", "off")
    store, requests = _open(url, opts)
    assert len(store.log("main")) == HISTORY
    requests.take()
    assert len(store.log("main")) == HISTORY
    assert requests.take() >= HISTORY  # every record read again
    folder = tmp_path / "cache"
    monkeypatch.setenv("CKPT_RECORD_CACHE", str(folder))
    local = ckpt.init(tmp_path / "store", chunk_size=4096)
    local.save({"w": np.zeros(4, dtype=np.float32)}, branch="main")
    assert len(local.log("main")) == 1
    memory = ckpt.init(f"memory://records-{uuid.uuid4().hex[:8]}", chunk_size=4096)
    memory.save({"w": np.zeros(4, dtype=np.float32)}, branch="main")
    assert len(memory.log("main")) == 1
    assert not folder.exists()


def test_a_cache_path_is_only_ever_made_from_a_digest(tmp_path: Path) -> None:
    cache = RecordCache(tmp_path / "cache")
    good = b'{"a":1}'
    for bad in ("../../escape", "A" * 64, "ab/" + "0" * 61, "0" * 63, ""):
        cache.put("snapshots", bad, good)
        assert cache.get("snapshots", bad) is None
    cache.put("../x", digest_bytes(good), good)
    cache.put("snapshots", digest_bytes(good), b"other bytes")  # not the bytes of that address: not kept
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))
    cache.put("snapshots", digest_bytes(good), good)
    assert cache.get("snapshots", digest_bytes(good)) == good
    assert [p.relative_to(tmp_path) for p in (tmp_path / "cache").rglob("*.json")] == [
        Path("cache/snapshots") / digest_bytes(good)[:2] / f"{digest_bytes(good)}.json"
    ]


def test_a_cache_that_cannot_be_written_is_skipped(
    history: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, opts = history
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    monkeypatch.setenv("CKPT_RECORD_CACHE", str(blocker / "records"))
    store, _ = _open(url, opts)
    assert [s.step for s in store.log("main")] == list(range(HISTORY - 1, -1, -1))
    assert blocker.read_bytes() == b""


def test_a_short_log_of_a_big_store_is_not_read_in_one_batch(
    history: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpt.store import _parts

    url, opts = history
    monkeypatch.setattr(_parts, "_BATCH_FACTOR", 1)  # the store "holds more than 1 x what is left" to read
    store, requests = _open(url, opts)
    backend = store_parts(store).backend
    monkeypatch.setattr(backend, "read_many", lambda *a, **k: pytest.fail("read the whole store for a short log"))
    assert [s.step for s in store.log("main", limit=12)] == list(range(HISTORY - 1, HISTORY - 13, -1))
    assert (
        requests.take() <= 3 + 12 + 1
    )  # the branch and the tag of that name, markers, the twelve records, one listing


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_an_entry_that_is_not_a_plain_file_is_removed_unread(
    history: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """A FIFO planted where an entry goes would block a plain read forever, and a link to ``/dev/zero`` would fill
    memory: each is removed without being read, and the record read from the store again."""
    url, opts = history
    store, _ = _open(url, opts)
    truth = store.log("main")
    folder = _cache_dir() / "snapshots"
    fifo, link, elsewhere = (folder / s.id[:2] / f"{s.id}.json" for s in truth[1:4])
    for entry in (fifo, link, elsewhere):
        entry.unlink()
    os.mkfifo(fifo)
    link.symlink_to("/dev/zero")
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"kept")
    elsewhere.symlink_to(outside)  # a link to a plain file outside the cache: not followed, nor its target touched
    fresh, requests = _open(url, opts)
    assert fresh.log("main") == truth
    assert requests.take() == 3 + 3  # the branch, the tag of that name, markers; three records again
    for entry, snap in zip((fifo, link, elsewhere), truth[1:4], strict=True):
        assert not entry.is_symlink() and digest_bytes(entry.read_bytes()) == snap.id
    assert outside.read_bytes() == b"kept"


def test_the_cache_folder_is_private(
    history: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records of a private bucket (messages, metrics, model names) are this user's alone: the folder ckpt makes
    is ``0o700``, each entry ``0o600``."""
    url, opts = history
    root = tmp_path / "new" / "records"
    monkeypatch.setenv("CKPT_RECORD_CACHE", str(root))
    store, _ = _open(url, opts)
    store.log("main")
    entries = list(root.rglob("*.json"))
    assert entries and all(p.stat().st_mode & 0o777 == 0o600 for p in entries)
    assert root.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in root.rglob("*") if p.is_dir())
