"""Branches, tags, freeze, the reflog, ref-name rules, and races on a branch."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pytest
import torch

import ckpt
from ckpt.errors import (
    FrozenRefError,
    InvalidNameError,
    RecordError,
    RefConflictError,
    RefError,
    RefExistsError,
    RevisionError,
    RevisionNotFoundError,
)
from ckpt.store import store_parts


def state(i: int) -> dict[str, Any]:
    """A small state tree that differs for each ``i``."""
    return {"model": {"w": torch.full((8,), float(i)), "b": torch.zeros(2)}, "step": i}


@pytest.fixture
def reopen(location: tuple[str, dict[str, Any]]) -> Callable[[], ckpt.Store]:
    """Open the ``store`` fixture's store again, as another process would."""
    url, opts = location
    return lambda: ckpt.open(url, **opts)


#: Run a test on the local and memory stores only: what it checks does not depend on the backend, and
#: every S3 round trip to moto costs time. Races, ref deletion and nesting run on all three.
no_s3 = pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)


def today_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


# -- branches --------------------------------------------------------------------------------------------


@no_s3
def test_branch_at_a_revision_and_continue_from_it(store: ckpt.Store) -> None:
    a = store.save(state(1), step=1)
    b = store.save(state(2), step=2)
    at = store.branch("retry", at="main~1")
    assert at.id == a.id
    assert store.branches() == {"main": b.id, "retry": a.id}
    c = store.save(state(3), branch="retry", step=3)
    assert c.parents == (a.id,)
    assert store.branches() == {"main": b.id, "retry": c.id}
    assert store.resolve("retry").id == c.id
    assert store.resolve("main").id == b.id


@no_s3
def test_branch_defaults_to_main(store: ckpt.Store) -> None:
    a = store.save(state(1))
    assert store.branch("copy").id == a.id
    assert store.branches()["copy"] == a.id


@no_s3
def test_branch_that_exists_is_refused(store: ckpt.Store) -> None:
    a = store.save(state(1))
    store.save(state(2))
    store.branch("exp", at=a.id)
    with pytest.raises(RefExistsError):
        store.branch("exp")
    with pytest.raises(RefExistsError):
        store.branch("main", at=a.id)
    assert store.branches()["exp"] == a.id


@no_s3
def test_branch_at_unknown_revision(store: ckpt.Store) -> None:
    store.save(state(1))
    with pytest.raises(RevisionNotFoundError):
        store.branch("x", at="nope")
    assert "x" not in store.branches()


@no_s3
def test_delete_branch_keeps_its_snapshots(store: ckpt.Store) -> None:
    store.save(state(1))
    store.branch("exp")
    s = store.save(state(2), branch="exp")
    store.delete_branch("exp")
    assert "exp" not in store.branches()
    with pytest.raises(RevisionNotFoundError):
        store.resolve("exp")
    assert torch.equal(store.load(s.id)["model"]["w"], state(2)["model"]["w"])
    with pytest.raises(RevisionNotFoundError):
        store.delete_branch("exp")
    # the name is free again
    store.branch("exp")


@no_s3
def test_reset_moves_a_branch_anywhere(store: ckpt.Store) -> None:
    a = store.save(state(1))
    b = store.save(state(2))
    c = store.save(state(3))
    assert store.reset("main", "main~2").id == a.id
    assert store.branches()["main"] == a.id
    assert store.reset("main", c.id).id == c.id
    assert store.resolve("main~1").id == b.id
    with pytest.raises(RevisionNotFoundError):
        store.reset("nope", "main")
    moves = [(e.action, e.old, e.new) for e in store.reflog("refs/heads/main")]
    assert moves[-2:] == [("reset", c.id, a.id), ("reset", a.id, c.id)]


# -- tags ------------------------------------------------------------------------------------------------


def test_tag_create_and_delete(store: ckpt.Store) -> None:
    a = store.save(state(1))
    b = store.save(state(2))
    assert store.tag("v1", "main~1", message="first").id == a.id
    tag = store.tags()["v1"]
    assert (tag.id, tag.frozen, tag.message) == (a.id, False, "first")
    assert store.resolve("v1").id == a.id
    assert store.tag("v2").id == b.id
    store.delete_tag("v1")
    assert set(store.tags()) == {"v2"}
    with pytest.raises(RevisionNotFoundError):
        store.resolve("v1")
    with pytest.raises(RevisionNotFoundError):
        store.delete_tag("v1")


@no_s3
def test_tags_never_move(store: ckpt.Store) -> None:
    a = store.save(state(1))
    b = store.save(state(2))
    store.tag("v1", a.id)
    with pytest.raises(RefExistsError):
        store.tag("v1", b.id)
    assert store.tags()["v1"].id == a.id


@no_s3
def test_frozen_tag_can_never_move_or_be_deleted(store: ckpt.Store) -> None:
    a = store.save(state(1), model="m")
    b = store.save(state(2))
    name = store.freeze(a.id, name="m-release")
    with pytest.raises(FrozenRefError) as err:
        store.delete_tag(name)
    assert err.value.hint
    with pytest.raises(RefError):
        store.tag(name, b.id)
    with pytest.raises(RefError):
        store.freeze(b.id, name=name)
    tag = store.tags()[name]
    assert (tag.id, tag.frozen) == (a.id, True)
    assert store.resolve(name).id == a.id


# -- freeze ----------------------------------------------------------------------------------------------


@no_s3
def test_freeze_default_name_is_model_and_utc_date(store: ckpt.Store) -> None:
    store.save(state(1), model="tiny-llama")
    snap = store.save(state(2))  # the model name is kept from the parent
    assert snap.model == "tiny-llama"
    before = today_utc()
    name = store.freeze("main")
    after = today_utc()
    assert name in {f"tiny-llama-{before}", f"tiny-llama-{after}"}
    tag = store.tags()[name]
    assert tag.frozen and tag.id == snap.id
    assert store.load(name)["step"] == 2
    assert [(e.action, e.new) for e in store.reflog(f"refs/tags/{name}")] == [("freeze", snap.id)]


@no_s3
def test_freeze_model_argument_and_explicit_name(store: ckpt.Store) -> None:
    a = store.save(state(1), model="base")
    before = today_utc()
    name = store.freeze(a.id, model="chat", message="release notes")
    assert name in {f"chat-{before}", f"chat-{today_utc()}"}
    assert store.tags()[name].message == "release notes"
    assert store.freeze(a.id, name="chat-v2") == "chat-v2"
    assert store.tags()["chat-v2"].frozen


@no_s3
def test_freeze_refuses_an_existing_name(store: ckpt.Store) -> None:
    a = store.save(state(1), model="m")
    b = store.save(state(2))
    name = store.freeze(a.id)
    with pytest.raises(RefExistsError):
        store.freeze(b.id)  # same model, same day: releases are never overwritten
    store.tag("plain", b.id)
    with pytest.raises(RefExistsError):
        store.freeze(b.id, name="plain")
    store.branch("br", at=a.id)
    with pytest.raises(RefExistsError):
        store.freeze(b.id, name="br")
    assert store.tags()[name].id == a.id
    assert not store.tags()["plain"].frozen


@no_s3
def test_freeze_without_a_model_name(store: ckpt.Store) -> None:
    store.save(state(1))
    with pytest.raises(RecordError) as err:
        store.freeze("main")
    assert err.value.hint
    assert store.tags() == {}


# -- races on a branch -----------------------------------------------------------------------------------


def test_stale_writer_gets_a_conflict_and_loses_nothing(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    """Writer B reads main, writer A saves meanwhile, then B's move of main fails."""
    start = store.save(state(0), step=0)
    writer_a, writer_b = reopen(), reopen()
    won: list[ckpt.Snapshot] = []
    lock = threading.Lock()

    def a_saves_while_b_writes_chunks(nbytes: int) -> None:
        with lock:
            if not won:
                won.append(writer_a.save(state(1), step=1, message="A"))

    with pytest.raises(RefConflictError) as err:
        writer_b.save(state(2), step=2, message="B", progress=a_saves_while_b_writes_chunks)
    (winner,) = won
    e = err.value
    assert e.ref == "refs/heads/main"
    assert e.expected == start.id
    assert e.actual == winner.id
    assert e.snapshot is not None and e.snapshot not in (start.id, winner.id)
    assert start.id[:12] in str(e) and winner.id[:12] in str(e)
    assert e.hint

    assert store.branches()["main"] == winner.id
    conflicts = [x for x in store.reflog("refs/heads/main") if x.action == "conflict"]
    assert [(x.old, x.new) for x in conflicts] == [(winner.id, e.snapshot)]
    assert e.snapshot in {x.new for x in store.reflog() if x.action == "conflict"}
    lost = store.resolve(e.snapshot)
    assert lost.parents == (start.id,) and lost.message == "B"
    assert torch.equal(store.load(e.snapshot)["model"]["w"], state(2)["model"]["w"])
    assert store.verify().ok


@no_s3
def test_stale_expectation_on_move_branch(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    start = store.save(state(0))
    other = reopen()
    stale = other.branches()["main"]
    new = store.save(state(1))
    orphan = other.save(state(2), branch="side")
    with pytest.raises(RefConflictError) as err:
        store_parts(other).refs.move_branch("main", stale, orphan.id, action="commit")
    assert (err.value.expected, err.value.actual, err.value.snapshot) == (start.id, new.id, orphan.id)
    assert store.branches()["main"] == new.id
    assert store.reflog("refs/heads/main")[-1].action == "conflict"


def test_concurrent_writers_lose_nothing(store: ckpt.Store, reopen: Callable[[], ckpt.Store]) -> None:
    store.save(state(0))
    writers = [reopen() for _ in range(4)]
    barrier = threading.Barrier(len(writers))

    def save(i: int) -> tuple[str, str]:
        barrier.wait(timeout=30)
        try:
            return "ok", writers[i].save(state(10 + i), step=10 + i).id
        except RefConflictError as e:
            assert e.snapshot is not None
            return "conflict", e.snapshot

    with ThreadPoolExecutor(len(writers)) as pool:
        results = list(pool.map(save, range(len(writers))))
    saved = {sid for kind, sid in results if kind == "ok"}
    lost = {sid for kind, sid in results if kind == "conflict"}
    assert saved, "at least one writer must win"
    history = {s.id for s in store.log("main")}
    assert saved <= history, "a successful save is missing from main's history"
    assert lost <= {e.new for e in store.reflog("refs/heads/main") if e.action == "conflict"}
    for _, sid in results:
        assert store.load(sid)["step"] >= 10
    assert store.verify().ok


# -- reflog ----------------------------------------------------------------------------------------------


@no_s3
def test_reflog_records_every_move(store: ckpt.Store) -> None:
    a = store.save(state(1), message="one")
    b = store.save(state(2), message="two")
    store.branch("exp", at=a.id)
    c = store.save(state(3), branch="exp")
    store.reset("main", a.id)
    store.tag("v1", b.id)
    rel = store.freeze(c.id, name="rel-1")
    store.delete_tag("v1")
    store.delete_branch("exp")
    moves = [(e.ref, e.action, e.old, e.new) for e in store.reflog()]
    assert moves == [
        ("refs/heads/main", "commit", None, a.id),
        ("refs/heads/main", "commit", a.id, b.id),
        ("refs/heads/exp", "branch", None, a.id),
        ("refs/heads/exp", "commit", a.id, c.id),
        ("refs/heads/main", "reset", b.id, a.id),
        ("refs/tags/v1", "tag", None, b.id),
        (f"refs/tags/{rel}", "freeze", None, c.id),
        ("refs/tags/v1", "delete", b.id, None),
        ("refs/heads/exp", "delete", c.id, None),
    ]
    assert [e.action for e in store.reflog("refs/heads/exp")] == ["branch", "commit", "delete"]
    assert store.reflog()[0].message == "one"
    times = [e.time for e in store.reflog()]
    assert times == sorted(times)


# -- names -----------------------------------------------------------------------------------------------

VALID = ["main", "exp/lr-3e-4", "tiny-llama-2026-11-28", "a.b", "v1.0", "x_y", "a/b/c", "a@b", "UPPER"]

INVALID = [
    "",
    "-x",
    "/x",
    "x/",
    "a..b",
    "a//b",
    "x.lock",
    "a/b.lock/c",
    "a/.b",
    ".hidden",
    "x.",
    "@",
    "a b",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[",
    "a\\b",
    "a\x00b",
    "a\x01b",
    "a\tb",
    "a\nb",
    "a\x1fb",
    "a\x7fb",
    "a@{1}",
    "@{",
    "..",
    "../x",
    "../../etc",
    "a/../../etc",
    "x" * 201,
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(local_store: ckpt.Store, name: str) -> None:
    snap = local_store.save(state(1), branch=name)
    assert local_store.branches()[name] == snap.id
    assert local_store.resolve(name).id == snap.id
    local_store.tag(f"t/{name}", name)
    assert local_store.resolve(f"t/{name}").id == snap.id


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names(local_store: ckpt.Store, name: str) -> None:
    local_store.save(state(1))
    with pytest.raises(InvalidNameError) as err:
        local_store.branch(name)
    assert isinstance(err.value, ValueError) and err.value.hint
    with pytest.raises(InvalidNameError):
        local_store.save(state(2), branch=name)
    with pytest.raises(InvalidNameError):
        local_store.tag(name)
    with pytest.raises(InvalidNameError):
        local_store.freeze("main", name=name)
    assert set(local_store.branches()) == {"main"}
    assert local_store.tags() == {}


@no_s3
@pytest.mark.parametrize("name", ["../../etc", "../heads/main", "a/../../../x", "/etc/passwd"])
def test_a_name_never_escapes_the_store(store: ckpt.Store, name: str) -> None:
    store.save(state(1))
    store.tag("v1")
    for create in (lambda: store.branch(name), lambda: store.tag(name), lambda: store.save(state(2), branch=name)):
        with pytest.raises(InvalidNameError):
            create()
    with pytest.raises(RevisionError):
        store.resolve(name)
    for change in (
        lambda: store.delete_branch(name),
        lambda: store.delete_tag(name),
        lambda: store.reset(name, "main"),
    ):
        with pytest.raises((InvalidNameError, RevisionNotFoundError)):
            change()
    assert set(store.branches()) == {"main"} and set(store.tags()) == {"v1"}


@no_s3
def test_branch_and_tag_names_clash(store: ckpt.Store) -> None:
    store.save(state(1))
    store.tag("v1")
    with pytest.raises(RefExistsError):
        store.branch("v1")
    with pytest.raises(RefExistsError):
        store.save(state(2), branch="v1")
    store.branch("dev")
    with pytest.raises(RefExistsError):
        store.tag("dev")
    assert set(store.branches()) == {"main", "dev"} and set(store.tags()) == {"v1"}


def test_nested_names_clash(store: ckpt.Store) -> None:
    store.save(state(1))
    store.branch("a")
    with pytest.raises(RefExistsError):
        store.branch("a/b")
    with pytest.raises(RefExistsError):
        store.tag("a/b")
    store.branch("x/y")
    with pytest.raises(RefExistsError):
        store.branch("x")
    with pytest.raises(RefExistsError):
        store.save(state(2), branch="x")
    store.tag("t/1")
    with pytest.raises(RefExistsError):
        store.branch("t")
    store.branch("x/z")  # siblings are fine
    assert set(store.branches()) == {"main", "a", "x/y", "x/z"}


@no_s3
def test_names_freed_by_deletion_can_nest_the_other_way(store: ckpt.Store) -> None:
    a = store.save(state(1))
    store.branch("x/y")
    store.delete_branch("x/y")
    assert store.branch("x").id == a.id  # "x/y" is gone, so "x" no longer clashes with it
    store.delete_branch("x")
    store.branch("x/z")
    store.tag("t/1")
    store.delete_tag("t/1")
    assert store.tag("t").id == a.id
    store.delete_tag("t")
    store.tag("t/2")
    assert set(store.branches()) == {"main", "x/z"} and set(store.tags()) == {"t/2"}
