"""What an import reads of a folder: the whole tree, links only inside it, nothing it cannot prove safe."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ckpt
from ckpt.errors import BackendError, RecordError, UnsupportedStateError
from ckpt.interop import LAYOUT_KEY, export, import_folder, plan_import
from ckpt.interop._folders import FolderFile, read_file, scan_folder


class PathLike:
    """An ``os.PathLike`` that is not a ``pathlib.Path`` (what users' own path types look like)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return str(self.path)


def tree(path: Path) -> dict[str, bytes]:
    """Every regular file under ``path`` (links followed), by relative path."""
    out = {}
    for folder, _, names in os.walk(path, followlinks=True):
        for name in names:
            p = Path(folder, name)
            out[p.relative_to(path).as_posix()] = p.read_bytes()
    return dict(sorted(out.items()))


def st_folder(root: Path) -> Path:
    """A sentence-transformers-like folder: weights at the top and in a subfolder, hidden and nested files."""
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((64, 16)).astype(np.float32)
    root.mkdir(parents=True)
    save_file(
        {"embeddings.weight": shared, "encoder.w": rng.standard_normal((16, 16)).astype(np.float32)},
        str(root / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (root / "2_Dense").mkdir()
    save_file(
        {"linear.weight": shared, "linear.bias": np.zeros(64, np.float32)},
        str(root / "2_Dense" / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (root / "2_Dense" / "config.json").write_text('{"in_features": 16, "out_features": 64}')
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    (root / "modules.json").write_text('[{"idx": 0, "path": ""}, {"idx": 1, "path": "1_Pooling"}]\n')
    (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (root / "config.json").write_text('{"_name_or_path": "org/tiny-st"}')
    return root


def test_every_file_of_the_tree_round_trips_and_subfolder_weights_are_tensors(
    local_store: ckpt.Store, tmp_path: Path
) -> None:
    src = st_folder(tmp_path / "st")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # version control: left out
    snap = import_folder(local_store, PathLike(src))
    assert snap.model == "tiny-st" and snap.metadata[LAYOUT_KEY] == ["2_Dense/model.safetensors", "model.safetensors"]

    state = local_store.load("main", framework="numpy")
    assert list(state) == ["model", "2_Dense"]
    assert np.array_equal(state["2_Dense"]["linear.weight"], state["model"]["embeddings.weight"])
    table = local_store.table("main")
    same = table.tensors["2_Dense/linear.weight"].chunks == table.tensors["model/embeddings.weight"].chunks
    assert same  # one copy in the store
    assert ".gitattributes" in local_store.files("main") and "1_Pooling/config.json" in local_store.files("main")

    out = tmp_path / "out"
    result = export(local_store, "main", PathLike(out))
    expected = {k: v for k, v in tree(src).items() if not k.startswith(".git/")}
    assert tree(out) == expected
    assert result.path == out and len(result.written) == len(expected)
    assert local_store.verify().ok


def test_git_folders_and_stores_inside_are_left_out_and_listed(tmp_path: Path) -> None:
    src = st_folder(tmp_path / "st")
    (src / ".git" / "objects").mkdir(parents=True)
    ckpt.init(str(src / ".ckpt"))  # a store inside the folder: never imported into itself
    (src / "sub" / ".git").mkdir(parents=True)
    plan = plan_import(src)
    assert dict(plan.skipped) == {
        ".ckpt": "a ckpt store",
        ".git": "version control (.git)",
        "sub/.git": "version control (.git)",
    }
    assert not any(f.path.startswith((".ckpt/", ".git/")) for f in plan.files)
    store = ckpt.open(str(src / ".ckpt"))
    import_folder(store, src)
    assert not any(p.startswith((".git/", ".ckpt/safetensors/.ckpt")) for p in store.files("main"))
    assert store.verify().ok


def test_a_ckpt_folder_that_is_not_a_store_is_refused(local_store: ckpt.Store, tmp_path: Path) -> None:
    src = st_folder(tmp_path / "st")
    (src / ".ckpt").mkdir()
    (src / ".ckpt" / "notes.txt").write_text("x")
    with pytest.raises(RecordError, match=r"\.ckpt/ are ckpt's own") as e:
        import_folder(local_store, src)
    assert "exclude" in (e.value.hint or "")
    import_folder(local_store, src, exclude=[".ckpt/"])
    assert local_store.verify().ok


def test_exclude_patterns_and_skipped_pickles_are_listed(local_store: ckpt.Store, tmp_path: Path) -> None:
    src = st_folder(tmp_path / "st")
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    (src / "training_args.bin").write_bytes(b"\x80\x04not read")
    (src / "onnx").mkdir()
    (src / "onnx" / "model.onnx").write_bytes(b"onnx")
    (src / "tf_model.h5").write_bytes(b"h5")
    with pytest.raises(UnsupportedStateError, match=r"pytorch_model\.bin, training_args\.bin"):
        import_folder(local_store, src)
    plan = plan_import(src, skip_pickles=True, exclude=["onnx/", "*.h5"])
    assert plan.skipped == (
        ("onnx", "excluded by 'onnx/'"),
        ("pytorch_model.bin", "a pickle: never loaded (it can run code)"),
        ("tf_model.h5", "excluded by '*.h5'"),
        ("training_args.bin", "a pickle: never loaded (it can run code)"),
    )
    import_folder(local_store, src, skip_pickles=True, exclude=["onnx/", "*.h5"])
    files = local_store.files("main")
    assert not any(p.endswith((".bin", ".onnx", ".h5")) for p in files)
    only_pickles = tmp_path / "pickles"
    only_pickles.mkdir()
    (only_pickles / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(RecordError, match=r"no \.safetensors file once the pickle file is left out"):
        import_folder(local_store, only_pickles, skip_pickles=True)
    assert local_store.verify().ok


# -- symbolic links ----------------------------------------------------------------------------------


def test_links_inside_the_folder_are_followed(local_store: ckpt.Store, tmp_path: Path) -> None:
    src = st_folder(tmp_path / "st")
    (src / "tokenizer_config.json").symlink_to("1_Pooling/config.json")
    (src / "3_Copy").symlink_to("1_Pooling", target_is_directory=True)
    import_folder(local_store, src)
    export(local_store, "main", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(src)
    assert not (tmp_path / "out" / "tokenizer_config.json").is_symlink()  # written as a regular file
    assert local_store.verify().ok


@pytest.mark.parametrize("target", ["secret", "/proc/self/environ", "../st-sibling/config.json"])
def test_links_leaving_the_folder_are_refused_naming_them(local_store: ckpt.Store, tmp_path: Path, target: str) -> None:
    (tmp_path / "secret").write_text("AWS_SECRET_ACCESS_KEY=...")
    src = st_folder(tmp_path / "st")
    (tmp_path / "st-sibling").mkdir()
    (tmp_path / "st-sibling" / "config.json").write_text("{}")
    link = src / "README.md"
    link.symlink_to(tmp_path / target if target == "secret" else target)
    with pytest.raises(RecordError, match=r"README\.md is a symbolic link to .*outside the folder") as e:
        import_folder(local_store, src)
    assert "cp -L" in (e.value.hint or "")
    assert local_store.branches() == {}


def test_dangling_links_and_loops_are_errors(local_store: ckpt.Store, tmp_path: Path) -> None:
    src = st_folder(tmp_path / "st")
    (src / "tokenizer.json").symlink_to("blobs-gone/abc")
    with pytest.raises(
        RecordError, match=r"tokenizer\.json is a symbolic link to blobs-gone/abc, which does not exist"
    ):
        import_folder(local_store, src)
    (src / "tokenizer.json").unlink()
    (src / "1_Pooling" / "loop").symlink_to("..", target_is_directory=True)
    with pytest.raises(RecordError, match="loop"):
        import_folder(local_store, src)
    assert local_store.branches() == {}


def hub_cache(root: Path) -> Path:
    """A hub cache as huggingface_hub lays it out: blobs by hash, snapshots of links into ../../blobs."""
    repo = root / "models--org--tiny-st"
    src = st_folder(root / "plain")
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    snap = repo / "snapshots" / "0123abcd"
    for rel, data in tree(src).items():
        blob = repo / "blobs" / f"{abs(hash(rel)):x}"
        blob.write_bytes(data)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    shutil.rmtree(src)
    return snap


def test_a_hub_cache_snapshot_imports_through_its_blob_links(local_store: ckpt.Store, tmp_path: Path) -> None:
    snap_dir = hub_cache(tmp_path / "hub")
    assert (snap_dir / "config.json").is_symlink()
    snap = import_folder(local_store, snap_dir)
    assert snap.model == "tiny-st"
    export(local_store, "main", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(snap_dir)
    assert local_store.verify().ok


def test_a_hub_cache_with_a_missing_blob_is_an_error(local_store: ckpt.Store, tmp_path: Path) -> None:
    snap_dir = hub_cache(tmp_path / "hub")
    (snap_dir / "modules.json").resolve().unlink()  # an interrupted download
    with pytest.raises(RecordError, match=r"modules\.json is a symbolic link to \.\./\.\./blobs/.*does not exist") as e:
        import_folder(local_store, snap_dir)
    assert "download" in (e.value.hint or "")
    (snap_dir / "modules.json").unlink()
    (snap_dir / "modules.json").symlink_to("../../../../secret")  # leaves the repository: refused
    (tmp_path / "secret").write_text("x")
    with pytest.raises(RecordError, match="outside the folder"):
        import_folder(local_store, snap_dir)
    assert local_store.branches() == {}


def test_a_link_swapped_in_after_the_walk_is_not_followed(tmp_path: Path) -> None:
    src = st_folder(tmp_path / "st")
    (tmp_path / "secret").write_text("password")
    scan = scan_folder(src)
    readme = next(f for f in scan.files if f.path == "modules.json")
    (src / "modules.json").unlink()
    (src / "modules.json").symlink_to(tmp_path / "secret")
    with pytest.raises(RecordError, match="became a symbolic link"):
        read_file(readme)
    (src / "modules.json").unlink()
    (src / "1_Pooling").rename(tmp_path / "elsewhere")
    (src / "1_Pooling").symlink_to(tmp_path / "elsewhere")  # a folder on the way, swapped for a link
    pooling = next(f for f in scan.files if f.path == "1_Pooling/config.json")
    with pytest.raises(RecordError, match="became a symbolic link"):
        read_file(pooling)


def test_size_limits_apply_while_reading_not_from_stat() -> None:
    environ = FolderFile("environ", Path("/proc/self"), "environ", size=0)  # procfs says 0 bytes
    assert os.stat("/proc/self/environ").st_size == 0
    with pytest.raises(RecordError, match="more than 4 bytes"):
        read_file(environ, limit=4)


def test_unreadable_files_and_odd_files_are_errors_naming_them(local_store: ckpt.Store, tmp_path: Path) -> None:
    drop_caches = FolderFile("drop_caches", Path("/proc/sys/vm"), "drop_caches", size=0)  # mode 0200, even for root
    with pytest.raises(BackendError, match="drop_caches") as e:
        read_file(drop_caches)
    assert e.value.hint
    src = st_folder(tmp_path / "st")
    os.mkfifo(src / "pipe")
    with pytest.raises(RecordError, match="pipe is a FIFO, not a regular file"):  # and never blocks on it
        import_folder(local_store, src)
    (src / "pipe").unlink()
    bad = os.fsencode(src) + b"/caf\xe9.txt"  # Latin-1 bytes: not a UTF-8 name
    with open(bad, "wb") as f:
        f.write(b"x")
    with pytest.raises(RecordError, match="not valid UTF-8"):
        import_folder(local_store, src)
    import_folder(local_store, src, exclude=["caf*"], branch="excluded")  # left out: never judged
    os.unlink(bad)
    (src / "a\\b.txt").write_text("x")  # a backslash: the store would read it as a/b.txt
    with pytest.raises(RecordError, match="backslash"):
        import_folder(local_store, src)
    (src / "a\\b.txt").unlink()
    (src / "step:100.json").write_text("{}")  # a colon is an ordinary character here
    snap = import_folder(local_store, src)
    assert "step:100.json" in local_store.files(snap.id)
    assert local_store.verify().ok


# -- malformed inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "index",
    [
        {"weight_map": {"embeddings.weight": ["model.safetensors"]}},
        {"weight_map": ["model.safetensors"]},
        [1, 2],
        {"weight_map": {"embeddings.weight": None}},
    ],
)
def test_a_malformed_index_is_a_record_error_with_a_hint(local_store: ckpt.Store, tmp_path: Path, index: Any) -> None:
    src = st_folder(tmp_path / "st")
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(RecordError) as e:
        import_folder(local_store, src)
    assert e.value.hint
    (src / "model.safetensors.index.json").write_text("[" * 100_000)
    with pytest.raises(RecordError, match="not valid JSON"):
        import_folder(local_store, src)


def test_an_lfs_pointer_is_named_as_one(local_store: ckpt.Store, tmp_path: Path) -> None:
    src = st_folder(tmp_path / "st")
    (src / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db\n"
        "size 90868376\n"
    )
    with pytest.raises(RecordError, match=r"model\.safetensors is a Git LFS pointer") as e:
        import_folder(local_store, src)
    assert "git lfs pull" in (e.value.hint or "")


def test_paths_may_be_any_path_like(local_store: ckpt.Store, tmp_path: Path) -> None:
    src = st_folder(tmp_path / "st")
    lone = src / "model.safetensors"
    for given in (lone, PathLike(lone), str(lone)):
        snap = import_folder(local_store, given, branch="lone")
        assert snap.model == "st"  # a generic file name: the folder's name
    export(local_store, "lone", PathLike(tmp_path / "o"))
    assert load_file(str(tmp_path / "o" / "model.safetensors")).keys() == load_file(str(lone)).keys()
    assert scan_folder(PathLike(src)).root == src.resolve()
