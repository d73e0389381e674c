"""The commit protocol in action: the branch moves last, a crash leaves only garbage, a lost race loses nothing.

Run it with ``python examples/docs_commit_protocol.py [STORE]`` (default: a new temporary folder). A
``progress`` callback, which ``save`` calls while it writes chunks, stands in for the world outside: it watches,
crashes the save, or plays a second writer.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from datetime import timedelta

import torch

import ckpt


class Crash(Exception):
    """Stands in for a killed process."""


def main(url: str) -> None:
    store = ckpt.init(url, chunk_size=1024)
    first = store.save({"w": torch.zeros(1024)}, step=1)  # 4 KiB: four chunks

    # 1. While chunks are being written, the branch has not moved and no new record exists.
    seen = []

    def watch(nbytes: int) -> None:
        seen.append((store.branches()["main"], len(store.snapshots())))

    second = store.save({"w": torch.ones(1024)}, step=2, progress=watch)
    assert seen and all(head == first.id and count == 1 for head, count in seen)
    assert store.branches()["main"] == second.id
    print(f"during the save main stayed at {first.short_id}; then it moved to {second.short_id}")

    # 2. A crash part-way leaves the branch where it was, and only unreferenced chunks behind.
    def crash(nbytes: int) -> None:
        raise Crash

    with contextlib.suppress(Crash):
        store.save({"w": torch.full((1024,), 2.0)}, step=3, progress=crash)
    assert store.branches()["main"] == second.id and store.verify().ok
    report = store.gc(grace=timedelta(0))
    print(f"after a crash: main unchanged, verify OK, gc removed {report.chunks} orphan chunk(s)")

    # 3. Two writers on one branch: the loser gets RefConflictError, and its snapshot is kept.
    other = ckpt.open(url)
    won = []
    lock = threading.Lock()  # save writes chunks (and calls progress) from several threads

    def race(nbytes: int) -> None:
        with lock:
            if not won:
                won.append(other.save({"w": torch.full((1024,), 3.0)}, step=3, message="other writer"))

    try:
        store.save({"w": torch.full((1024,), 4.0)}, step=3, message="mine", progress=race)
        raise AssertionError("expected a conflict")
    except ckpt.RefConflictError as e:
        print(f"conflict: {e}")
        assert e.expected == second.id and e.actual == won[0].id
        conflict = store.reflog("refs/heads/main")[-1]
        assert conflict.action == "conflict" and conflict.new == e.snapshot
        store.branch("mine", at=e.snapshot)
    assert store.load("mine")["w"][0] == 4.0 and store.verify().ok
    print("the losing snapshot is kept: branch 'mine' points at it")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "store"))
