"""Revisions (``main``, ``v1``, ids and id prefixes, ``~N``, ``^N``) and ``Store.log``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import ckpt
from ckpt.errors import AmbiguousRevisionError, RevisionError, RevisionNotFoundError

#: Run a test on the local and memory stores only (the lookup logic does not depend on the backend, and each
#: S3 round trip to moto costs time). Tests that list or read ids run on all three.
no_s3 = pytest.mark.parametrize("backend_kind", ["file", "memory"], indirect=True)


def state(i: int) -> dict[str, Any]:
    return {"w": torch.full((4,), float(i)), "step": i}


@pytest.fixture
def chain(store: ckpt.Store) -> list[ckpt.Snapshot]:
    """Three snapshots on main: a ← b ← c; tag v1 on b."""
    snaps = [store.save(state(i), step=i, message=f"save {i}") for i in range(3)]
    store.tag("v1", snaps[1].id)
    return snaps


# -- bases -----------------------------------------------------------------------------------------------


def test_resolve_branch_tag_id_and_prefix(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    _a, b, c = chain
    assert store.resolve("main").id == c.id
    assert store.resolve("v1").id == b.id
    for snap in chain:
        assert store.resolve(snap.id).id == snap.id
        assert store.resolve(snap.id[:12]).id == snap.id
        assert store.resolve(snap.id.upper()).id == snap.id
    resolved = store.resolve("main")
    assert (resolved.step, resolved.message, resolved.parents) == (2, "save 2", (b.id,))


@no_s3
def test_resolve_four_hex_prefix(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    for snap in chain:
        others = [s for s in chain if s.id != snap.id]
        if any(o.id[:4] == snap.id[:4] for o in others):
            continue  # 1 in ~20 000 runs: the prefix is ambiguous, tested on its own below
        assert store.resolve(snap.id[:4]).id == snap.id
        assert store.resolve(snap.id[:5] + "~0").id == snap.id


@no_s3
@pytest.mark.parametrize("length", [1, 2, 3])
def test_prefix_shorter_than_four_is_not_an_id(store: ckpt.Store, chain: list[ckpt.Snapshot], length: int) -> None:
    with pytest.raises(RevisionNotFoundError):
        store.resolve(chain[0].id[:length])


@no_s3
@pytest.mark.parametrize("rev", ["nope", "0" * 64, "deadbeef", "main~x", "~1", "^", "", "   ", "main^-1", "v1~1x"])
def test_unknown_or_malformed_revisions(store: ckpt.Store, chain: list[ckpt.Snapshot], rev: str) -> None:
    if any(s.id.startswith("deadbeef") for s in chain):
        pytest.skip("astronomically unlikely: an id starts with deadbeef")
    with pytest.raises(RevisionNotFoundError) as err:
        store.resolve(rev)
    assert isinstance(err.value, LookupError)


@no_s3
def test_a_branch_named_like_an_id_prefix_is_ambiguous_not_a_winner(
    store: ckpt.Store, chain: list[ckpt.Snapshot]
) -> None:
    """One namespace rule: a name that is both a ref and an id prefix resolves to neither; the error names
    both and the qualified form picks the ref."""
    a, _b, c = chain
    store.branch(c.id[:6], at=a.id)  # under 7 hex digits: allowed, but it reads as c's id prefix too
    with pytest.raises(ckpt.AmbiguousRevisionError, match="both a branch") as err:
        store.resolve(c.id[:6])
    assert set(err.value.candidates) == {a.id, c.id}
    assert f"refs/heads/{c.id[:6]}" in str(err.value.hint)
    assert store.resolve(f"refs/heads/{c.id[:6]}").id == a.id
    assert store.resolve(c.id[:7]).id == c.id


@no_s3
@pytest.mark.parametrize("name", ["deadbee", "0123456789", "ABCDEF12"])
def test_names_that_read_as_snapshot_ids_are_refused(store: ckpt.Store, chain: list[ckpt.Snapshot], name: str) -> None:
    with pytest.raises(ckpt.InvalidNameError, match="reads as a snapshot id"):
        store.branch(name)
    with pytest.raises(ckpt.InvalidNameError, match="reads as a snapshot id"):
        store.tag(name)
    with pytest.raises(ckpt.InvalidNameError, match="reads as a snapshot id"):
        store.save({"w": np.ones(2, np.float32)}, name)
    with pytest.raises(ckpt.InvalidNameError):
        store.branch("refs/heads/x")
    store.branch(f"run-{name}")  # a letter outside a-f makes it a name


@no_s3
def test_a_branch_and_a_tag_of_one_name_are_ambiguous(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    """Written behind ckpt's back (a ref file of the release's name): resolving is refused, verify reports it."""
    from ckpt.store._refs import branch_bytes

    a, b, _c = chain
    store.freeze(a.id, name="tiny-2026-01-01")
    store.backend.replace("refs/heads/tiny-2026-01-01", branch_bytes(b.id))
    with pytest.raises(ckpt.AmbiguousRevisionError, match=r"both a branch .* and a tag") as err:
        store.load("tiny-2026-01-01")
    assert "refs/tags/tiny-2026-01-01" in str(err.value.hint)
    assert store.resolve("refs/tags/tiny-2026-01-01").id == a.id
    assert store.resolve("refs/heads/tiny-2026-01-01").id == b.id
    report = store.verify()
    assert any(d.object == "ref" and "share a name" in d.message for d in report.damage)
    store.repair()
    assert any(d.object == "ref" for d in store.verify().damage)  # repair does not pick a winner


@no_s3
def test_unknown_name_suggests_close_names(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    store.branch("experiment")
    store.tag("release-1")
    with pytest.raises(RevisionNotFoundError) as err:
        store.resolve("experimnet")
    assert err.value.hint is not None and "experiment" in err.value.hint
    assert "experimnet" in str(err.value)
    with pytest.raises(RevisionNotFoundError) as err:
        store.resolve("relese-1~1")
    assert err.value.hint is not None and "release-1" in err.value.hint
    with pytest.raises(RevisionNotFoundError) as err:
        store.resolve("zzzzzzzzzzzz")
    assert "experiment" not in (err.value.hint or "")


# -- ancestry --------------------------------------------------------------------------------------------


@no_s3
def test_first_parent_steps(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    a, b, c = chain
    expected = {
        "main~0": c,
        "main~": b,
        "main~1": b,
        "main~2": a,
        "main^": b,
        "main^1": b,
        "main^^": a,
        "main~1~": a,
        "main~1^": a,
        "main^~1": a,
        "main^0": c,
        "v1~1": a,
        "v1^": a,
        c.id[:8] + "~2": a,
    }
    for rev, snap in expected.items():
        assert store.resolve(rev).id == snap.id, rev


@no_s3
def test_going_past_the_root(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    a = chain[0]
    for rev in ("main~3", "main~2^", "main~10", "v1~2", f"{a.id}^", f"{a.id[:8]}~1"):
        with pytest.raises(RevisionNotFoundError):
            store.resolve(rev)


@pytest.fixture
def merge(store: ckpt.Store) -> dict[str, ckpt.Snapshot]:
    """main: a ← b ← m, feature: a ← f, and m = merge of b and f."""
    a = store.save(state(0))
    store.branch("feature")
    b = store.save(state(1))
    f = store.save(state(2), branch="feature")
    m = store.save(state(3), parents=[b.id, "feature"], relation="merge", message="merge feature")
    return {"a": a, "b": b, "f": f, "m": m}


@no_s3
def test_second_parent_of_a_merge(store: ckpt.Store, merge: dict[str, ckpt.Snapshot]) -> None:
    a, b, f, m = merge["a"], merge["b"], merge["f"], merge["m"]
    assert m.parents == (b.id, f.id) and m.relation == "merge"
    assert store.resolve("main").id == m.id
    assert store.resolve("main^").id == b.id
    assert store.resolve("main^1").id == b.id
    assert store.resolve("main^2").id == f.id
    assert store.resolve("main^2~1").id == a.id
    assert store.resolve("main^2^").id == a.id
    assert store.resolve("main~1").id == b.id
    assert store.resolve("main~2").id == a.id
    with pytest.raises(RevisionNotFoundError):
        store.resolve("main^3")
    with pytest.raises(RevisionNotFoundError):
        store.resolve("main^1^2")  # b has one parent


@no_s3
def test_log_follows_first_parents(store: ckpt.Store, merge: dict[str, ckpt.Snapshot]) -> None:
    a, b, f, m = merge["a"], merge["b"], merge["f"], merge["m"]
    assert [s.id for s in store.log()] == [m.id, b.id, a.id]
    assert [s.id for s in store.log("feature")] == [f.id, a.id]
    assert [s.id for s in store.log("main^2")] == [f.id, a.id]


# -- ambiguous prefixes ----------------------------------------------------------------------------------


def test_ambiguous_prefix_lists_candidates(memory_url: str) -> None:
    store = ckpt.init(memory_url, chunk_size=4096)
    by_prefix: dict[str, str] = {}
    pair: tuple[str, str] | None = None
    for i in range(5000):  # a collision of 16 bits is expected after ~320 ids; 5000 never fail in practice
        sid = store.save({"i": i}, metadata={"i": i}).id
        if sid[:4] in by_prefix:
            pair = (by_prefix[sid[:4]], sid)
            break
        by_prefix[sid[:4]] = sid
    assert pair is not None
    prefix = pair[0][:4]
    with pytest.raises(AmbiguousRevisionError) as err:
        store.resolve(prefix)
    e = err.value
    assert isinstance(e, RevisionError) and isinstance(e, LookupError)
    assert sorted(e.candidates) == sorted(pair)
    for sid in pair:
        assert sid[:12] in str(e)
    assert e.hint
    with pytest.raises(AmbiguousRevisionError):
        store.resolve(prefix.upper() + "~1")
    common = next(i for i in range(64) if pair[0][i] != pair[1][i])
    for sid in pair:
        assert store.resolve(sid[: common + 1]).id == sid
        assert store.resolve(sid).id == sid


# -- log -------------------------------------------------------------------------------------------------


@no_s3
def test_log_order_and_limit(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    a, b, c = chain
    assert [s.id for s in store.log()] == [c.id, b.id, a.id]
    assert [s.step for s in store.log("main")] == [2, 1, 0]
    assert [s.id for s in store.log(limit=2)] == [c.id, b.id]
    assert [s.id for s in store.log(limit=1)] == [c.id]
    assert store.log(limit=0) == []
    assert [s.id for s in store.log(limit=10)] == [c.id, b.id, a.id]
    assert [s.id for s in store.log("v1")] == [b.id, a.id]
    assert [s.id for s in store.log("main~1", limit=1)] == [b.id]
    assert not any(s.pruned for s in store.log())


def test_pruned_snapshots_stay_in_the_log(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    a, b, c = chain
    store.delete_tag("v1")
    pruned = store.prune(b.id, reason="not the best")
    assert pruned.pruned and pruned.id == b.id
    log = store.log()
    assert [s.id for s in log] == [c.id, b.id, a.id]
    assert [s.pruned for s in log] == [False, True, False]
    assert store.resolve("main~1").pruned
    assert store.get(b.id).pruned
    assert not store.resolve("main").pruned


# -- BRANCH@{N}: the reflog --------------------------------------------------------------------------------------


@no_s3
def test_branch_at_n_walks_the_reflog(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    a, b, c = chain
    assert store.resolve("main@{0}").id == c.id
    assert store.resolve("main@{1}").id == b.id
    assert store.resolve("main@{2}").id == a.id
    store.reset("main", "main~2")  # undo two saves …
    assert store.resolve("main").id == a.id
    assert store.resolve("main@{1}").id == c.id  # … and find the head again
    assert store.resolve("main@{1}~1").id == b.id  # suffixes apply after
    store.reset("main", "main@{1}")
    assert store.resolve("main").id == c.id


@no_s3
def test_branch_at_n_after_delete_and_errors(store: ckpt.Store, chain: list[ckpt.Snapshot]) -> None:
    store.delete_branch("main")
    assert store.resolve("main@{1}").id == chain[2].id  # a deleted branch's head is still named
    with pytest.raises(RevisionNotFoundError, match=r"deleted \(.*\); try main@\{1\}"):
        store.resolve("main@{0}")
    with pytest.raises(RevisionNotFoundError, match="has only 4 entries") as info:
        store.resolve("main@{4}")
    assert "main@{3}" in (info.value.hint or "")
    with pytest.raises(RevisionNotFoundError, match="no reflog for branch 'v1'"):
        store.resolve("v1@{0}")  # tags never move: no reflog walk
    with pytest.raises(RevisionNotFoundError):
        store.resolve("main@{x}")  # not a count: not a name either ('@{' is never in a name)
