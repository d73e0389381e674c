"""``ckpt repair --from``: damage found by ``ckpt verify`` put back from a good copy."""

from __future__ import annotations

from pathlib import Path

import ckpt
from ckpt.store import _layout as layout

from .conftest import Invoke, parse


def _flip_last_bit(store: ckpt.Store, path: str) -> None:
    data = bytearray(store.backend.read(path))
    data[-1] ^= 1
    store.backend.replace(path, bytes(data))


def test_verify_points_at_repair_and_repair_fixes(
    invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot], tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    invoke("sync", store.url, str(replica), "--all", "--init", "--json", store=False)
    digest = store.table("main").tensors["model/layers.0.w"].chunks[0]
    _flip_last_bit(store, layout.chunk_path(digest))

    result = invoke("verify", code=1)
    assert "ckpt repair --from" in result.stderr

    result = invoke("repair", "--from", str(replica))
    assert result.stdout.startswith(f"repaired corrupt chunk {digest[:16]}")
    assert "1 object repaired" in result.stdout and "the store verifies clean" in result.stdout
    assert invoke("verify").exit_code == 0

    data = parse(invoke("repair", "--from", str(replica), "--json"))
    assert data["ok"] is True and data["repaired"] == [] and data["bytes_copied"] == 0
    assert data["source"] == ckpt.open(str(replica)).url and data["verify"]["damage"] == []


def test_repair_reports_what_it_cannot_fix(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    import numpy as np

    store.save({"w": np.ones(4)})
    empty = ckpt.init(str(tmp_path / "empty"))
    digest = store.table("main").tensors["w"].chunks[0]
    store.backend.delete([layout.chunk_path(digest)])

    data = parse(invoke("repair", "--from", empty.url, "--json", code=1))
    assert data["ok"] is False and data["repaired"] == []
    (left,) = data["unrepaired"]
    assert (left["kind"], left["object"], left["digest"]) == ("missing", "chunk", digest)
    assert "not repaired" in left["message"]
    text = invoke("repair", "main", "--from", empty.url, code=1).stdout
    assert text.startswith("unrepaired missing chunk") and "1 problem remain" in text


def test_repair_without_a_source_fixes_only_what_needs_none(
    invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]
) -> None:
    head = store.resolve("instruct").id
    _flip_last_bit(store, layout.snapshot_path(head))  # needs a good copy
    data = parse(invoke("repair", "--json", code=1))
    assert data["source"] is None and data["ok"] is False
    assert "no good copy was given" in data["unrepaired"][0]["message"]


def test_repair_of_a_revision_whose_record_is_damaged(
    invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot], tmp_path: Path
) -> None:
    replica = ckpt.init(str(tmp_path / "replica"), chunk_size=store.chunk_size)
    ckpt.sync(store, replica)
    head = store.resolve("instruct").id
    _flip_last_bit(store, layout.snapshot_path(head))
    assert invoke("show", "instruct~1", code=1).stderr.startswith("error:")

    data = parse(invoke("repair", "instruct~1", "--from", replica.url, "--json"))

    assert data["ok"] is True and data["unrepaired"] == []
    assert [(d["kind"], d["object"], d["digest"]) for d in data["repaired"]] == [("corrupt", "snapshot", head)]
    assert data["bytes_copied"] > 0
    assert invoke("verify", "--all").exit_code == 0


def test_repair_from_a_store_that_does_not_exist(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    result = invoke("repair", "--from", str(tmp_path / "nowhere"), code=1)
    assert result.stderr.startswith("error:") and "nowhere" in result.stderr
