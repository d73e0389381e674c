"""What a save sends to S3 for its chunks, request by request (moto on 127.0.0.1, counted by a botocore hook).

No ``HEAD`` before a conditional ``PUT``: a new chunk is one ``PUT`` with ``If-None-Match: *``; a chunk that is
unchanged since the parent snapshot is checked with ranged ``GET``\\ s (``chunk_whole``), never encoded nor
uploaded again; a delta's reference is not uploaded again to "hold" it.
"""

from __future__ import annotations

import collections
import threading
import uuid
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.store import store_parts

pytestmark = pytest.mark.s3

CHUNK = 64 << 10


class Requests:
    """(method, kind of object) of every request a store's own s3fs client sends."""

    def __init__(self, store: ckpt.Store) -> None:
        self.seen: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()
        store_parts(store).backend.fs.s3.meta.events.register("before-send.s3", self._hook)  # type: ignore[attr-defined]

    def _hook(self, request: Any, **_: Any) -> None:
        path = str(request.url).partition("?")[0]
        kind = "chunks" if "/chunks/" in path else "other"
        with self._lock:
            self.seen[(request.method, kind)] += 1

    def take(self) -> collections.Counter[tuple[str, str]]:
        with self._lock:
            seen, self.seen = self.seen, collections.Counter()
        return seen


def _store(s3: dict[str, Any], **config: Any) -> tuple[ckpt.Store, Requests]:
    url = f"s3://ckpt-test/puts-{uuid.uuid4().hex[:10]}"
    ckpt.init(url, chunk_size=CHUNK, **config, **s3)
    store = ckpt.open(url, skip_instance_cache=True, **s3)  # its own client: only its requests are counted
    return store, Requests(store)


def _state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal(3 * CHUNK // 4).astype(np.float32), "b": rng.standard_normal(CHUNK // 8)}


def _chunks(store: ckpt.Store, sid: str) -> int:
    return len(set(store.table(sid).chunk_digests()))


@pytest.mark.parametrize("compression", [False, True])
def test_a_first_save_is_one_put_per_chunk_and_no_head(s3_server: dict[str, Any], compression: bool) -> None:
    store, requests = _store(s3_server, compression=compression)
    snap = store.save(_state(0))
    seen = requests.take()
    assert seen[("PUT", "chunks")] == _chunks(store, snap.id) == 4
    assert seen[("HEAD", "chunks")] == seen[("GET", "chunks")] == 0
    assert store.verify().ok


@pytest.mark.parametrize("compression", [False, True])
def test_a_resave_of_an_unchanged_state_uploads_no_chunk(s3_server: dict[str, Any], compression: bool) -> None:
    store, requests = _store(s3_server, compression=compression)
    first = store.save(_state(0))
    requests.take()
    again = store.save(_state(0))
    seen = requests.take()
    assert seen[("PUT", "chunks")] == seen[("HEAD", "chunks")] == 0
    assert seen[("GET", "chunks")] <= 2 * _chunks(store, first.id)  # chunk_whole: the header, the end
    assert store.table(again.id).chunk_digests() == store.table(first.id).chunk_digests()


def test_a_delta_save_uploads_only_its_new_chunks(s3_server: dict[str, Any]) -> None:
    store, requests = _store(s3_server, delta_depth=8)
    state = _state(0)
    first = store.save(state)
    state["a"] = state["a"].copy()
    state["a"][:16] += 1e-4  # one chunk of "a" changes: a delta against the parent's chunk
    requests.take()
    second = store.save(state)
    seen = requests.take()
    new = set(store.table(second.id).chunk_digests()) - set(store.table(first.id).chunk_digests())
    assert len(new) == 1
    assert seen[("PUT", "chunks")] == 1  # the delta alone: its reference is not uploaded again
    assert seen[("HEAD", "chunks")] == 0
    parts = store_parts(store)
    (digest,) = new
    assert parts.backend.read(f"chunks/{digest[:2]}/{digest}", 5, 6) == b"\x02"  # a delta
    assert store.verify().ok
    assert np.array_equal(store.load(second.id)["a"], state["a"])


def test_a_vanished_chunk_of_the_parent_is_written_again(s3_server: dict[str, Any]) -> None:
    """The parent's chunk is only a sign that it is stored: one found missing or damaged is written."""
    store, requests = _store(s3_server, compression=False)
    state = _state(0)
    first = store.save(state)
    parts = store_parts(store)
    gone, damaged = sorted(set(store.table(first.id).chunk_digests()))[:2]
    parts.backend.delete([f"chunks/{gone[:2]}/{gone}"])
    parts.backend.replace(f"chunks/{damaged[:2]}/{damaged}", b"ckpt\x01\x00")
    requests.take()
    store.save(state)
    seen = requests.take()
    # the missing one: one PUT; the damaged one: the conditional PUT finds it there, the replacement heals it
    assert seen[("PUT", "chunks")] == 3 and seen[("HEAD", "chunks")] == 0
    assert store.verify().ok


def test_a_sync_of_a_long_history_checks_and_reads_records_in_batches(
    s3_server: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one request per snapshot along the history, on either side: after a few, one listing of the
    destination's records, and one batched read of the source's."""
    local = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    for i in range(12):
        local.save({"w": np.full(4, i, dtype=np.float32)}, step=i)
    remote, requests = _store(s3_server, compression=False)
    report = local.sync_to(remote)
    seen = requests.take()
    assert report.snapshots == 12
    assert seen[("HEAD", "other")] <= 4  # then one listing answers for the rest
    assert seen[("PUT", "chunks")] == report.chunks == 12
    monkeypatch.setenv("CKPT_RECORD_CACHE", "off")  # every record read from the store itself
    back = ckpt.init(str(tmp_path / "back"), chunk_size=4096)
    source = ckpt.open(remote.url, skip_instance_cache=True, **s3_server)
    reads = Requests(source)
    assert source.sync_to(back).snapshots == 12
    got = reads.take()
    # 2 per chunk (its delta link, its object), and with the cache off each record up to 3 times (the walk, a
    # batch of every record after 4, the copy): 68; before, 100, every record one request after the other
    assert sum(got.values()) <= 72 and got[("GET", "chunks")] == 24
    assert back.log() == local.log()
