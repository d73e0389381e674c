"""An export owns its output: exactly its weight set, written beside the folder and renamed into place, checked
before anything is written, never through a link, every failure a ``CkptError`` that leaves the folder as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import ckpt
import ckpt.interop._safetensors_header
from ckpt.errors import CorruptChunkError, RecordError
from ckpt.interop import export, import_folder
from ckpt.store import _layout as layout


def weights(seed: int, n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layers.{i}.w": rng.standard_normal((32, 32)).astype(np.float32) for i in range(n)}  # 4 KiB each


def listing(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def loaded(folder: Path) -> dict[str, np.ndarray]:
    """What ``from_pretrained`` would load: ``model.safetensors`` if present, else the shards of the index."""
    if (folder / "model.safetensors").exists():
        return load_file(str(folder / "model.safetensors"))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(folder / shard)))
    assert set(out) == set(index["weight_map"])
    return out


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def no_leftovers(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if ".ckpt-" in p.name] == []


def test_sharded_over_single_and_more_shards_over_fewer_leave_only_the_new_weights(
    local_store: ckpt.Store, tmp_path: Path
) -> None:
    one, two, three = weights(1), weights(2), weights(3)
    local_store.save({"model": one}, branch="one")
    local_store.save({"model": two}, branch="two")
    local_store.save({"model": three}, branch="three")
    out = tmp_path / "out"
    export(local_store, "one", out)  # model.safetensors
    (out / "notes.md").write_text("mine")
    (out / "pytorch_model.bin").write_bytes(b"\x80\x04not ours")  # not a file the export owns
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("step 1")
    (out / "link.txt").symlink_to("notes.md")

    result = export(local_store, "two", out, shard_size="10KB", force=True)  # 3 shards
    assert [p.name for p in result.removed] == ["model.safetensors"]
    assert same(loaded(out), two)
    result = export(local_store, "three", out, shard_size="5KB", force=True)  # 6 shards over 3
    assert sorted(p.name for p in result.removed) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert same(loaded(out), three)
    result = export(local_store, "one", out, shard_size="10KB", force=True)  # 3 shards over 6
    assert sorted(p.name for p in result.removed) == [f"model-0000{i}-of-00006.safetensors" for i in range(1, 7)]
    assert same(loaded(out), one)
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]

    assert (out / "notes.md").read_text() == "mine" and (out / "runs" / "log.txt").read_text() == "step 1"
    assert (out / "pytorch_model.bin").read_bytes() == b"\x80\x04not ours"
    assert (out / "link.txt").is_symlink() and os.readlink(out / "link.txt") == "notes.md"
    no_leftovers(tmp_path)
    import_folder(local_store, out, branch="again", skip_pickles=True)  # ckpt's own import takes it as it is
    assert same(local_store.load("again", framework="numpy")["model"], one)
    assert local_store.verify().ok


def test_a_stale_ckpt_state_json_is_removed_but_a_foreign_one_kept(local_store: ckpt.Store, tmp_path: Path) -> None:
    local_store.save({"model": weights(1), "step": 3}, branch="train")
    local_store.save({"model": weights(2)}, branch="plain")
    out = tmp_path / "out"
    export(local_store, "train", out)
    assert (out / "state.json").exists()
    result = export(local_store, "plain", out, force=True)
    assert sorted(p.name for p in result.removed) == ["state.json"]
    (out / "state.json").write_text('{"user": "data"}')
    result = export(local_store, "plain", out, force=True)
    assert result.removed == () and (out / "state.json").read_text() == '{"user": "data"}'


def test_links_in_the_target_are_replaced_never_written_through(local_store: ckpt.Store, tmp_path: Path) -> None:
    local_store.save({"model": weights(1)}, files={"config.json": b"{}", "1_Pooling/config.json": b"{}"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").symlink_to(outside / "config.json")
    (out / "1_Pooling").symlink_to(outside, target_is_directory=True)
    (out / "model.safetensors").symlink_to(outside / "config.json")
    result = export(local_store, "main", out, force=True)
    assert (outside / "config.json").read_text() == "precious"  # nothing written through a link
    assert sorted(os.listdir(outside)) == ["config.json"]
    assert not (out / "config.json").is_symlink() and (out / "config.json").read_text() == "{}"
    assert not (out / "1_Pooling").is_symlink() and (out / "1_Pooling" / "config.json").read_text() == "{}"
    assert [p.name for p in result.removed] == ["1_Pooling"]
    assert same(load_file(str(out / "model.safetensors")), weights(1))


def test_a_failure_half_way_leaves_the_folder_as_it_was(local_store: ckpt.Store, tmp_path: Path) -> None:
    local_store.save({"model": weights(1)}, branch="old")
    snap = local_store.save({"model": weights(2)}, branch="new")
    out = tmp_path / "out"
    export(local_store, "old", out)
    (out / "notes.md").write_text("mine")
    before = listing(out)
    digest = local_store.table(snap.id).tensors["model/layers.4.w"].chunks[0]
    path = Path(local_store.backend.local_path(layout.chunk_path(digest)))  # type: ignore[arg-type]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError):
        export(local_store, "new", out, shard_size="10KB", force=True)
    assert listing(out) == before
    no_leftovers(tmp_path)
    with pytest.raises(CorruptChunkError):
        export(local_store, "new", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    no_leftovers(tmp_path)


def test_a_full_disk_is_a_backend_error_and_changes_nothing(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG), as a full disk (ENOSPC) would."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    store.save({"model": weights(1, n=20)}, branch="big")
    store.save({"model": weights(2, n=1)}, branch="small")
    export(store, "small", tmp_path / "out")
    before = listing(tmp_path / "out")
    script = textwrap.dedent(
        f"""
        import resource
        import ckpt
        from ckpt.errors import BackendError
        from ckpt.interop import export
        store = ckpt.open({str(tmp_path / "store")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        try:
            export(store, "big", {str(tmp_path / "out")!r}, force=True)
        except BackendError as e:
            print("BackendError|", e, "|", e.hint)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.startswith("BackendError| writing "), (run.stdout, run.stderr)
    assert "ulimit" in run.stdout
    assert listing(tmp_path / "out") == before
    no_leftovers(tmp_path)


def test_what_readers_refuse_is_refused_before_writing(
    local_store: ckpt.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.save({"model": {"z": np.ones(3, np.complex128), "w": np.ones(2, np.float32)}}, branch="c128")
    with pytest.raises(RecordError, match="C128, which the safetensors format does not have") as e:
        export(local_store, "c128", tmp_path / "a")
    assert "view_as_real" in (e.value.hint or "")
    assert not (tmp_path / "a").exists()

    local_store.save({"model": weights(1, n=40)}, branch="many")
    monkeypatch.setattr(ckpt.interop._safetensors_header, "MAX_HEADER_SIZE", 1000)  # the real limit is 100 MB
    with pytest.raises(RecordError, match="over the 1000-byte limit") as e:
        export(local_store, "many", tmp_path / "b")
    assert "shard size" in (e.value.hint or "")
    assert not (tmp_path / "b").exists()
    export(local_store, "many", tmp_path / "b", shard_size="20KB")  # smaller files fit
    no_leftovers(tmp_path)


def test_a_file_that_is_also_a_folder_is_refused_before_writing(local_store: ckpt.Store, tmp_path: Path) -> None:
    """An attached file ``model`` beside ``model/config.json`` cannot both be written: refused naming both, before
    anything is written (the OS used to refuse midway with "File exists")."""
    local_store.save({"model": weights(1)}, branch="clash", files={"cfg": b"{}", "cfg/config.json": b"{}"})
    with pytest.raises(RecordError, match=r"'cfg' would be both a file and the folder of 'cfg/config\.json'"):
        export(local_store, "clash", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


@pytest.mark.parametrize(
    "name",
    [
        "a" * 300 + ".json",  # a component over the 255 bytes file systems take
        "/".join(["d"] * 2000) + "/x",  # 2001 levels deep
        "/".join(["d" * 200] * 30),  # a path over 4096 bytes
    ],
)
def test_names_too_long_for_a_filesystem_are_refused_before_anything_is_stored(
    local_store: ckpt.Store, tmp_path: Path, name: str
) -> None:
    # the one rule for attached file paths refuses at save what no export could write back
    with pytest.raises(RecordError) as e:
        local_store.save({"model": weights(1, n=1)}, files={name: b"{}"})
    assert e.value.hint
    assert local_store.branches() == {}
    assert local_store.verify().ok


def test_files_appearing_during_the_export_are_kept(local_store: ckpt.Store, tmp_path: Path) -> None:
    local_store.save({"model": weights(1)})
    out = tmp_path / "out"
    export(local_store, "main", out)

    def meanwhile(_: int) -> None:  # another process writes into the folder while the export runs
        (out / "written-meanwhile.txt").write_text("keep me")

    export(local_store, "main", out, force=True, progress=meanwhile)
    assert (out / "written-meanwhile.txt").read_text() == "keep me"
    no_leftovers(tmp_path)


def test_exporting_into_the_current_folder_and_through_a_link(
    local_store: ckpt.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.save({"model": weights(1)}, branch="one")
    local_store.save({"model": weights(2)}, branch="two")
    out = tmp_path / "out"
    export(local_store, "one", out)
    monkeypatch.chdir(out)
    export(local_store, "two", ".", force=True)
    assert same(load_file("model.safetensors"), weights(2))  # this process sees the new folder
    (tmp_path / "alias").symlink_to(out, target_is_directory=True)
    export(local_store, "one", tmp_path / "alias", force=True)
    assert (tmp_path / "alias").is_symlink()  # the link you named stays, the folder it names is written
    assert same(load_file(str(out / "model.safetensors")), weights(1))


def test_a_folder_holding_a_store_or_inside_one_is_refused(local_store: ckpt.Store, tmp_path: Path) -> None:
    local_store.save({"model": weights(1)})
    project = tmp_path / "project"
    project.mkdir()
    inner = ckpt.init(str(project / ".ckpt"))
    with pytest.raises(RecordError, match=r"\.ckpt is a ckpt store"):
        export(local_store, "main", project, force=True)
    with pytest.raises(RecordError, match="inside the ckpt store"):
        export(local_store, "main", project / ".ckpt" / "out")
    with pytest.raises(RecordError, match="is a ckpt store"):
        export(local_store, "main", project / ".ckpt", force=True)
    assert inner.verify().ok and sorted(os.listdir(project)) == [".ckpt"]


def test_an_attached_file_named_as_the_weights_is_refused_not_dropped(tmp_path: Path) -> None:
    """The export writes model.safetensors from the tensors; an attached file of that name would be left out
    without a word, so the export refuses and names it (the bytes stay readable with store.files)."""
    store = ckpt.init(tmp_path / "s")
    snap = store.save({"model": {"w": np.ones(4, dtype=np.float32)}}, files={"model.safetensors": b"JUNK"})
    with pytest.raises(ckpt.RecordError, match=r"model\.safetensors"):
        ckpt.export(store, snap.id, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert store.files(snap.id)["model.safetensors"] == b"JUNK"
