"""``sync`` between stores: local ↔ local, and local ↔ S3 on a moto server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.diff import diff

from .conftest import Invoke, parse, weights


def _opts(flag: str, opts: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in opts.items():
        out += [flag, f"{k}={v}"]
    return out


def test_sync_local_to_local(
    invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot], tmp_path: Path
) -> None:
    dst = tmp_path / "copy"
    data = parse(invoke("sync", str(store.url), str(dst), "--all", "--init", "--json", store=False))
    assert data["src"] == store.url and data["dst"] == str(dst)
    assert data["snapshots"] == len({s.id for s in family.values()})
    assert data["chunks"] > 0 and data["bytes"] > 0 and data["conflicts"] == []
    assert set(data) == {
        "src",
        "dst",
        "created",
        "snapshots",
        "chunks",
        "bytes",
        "chunks_skipped",
        "bytes_skipped",
        "refs",
        "conflicts",
    }
    assert data["created"] is True
    copy = ckpt.open(str(dst))
    assert copy.chunk_size == store.chunk_size
    assert copy.branches() == store.branches()
    assert copy.tags() == store.tags()
    assert copy.get(family["a"].id).pruned
    assert copy.verify().ok
    again = parse(invoke("sync", str(store.url), str(dst), "--all", "--json", store=False))
    assert (again["snapshots"], again["chunks"], again["refs"]) == (0, 0, [])
    out = invoke("sync", str(store.url), str(dst), "--all", store=False).stdout
    assert out == f"{dst} is up to date: nothing to copy\n"


def test_sync_usage_and_missing_destination(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"w": [1]})
    invoke("sync", store.url, str(tmp_path / "d"), store=False, code=2)
    invoke("sync", store.url, str(tmp_path / "d"), "main", "--all", store=False, code=2)
    invoke("sync", store.url, str(tmp_path / "d"), "main", "--src-option", "oops", store=False, code=2)
    assert not (tmp_path / "d").exists()
    # a destination with no store yet is created, with the source's chunk size, and the output says so
    result = invoke("sync", store.url, str(tmp_path / "d"), "main", store=False)
    assert result.stdout.splitlines()[0] == f"created a ckpt store at {tmp_path / 'd'} (chunks of 4.0 KiB)"
    assert ckpt.open(str(tmp_path / "d")).chunk_size == store.chunk_size
    assert ckpt.open(str(tmp_path / "d")).branches() == store.branches()


def test_sync_counts_each_chunk_once_and_only_what_the_destination_had(
    invoke: Invoke, store: ckpt.Store, tmp_path: Path
) -> None:
    """Chunks shared by several snapshots are copied and counted once; "already there" means on DST before."""
    base = weights(1)
    raw = {"compression": False}  # raw chunks: their sizes are known to the byte
    store.save({"model": base}, step=1, **raw)
    store.save({"model": {**base, "layers.0.w": base["layers.0.w"] + 1}}, step=2, **raw)  # shares 2 of 3 tensors
    store.branch("other", at="main~1")
    store.save({"model": {**base, "embed.weight": base["embed.weight"] * 2}}, "other", step=3, **raw)
    chunk_bytes: dict[str, int] = {}
    for snap in store.snapshots():
        table = store.table(snap.id)
        for entry in table.tensors.values():
            for i, d in enumerate(entry.chunks):
                chunk_bytes[d] = min(table.chunk_size, entry.nbytes - i * table.chunk_size) + 16  # + its header
    main_chunks = {d for s in store.log("main") for e in store.table(s.id).tensors.values() for d in e.chunks}
    dst = str(tmp_path / "copy")

    first = parse(invoke("sync", store.url, dst, "main", "--json", store=False))
    assert (first["snapshots"], first["chunks"], first["chunks_skipped"]) == (2, len(main_chunks), 0)
    assert first["bytes"] == sum(chunk_bytes[d] for d in main_chunks) and first["bytes_skipped"] == 0
    assert (tmp_path / "copy" / "chunks").is_dir()

    second = parse(invoke("sync", store.url, dst, "--all", "--json", store=False))
    other_new = {d for e in store.table(store.resolve("other").id).tensors.values() for d in e.chunks}
    other_new -= main_chunks
    assert (second["snapshots"], second["chunks"]) == (1, len(other_new))
    # the new snapshot's other chunks were on DST from the first sync: only those count as already there
    shared = {d for e in store.table(store.resolve("other").id).tensors.values() for d in e.chunks} & main_chunks
    assert second["chunks_skipped"] == len(shared) > 0
    assert second["bytes_skipped"] == sum(chunk_bytes[d] for d in shared)
    text = invoke("sync", store.url, str(tmp_path / "third"), "--all", store=False).stdout
    assert "already" not in text  # a new store had nothing already
    assert f"copied 3 snapshots, {len(chunk_bytes)} chunks" in text


def test_sync_and_verify_progress_totals_match_what_they_count(store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"model": weights(1)})
    store.save({"model": weights(2)})
    for run in (
        lambda p, t: ckpt.sync(store, ckpt.init(str(tmp_path / "copy")), progress=p, progress_total=t),
        lambda p, t: store.verify(progress=p, progress_total=t),
    ):
        totals: list[int] = []
        done: list[int] = []
        run(done.append, totals.append)
        assert len(totals) == 1 and totals[0] == sum(done) > 0


def test_sync_selected_revs(
    invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot], tmp_path: Path
) -> None:
    dst = tmp_path / "copy"
    data = parse(invoke("sync", store.url, str(dst), "lora", "best", "--init", "--json", store=False))
    copy = ckpt.open(str(dst))
    assert set(copy.branches()) == {"lora"} and set(copy.tags()) == {"best"}
    # lora's history and its adapter base came along
    assert {s.id for s in copy.snapshots()} >= {family[k].id for k in ("l", "i2", "i1", "c", "b", "a")}
    assert data["refs"] == ["refs/heads/lora", "refs/tags/best"]


@pytest.mark.s3
def test_sync_local_s3_round_trip(
    invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot], s3_server: dict[str, Any], tmp_path: Path
) -> None:
    url = f"s3://ckpt-test/{uuid.uuid4().hex[:10]}"
    dst_opts = _opts("--dst-option", s3_server)
    first = parse(invoke("sync", store.url, url, "--all", "--init", *dst_opts, "--json", store=False))
    assert first["snapshots"] == len({s.id for s in family.values()}) and first["chunks"] > 0
    remote = ckpt.open(url, **s3_server)
    release = next(n for n, t in store.tags().items() if t.frozen)
    assert remote.tags()[release].frozen
    assert remote.branches() == store.branches()
    assert remote.verify().ok

    # a new snapshot that shares most of its chunks: only the missing ones travel
    sd = dict(store.load("main")["model"])
    sd["layers.1.w"] = sd["layers.1.w"] + np.float32(1)
    new = store.save({"model": sd, "step": 300}, step=300)
    expected = diff(store, "main~1", "main", norms=False)
    added = {d for d in store.table(new.id).chunk_digests() if not remote.backend.exists(f"chunks/{d[:2]}/{d}")}
    sizes = {e.path.rsplit("/", 1)[-1]: e.size for e in store.backend.list("chunks/")}
    second = parse(invoke("sync", store.url, url, "--all", *dst_opts, "--json", store=False))
    assert second["snapshots"] == 1
    assert second["chunks"] == expected.added_chunks == len(added) > 0
    assert second["bytes"] == sum(sizes[d] for d in added)  # each object as stored (compressed here)
    assert second["chunks_skipped"] > 0
    assert second["refs"] == ["refs/heads/main"]
    assert remote.branches()["main"] == new.id

    # the frozen release stays frozen on S3
    result = invoke("--store", url, *_opts("--store-option", s3_server), "tag", "-d", release, code=1, store=False)
    assert "frozen" in result.stderr
    assert remote.tags()[release].frozen

    # a branch that diverged on S3 is reported, not overwritten; exit status 1
    theirs = remote.save({"model": weights(7)}, branch="retry", message="pushed by someone else")
    store.save({"model": weights(8)}, branch="retry", message="mine")
    result = invoke("sync", store.url, url, "retry", *dst_opts, store=False, code=1)
    assert "conflict: branch 'retry'" in result.stderr and "left alone" in result.stderr
    assert remote.branches()["retry"] == theirs.id
    data = parse(invoke("sync", store.url, url, "retry", *dst_opts, "--json", store=False, code=1))
    assert len(data["conflicts"]) == 1 and "retry" in data["conflicts"][0]

    # back down from S3 into a fresh local store: one release, verified, still frozen
    back = tmp_path / "back"
    src_opts = _opts("--src-option", s3_server)
    down = parse(invoke("sync", url, str(back), release, "--init", *src_opts, "--json", store=False))
    assert down["refs"] == [f"refs/tags/{release}"]
    local = ckpt.open(str(back))
    assert local.tags()[release].frozen and local.verify().ok
    assert local.resolve(release).id == family["c"].id
    # the S3 store is readable through --store and --store-option too
    log = parse(invoke("--store", url, *_opts("--store-option", s3_server), "log", "--json", store=False))
    assert log[0]["id"] == new.id


@pytest.mark.s3
def test_aws_endpoint_url_is_honoured(invoke: Invoke, store: ckpt.Store, s3_server: dict[str, Any]) -> None:
    store.save({"w": np.arange(10, dtype=np.float32)})
    url = f"s3://ckpt-test/{uuid.uuid4().hex[:10]}"
    env = {"AWS_ENDPOINT_URL": s3_server["endpoint_url"]}
    fresh = ["--dst-option", "skip_instance_cache=true"]
    data = parse(invoke("sync", store.url, url, "main", "--init", *fresh, "--json", env=env, store=False))
    assert data["snapshots"] == 1
    assert ckpt.open(url, **s3_server).branches() == store.branches()
