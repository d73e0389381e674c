"""Two processes saving to one branch at once: every save lands or raises a conflict, and nothing is lost.

Also: a gc running beside a save must not delete a chunk that the save found already stored (deduplicated)
and is about to reference.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.storage.faults import FaultyBackend, InjectedFault
from ckpt.store.store import Store

SAVES = 10
CHUNK = 64 * 1024

_STATE_CODE = f"""
import numpy as np

def make_state(who, i):
    rng = np.random.default_rng([who, i])
    return {{
        "model": {{
            "own": rng.standard_normal({4 * CHUNK // 4}, dtype=np.float32),  # 4 chunks of its own
            "shared": np.full({CHUNK // 4}, i, dtype=np.float32),  # the same in both writers: a race to store it
        }},
        "who": who,
        "i": i,
    }}
"""

_CHILD = (
    _STATE_CODE
    + """
import json, sys
import ckpt

store = ckpt.open(sys.argv[1])
who = int(sys.argv[2])
states = [make_state(who, i) for i in range(int(sys.argv[3]))]
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
landed, conflicts = [], []
for i, state in enumerate(states):
    try:
        landed.append([i, store.save(state, step=i, message=f"writer {who} save {i}").id])
    except ckpt.RefConflictError as e:
        conflicts.append([i, e.snapshot, e.expected, e.actual])
print(json.dumps({"landed": landed, "conflicts": conflicts}), flush=True)
"""
)

_ns: dict[str, Any] = {}
exec(_STATE_CODE, _ns)
make_state = _ns["make_state"]


def _assert_state(got: Any, want: Any) -> None:
    assert (got["who"], got["i"]) == (want["who"], want["i"])
    for name, array in want["model"].items():
        assert got["model"][name].tobytes() == array.tobytes(), name


def test_two_writers_on_one_branch_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ckpt.init(str(root), chunk_size=CHUNK)
    first = store.save({"who": -1}, step=0, model="m")

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(root), str(who), str(SAVES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in (0, 1)
    ]
    results = []
    lock = root / "locks" / "refs.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", line
        # hold the ref lock until both writers have written their first save and wait to move main from the
        # same head: one of the two then loses the race, whatever the machine's speed
        fcntl.flock(fd, fcntl.LOCK_EX)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        while len(list((root / "snapshots").rglob("*.json"))) < 3 and all(p.poll() is None for p in procs):
            threading.Event().wait(0.005)
        fcntl.flock(fd, fcntl.LOCK_UN)
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        os.close(fd)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    store = ckpt.open(str(root))
    landed = {sid: (who, i) for who, r in enumerate(results) for i, sid in r["landed"]}
    conflicts = {sid: (who, i) for who, r in enumerate(results) for i, sid, _, _ in r["conflicts"]}
    assert len(landed) + len(conflicts) == 2 * SAVES
    assert not landed.keys() & conflicts.keys()
    assert landed and conflicts, "the two writers never raced"  # their first saves always do

    # the history is linear and holds exactly the first snapshot and every save that landed
    history = store.log("main")
    assert history[-1].id == first.id
    assert all(len(s.parents) == 1 for s in history[:-1])
    assert {s.id for s in history[:-1]} == set(landed)
    assert len(history) == 1 + len(landed)
    for who in (0, 1):  # each writer's own saves appear in the order it made them
        mine = [landed[s.id][1] for s in reversed(history[:-1]) if landed[s.id][0] == who]
        assert mine == sorted(mine)

    # every save that lost the race is stored, in the reflog as a conflict, and loads
    reflog = store.reflog("refs/heads/main")
    conflicted = {e.new for e in reflog if e.action == "conflict"}
    assert conflicted == set(conflicts)
    for sid, (who, i) in conflicts.items():
        _assert_state(store.load(sid), make_state(who, i))
    for sid, (who, i) in landed.items():
        _assert_state(store.load(sid), make_state(who, i))
    commits = [e.new for e in reflog if e.action == "commit"]
    assert set(commits) == {first.id, *landed}

    report = store.verify()
    assert report.ok, report.damage


def _age(store: ckpt.Store, path: str, seconds: float) -> None:
    """Make an object look ``seconds`` older than it is (test only: reaches into the backend)."""
    local = store.backend.local_path(path)
    if local is not None:
        when = time.time() - seconds
        os.utime(local, (when, when))
        return
    backend: Any = store.backend
    assert backend.protocol == "memory"
    backend.fs.store[backend._abs(path)].created -= timedelta(seconds=seconds)


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_gc_beside_a_save_keeps_the_chunks_the_save_deduplicated(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A save that finds a chunk already stored relies on it; a gc running meanwhile must not delete it.

    The chunk here is the leftover of a save that died an hour ago: unreferenced and older than gc's grace
    period. A new save of the same tensor skips writing it (deduplication); gc runs between that and the
    save's commit.
    """
    url = str(tmp_path / "store") if kind == "file" else request.getfixturevalue("memory_url")
    store = ckpt.init(url, chunk_size=4096)
    store.save({"a": np.zeros(4, np.float32)}, step=0)
    w = np.arange(1024, dtype=np.float32)  # exactly one chunk
    with pytest.raises(InjectedFault):
        Store(FaultyBackend(store.backend, fail_after=1), store.config).save({"w": w})
    for entry in store.backend.list("chunks/"):
        _age(store, entry.path, 3600 + 60)

    class GcBeforeTheTable(FaultyBackend):
        def put_if_absent(self, path: str, data: Any) -> bool:
            if path.startswith("tables/"):
                store.gc(grace=timedelta(hours=1))
            return super().put_if_absent(path, data)

    snap = Store(GcBeforeTheTable(store.backend, fail_after=None), store.config).save({"w": w}, step=1)
    report = store.verify()
    assert report.ok, report.damage
    assert store.load(snap.id)["w"].tobytes() == w.tobytes()
