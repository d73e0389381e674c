"""Check-then-act: the swap alone decides between racing writers, and saves only move branches forward.

A ``GatedBackend`` holds one writer at a chosen call (a listing, a swap, a write) until the test lets it go,
so each race is played out in a fixed order, with events, never with sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt import Store
from ckpt.errors import FrozenRefError, RefConflictError, RefExistsError, RevisionNotFoundError
from ckpt.storage import Backend, Buffer, CasResult, Entry
from ckpt.store import _layout as layout


class GatedBackend:
    """A backend that stops at the first call ``gate(verb, path)`` accepts until ``release`` is set."""

    def __init__(self, real: Backend, gate: Callable[[str, str], bool]) -> None:
        self.real = real
        self.url = real.url
        self.conditional_writes = real.conditional_writes
        self.gate = gate
        self.reached = threading.Event()
        self.release = threading.Event()
        self._done = False

    def _wait(self, verb: str, path: str) -> None:
        if not self._done and self.gate(verb, path):
            self._done = True
            self.reached.set()
            assert self.release.wait(60), "the test never released the gate"

    def put_if_absent(self, path: str, data: Buffer) -> bool:
        self._wait("put_if_absent", path)
        return self.real.put_if_absent(path, data)

    def replace(self, path: str, data: Buffer) -> None:
        self._wait("replace", path)
        self.real.replace(path, data)

    def compare_and_swap(self, path: str, expected: bytes | None, new: bytes | None) -> CasResult:
        self._wait("compare_and_swap", path)
        return self.real.compare_and_swap(path, expected, new)

    def read(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        self._wait("read", path)
        return self.real.read(path, start, end)

    def read_into(self, path: str, out: Sequence[memoryview], start: int = 0) -> int:
        return self.real.read_into(path, out, start)

    def exists(self, path: str) -> bool:
        self._wait("exists", path)
        return self.real.exists(path)

    def list(self, prefix: str) -> Iterator[Entry]:
        self._wait("list", prefix)
        return self.real.list(prefix)

    def delete(self, paths: Sequence[str]) -> None:
        self.real.delete(paths)

    def flush(self) -> None:
        self.real.flush()

    def local_path(self, path: str) -> str | None:
        return self.real.local_path(path)


def state(i: int) -> dict[str, Any]:
    return {"w": np.full(8, float(i), dtype=np.float32), "step": i}


@pytest.fixture
def reopen(location: tuple[str, dict[str, Any]]) -> Callable[[], ckpt.Store]:
    url, opts = location
    return lambda: ckpt.open(url, **opts)


def race(store: ckpt.Store, gate: Callable[[str, str], bool], slow: Callable[[Store], Any], fast: Callable[[], Any]):
    """Run ``slow`` on a gated copy of ``store`` until the gate, then ``fast`` to the end, then the rest of
    ``slow``; returns (slow's result or exception, fast's result)."""
    gated = GatedBackend(store.backend, gate)
    slow_store = Store(gated, store.config)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = slow(slow_store)
        except BaseException as e:
            out["result"] = e

    thread = threading.Thread(target=run)
    thread.start()
    assert gated.reached.wait(60), "the slow writer never reached the gate"
    try:
        won = fast()
    finally:
        gated.release.set()
        thread.join(60)
    assert not thread.is_alive()
    return out["result"], won


def _listing_refs_or_swap(verb: str, path: str) -> bool:
    return (verb == "list" and path.startswith("refs/")) or verb == "compare_and_swap"


def test_two_first_saves_of_a_new_branch(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    """The loser gets the documented RefConflictError (never RefExistsError from a listing), loses nothing."""
    store.save(state(0))
    lost, won = race(
        store, _listing_refs_or_swap, lambda s: s.save(state(1), "new"), lambda: reopen().save(state(2), "new")
    )
    assert isinstance(lost, RefConflictError) and not isinstance(lost, RefExistsError), lost
    assert lost.expected is None and lost.actual == won.id and lost.snapshot
    assert store.branches()["new"] == won.id
    assert store.load(lost.snapshot)["step"] == 1  # stored, and in the reflog as a conflict
    assert lost.snapshot in {e.new for e in store.reflog("refs/heads/new") if e.action == "conflict"}
    assert store.verify().ok


def test_a_retry_loop_written_from_the_docs_converges(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    def save_with_retry(s: Store) -> ckpt.Snapshot:
        for _ in range(3):
            try:
                return s.save(state(1), "new", parents=[h] if (h := s.branches().get("new")) else None)
            except RefConflictError:
                continue
        raise AssertionError("no convergence")

    snap, won = race(store, _listing_refs_or_swap, save_with_retry, lambda: reopen().save(state(2), "new"))
    assert isinstance(snap, ckpt.Snapshot), snap
    assert snap.parents == (won.id,) and store.branches()["new"] == snap.id
    assert store.verify().ok


@pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)
def test_two_branch_creations_of_one_name(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    a = store.save(state(0))
    lost, _won = race(
        store,
        lambda verb, path: verb == "compare_and_swap",
        lambda s: s.branch("b", at=a.id),
        lambda: reopen().branch("b", at=a.id),
    )
    assert isinstance(lost, RefExistsError), lost
    assert [e.action for e in store.reflog("refs/heads/b")] == ["branch"]  # no conflict noise
    assert store.verify().ok


@pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)
def test_two_tags_of_one_name(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    a = store.save(state(0))
    b = store.save(state(1))
    lost, _won = race(
        store,
        lambda verb, path: verb == "put_if_absent" and path.startswith("refs/tags/"),
        lambda s: s.tag("v1", a.id),
        lambda: reopen().tag("v1", b.id),
    )
    assert isinstance(lost, RefExistsError), lost
    assert store.tags()["v1"].id == b.id and store.verify().ok


@pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)
def test_a_tag_deleted_twice_at_once(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    store.tag("t", store.save(state(0)).id)
    lost, _ = race(
        store,
        lambda verb, path: verb == "compare_and_swap",
        lambda s: s.delete_tag("t"),
        lambda: reopen().delete_tag("t"),
    )
    assert isinstance(lost, RevisionNotFoundError), lost
    assert "t" not in store.tags() and [e.action for e in store.reflog("refs/tags/t")] == ["tag", "delete"]


@pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)
def test_freeze_wins_over_a_prune_that_checked_first(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    a = store.save(state(0))
    store.save(state(1))
    pruned, _name = race(
        store,
        lambda verb, path: verb == "put_if_absent" and path.startswith(layout.PRUNED),
        lambda s: s.prune(a.id),
        lambda: reopen().freeze(a.id, name="rel-1"),
    )
    assert isinstance(pruned, FrozenRefError), pruned
    assert not store.get(a.id).pruned and store.verify().ok


@pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)
def test_a_prune_that_slipped_in_before_the_freeze_is_undone(
    store: ckpt.Store, reopen: Callable[[], ckpt.Store]
) -> None:
    a = store.save(state(0))
    store.save(state(1))
    name, pruned = race(
        store,
        lambda verb, path: verb == "put_if_absent" and path.startswith(layout.REFS_TAGS),
        lambda s: s.freeze(a.id, name="rel-1"),
        lambda: reopen().prune(a.id),
    )
    assert name == "rel-1" and pruned.pruned
    assert not store.get(a.id).pruned  # the release wins: its marker is gone
    assert store.load("rel-1")["step"] == 0 and store.verify().ok


# -- saves only move forward -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)
def test_a_save_that_would_move_a_branch_backwards_is_refused(store: ckpt.Store) -> None:
    a = store.save(state(0))
    b = store.save(state(1))
    before = {e.path for e in store.backend.list("")}
    with pytest.raises(RefConflictError) as err:
        store.save(state(2), "main", parents=[a.id])
    e = err.value
    assert (e.expected, e.actual, e.snapshot) == (a.id, b.id, None)
    assert "reset" in (e.hint or "") and "branch" in (e.hint or "") and "force" in (e.hint or "")
    assert {x.path for x in store.backend.list("")} == before  # nothing written
    assert [s.id for s in store.log("main")] == [b.id, a.id]
    with pytest.raises(RefConflictError):
        store.save(state(2), "main", parents=[])  # a root on an existing branch is sideways too
    # the ways to go back: a branch, a reset, or force
    retry = store.branch("retry", at=a.id)
    c = store.save(state(2), "retry")
    assert c.parents == (retry.id,)
    store.reset("main", a.id)
    d = store.save(state(3), "main", parents=[a.id])
    assert store.log("main")[1].id == a.id
    forced = store.save(state(4), "main", parents=[b.id], force=True)
    assert [s.id for s in store.log("main")] == [forced.id, b.id, a.id]
    assert d.id in {x.old for x in store.reflog("refs/heads/main")}  # the old head stays in the reflog
    merge = store.save(state(5), "main", parents=[forced.id, c.id], relation="merge")
    assert store.branches()["main"] == merge.id and store.verify().ok


@pytest.mark.parametrize("first", ["branch", "tag", "save"])
def test_a_branch_and_a_tag_racing_for_one_name_leave_one_ref(
    store: ckpt.Store, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """Both writers pass the name check before either creates its ref (the other acts right after the check,
    no timing): the one that swaps last sees the other and takes its ref back; never both."""
    from ckpt.store._refs import Refs

    good = store.save({"w": np.ones(4, np.float32)}, "main", model="tiny")
    other = store.save({"w": np.zeros(4, np.float32)}, "dev")
    name = "tiny-2026-01-01"
    checked = Refs.check_new_name
    raced: list[str] = []

    def check_then_race(self: Refs, new: str, kind: str, **kwargs: object) -> None:
        checked(self, new, kind, **kwargs)  # type: ignore[arg-type]
        if new == name and not raced:
            raced.append(kind)
            if kind == "branch":
                store.freeze(good.id, name=name)  # the other writer, between our check and our swap
            else:
                store.branch(name, at=other.id)

    monkeypatch.setattr(Refs, "check_new_name", check_then_race)
    with pytest.raises(ckpt.RefExistsError, match="at the same time"):
        if first == "branch":
            store.branch(name, at=other.id)
        elif first == "save":
            store.save({"w": np.full(4, 2.0, np.float32)}, name)
        else:
            store.tag(name, good.id)
    monkeypatch.undo()
    assert (name in store.branches()) != (name in store.tags())
    store.resolve(name)  # one ref: not ambiguous
    if first == "save":  # the save's snapshot is not lost: its branch's reflog keeps it as a conflict
        entries = store.reflog(name) if name in store.branches() else []
        assert entries or any(e.action == "conflict" for e in store.reflog())
