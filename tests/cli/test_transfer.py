"""``import`` and ``restore`` from the command line: byte-identical round trips, refusals, options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ckpt

from .conftest import Invoke, parse


def hf_folder(root: Path, *, shards: int = 3, seed: int = 0, name: str = "org/tiny-hf") -> Path:
    """A folder as save_pretrained writes it: shards, index, config and tokenizer files."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors: dict[str, np.ndarray] = {
            f"model.layers.{i}.mlp.weight": rng.standard_normal((48, 32)).astype(np.float32),
            f"model.layers.{i}.norm.weight": rng.standard_normal(32).astype(np.float16),
            f"model.layers.{i}.ids": np.arange(7, dtype=np.int64),
        }
        save_file(tensors, str(root / fname), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = fname
            total += v.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (root / "config.json").write_text(json.dumps({"_name_or_path": name, "hidden_size": 32}))
    (root / "tokenizer.json").write_text('{"version": "1.0", "model": {"vocab": {"a": 0}}}')
    (root / "tokenizer_config.json").write_text("{}")
    return root


def same_files(a: Path, b: Path) -> None:
    names_a = sorted(p.name for p in a.iterdir())
    names_b = sorted(p.name for p in b.iterdir())
    assert names_a == names_b
    for name in names_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_import_and_restore_sharded_folder_byte_identical(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    src = hf_folder(tmp_path / "hf")
    out = invoke("import", str(src)).stdout
    snap = store.resolve("main")
    assert out.strip() == (
        f"imported {src} as {snap.short_id} on main: 9 tensors ({snap.tensor_bytes / 1024:.1f} KiB), import, "
        "model tiny-hf"
    )
    assert snap.model == "tiny-hf" and snap.message == "import hf"
    result = invoke("restore", "main", "--to", str(tmp_path / "out"))
    assert result.stdout.strip().endswith(f"restored {snap.short_id} to {tmp_path / 'out'}: 7 files")
    same_files(src, tmp_path / "out")


def test_export_is_restore_to_files_and_matches_the_python_export(
    invoke: Invoke, store: ckpt.Store, tmp_path: Path
) -> None:
    """`ckpt export REV --to DIR` is `ckpt restore REV --to DIR`, and both write what `ckpt.export` writes."""
    src = hf_folder(tmp_path / "hf")
    invoke("import", str(src))
    by_restore = parse(invoke("restore", "main", "--to", str(tmp_path / "a"), "--json"))
    by_export = parse(invoke("export", "main", "--to", str(tmp_path / "b"), "--json"))
    assert [f["size"] for f in by_export["files"]] == [f["size"] for f in by_restore["files"]]
    assert [Path(f["path"]).name for f in by_export["files"]] == [Path(f["path"]).name for f in by_restore["files"]]
    written = ckpt.export(store, "main", tmp_path / "c").written
    assert [p.name for p in written] == [Path(f["path"]).name for f in by_export["files"]]
    for folder in ("a", "b", "c"):
        same_files(src, tmp_path / folder)
    assert "ckpt restore REV --to DIR" in invoke("export", "--help").stdout
    said = invoke("export", "main", "--to", str(tmp_path / "d")).stdout.strip()
    assert said.endswith(f"exported {store.resolve('main').short_id} to {tmp_path / 'd'}: 7 files")


def test_import_options_and_json(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    base = parse(invoke("import", str(hf_folder(tmp_path / "base")), "--model", "base", "--json"))
    assert base["relation"] == "import" and base["model"] == "base"
    assert base["refs"] == [{"kind": "branch", "name": "main"}]
    assert base["tensor_count"] == 9 and "safetensors_layout" in base["metadata"]
    tuned = parse(
        invoke(
            "import",
            str(hf_folder(tmp_path / "tuned", seed=1)),
            "--branch",
            "instruct",
            "--model",
            "instruct",
            "--parent",
            "main",
            "--relation",
            "finetune",
            "-m",
            "sft run 3",
            "--json",
        )
    )
    assert tuned["parents"] == [base["id"]] and tuned["relation"] == "finetune"
    assert tuned["message"] == "sft run 3" and tuned["refs"] == [{"kind": "branch", "name": "instruct"}]
    # a second import onto the branch continues it
    again = parse(invoke("import", str(hf_folder(tmp_path / "again", seed=2)), "--branch", "instruct", "--json"))
    assert again["parents"] == [tuned["id"]] and again["relation"] == "continue"
    invoke("import", str(tmp_path / "base"), "--relation", "sideways", code=2)


def test_import_a_single_file(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    f = tmp_path / "weights.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(f))
    snap = parse(invoke("import", str(f), "--json"))
    assert snap["model"] == "weights" and snap["tensor_count"] == 1
    invoke("restore", "main", "--to", str(tmp_path / "out"))
    assert (tmp_path / "out" / "weights.safetensors").read_bytes() == f.read_bytes()


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl"])
def test_import_refuses_pickles(invoke: Invoke, store: ckpt.Store, tmp_path: Path, suffix: str) -> None:
    folder = hf_folder(tmp_path / "hf", shards=1)
    (folder / f"pytorch_model{suffix}").write_bytes(b"\x80\x04not really a pickle")
    result = invoke("import", str(folder), code=1)
    assert result.stderr.startswith("error: refusing the pickle-based file pytorch_model" + suffix)
    assert "run arbitrary code" in result.stderr and "hint: " in result.stderr and "--skip-pickles" in result.stderr
    assert store.branches() == {}
    lone = tmp_path / f"model{suffix}"
    lone.write_bytes(b"x")
    assert "pickle" in invoke("import", str(lone), code=1).stderr


def test_import_errors(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    assert "no such file or folder" in invoke("import", str(tmp_path / "missing"), code=1).stderr
    (tmp_path / "empty").mkdir()
    assert "holds no .safetensors file" in invoke("import", str(tmp_path / "empty"), code=1).stderr


def test_restore_refuses_a_non_empty_folder_without_force(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    src = hf_folder(tmp_path / "hf", shards=2)
    invoke("import", str(src))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("restore", "main", "--to", str(out), code=1)
    assert result.stderr.startswith("error: ") and "--force" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    data = parse(invoke("restore", "main", "--to", str(out), "--force", "--json"))
    assert data["snapshot"] == store.resolve("main").id and data["to"] == str(out)
    assert {Path(f["path"]).name for f in data["files"]} == {p.name for p in src.iterdir()}
    for f in data["files"]:
        assert Path(f["path"]).stat().st_size == f["size"]
    assert (out / "keep.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    invoke("restore", "main", "--to", str(tmp_path / "afile"), code=2)  # click: a file is not a folder
    result = invoke("restore", "main", "--to", str(tmp_path / "afile" / "sub"), code=1)  # the OS refuses
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_restore_training_snapshot_shards_and_state(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sd = {f"layers.{i}.w": rng.standard_normal((32, 32)).astype(np.float32) for i in range(4)}  # 4 KiB each
    opt = {"state": {0: {"exp_avg": np.ones(3, np.float32)}}, "param_groups": [{"lr": 1e-3}]}
    store.save({"model": sd, "optimizer": opt, "step": 7})
    out = tmp_path / "out"
    invoke("restore", "main", "--to", str(out), "--shard-size", "10KB")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "state.json",
        "state.safetensors",
    ]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(sd)
    loaded: dict[str, np.ndarray] = {}
    for name in names[:2]:
        loaded.update(load_file(str(out / name)))
    for k, v in sd.items():
        assert np.array_equal(loaded[k], v)
    assert '"step"' in (out / "state.json").read_text()
    invoke("restore", "main", "--to", str(tmp_path / "x"), "--shard-size", "big", code=2)


@pytest.mark.torch
def test_restored_files_load_without_ckpt(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    store.save({"model": {"w": np.arange(6, dtype=np.float32)}})
    invoke("restore", "main", "--to", str(tmp_path / "out"))
    script = (
        "import sys; sys.modules['ckpt'] = None\n"
        "from safetensors.torch import load_file\n"
        f"t = load_file({str(tmp_path / 'out' / 'model.safetensors')!r})\n"
        "assert t['w'].tolist() == [0, 1, 2, 3, 4, 5], t\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_restore_a_pruned_snapshot_is_an_error(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"w": np.ones(3, np.float32)})
    store.save({"w": np.zeros(3, np.float32)})
    store.prune("main~1")
    assert "pruned" in invoke("restore", "main~1", "--to", str(tmp_path / "o"), code=1).stderr


def test_progress_bars_draw_bytes_when_forced(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    src = hf_folder(tmp_path / "hf", shards=2)
    tty = {"TTY_COMPATIBLE": "1"}
    result = invoke("import", str(src), env=tty)
    assert "import" in result.stderr and "KiB" in result.stderr
    result = invoke("restore", "main", "--to", str(tmp_path / "o"), env=tty)
    assert "restore" in result.stderr and "100%" in result.stderr
    assert "verify" in invoke("verify", env=tty).stderr
    # --quiet, and no terminal: no bar
    assert invoke("-q", "verify", env=tty).stderr == ""
    assert invoke("verify").stderr == ""
    assert invoke("restore", "main", "--to", str(tmp_path / "p"), env={"TTY_COMPATIBLE": "0"}).stderr == ""


def test_import_skip_pickles_and_exclude_list_what_was_left_out(
    invoke: Invoke, store: ckpt.Store, tmp_path: Path
) -> None:
    src = hf_folder(tmp_path / "hf", shards=1)
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    (src / "onnx").mkdir()
    (src / "onnx" / "model.onnx").write_bytes(b"onnx")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text("{}")
    assert "--skip-pickles" in invoke("import", str(src), code=1).stderr
    result = invoke("import", str(src), "--skip-pickles", "--exclude", "onnx/")
    assert result.stderr.splitlines() == [
        "skipped onnx: excluded by 'onnx/'",
        "skipped pytorch_model.bin: a pickle: never loaded (it can run code)",
    ]
    files = store.files("main")
    assert "1_Pooling/config.json" in files and not any(p.startswith("onnx") or p.endswith(".bin") for p in files)
    data = parse(invoke("import", str(src), "--skip-pickles", "--exclude", "onnx/*", "--json", "--branch", "j"))
    assert data["skipped"] == [
        {"path": "onnx/model.onnx", "reason": "excluded by 'onnx/*'"},
        {"path": "pytorch_model.bin", "reason": "a pickle: never loaded (it can run code)"},
    ]
    assert store.verify().ok


def test_import_names_links_leaving_the_folder(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    src = hf_folder(tmp_path / "hf", shards=1)
    (src / "README.md").symlink_to("/proc/self/environ")
    result = invoke("import", str(src), code=1)
    assert "README.md is a symbolic link to /proc/self/environ" in result.stderr and "hint: " in result.stderr
    assert store.branches() == {}


def test_restore_force_lists_what_it_removed(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store.save({"model": {f"w{i}": rng.standard_normal((32, 32)).astype(np.float32) for i in range(4)}, "step": 1})
    out = tmp_path / "out"
    invoke("restore", "main", "--to", str(out), "--shard-size", "10KB")
    (out / "keep.txt").write_text("mine")
    result = invoke("restore", "main", "--to", str(out), "--force")  # one file now: the shards go
    removed = [line for line in result.stdout.splitlines() if line.startswith("removed ")]
    assert removed == [
        f"removed {out / name} (superseded by this restore)"
        for name in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ]
    ]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "model.safetensors", "state.json"]
    data = parse(invoke("restore", "main", "--to", str(out), "--force", "--shard-size", "10KB", "--json"))
    assert data["removed"] == [str(out / "model.safetensors")]


def test_a_restored_training_snapshot_imports_back_the_same(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    opt = {"state": {0: {"exp_avg": np.ones(3, np.float32)}}, "param_groups": [{"lr": 1e-3}]}
    snap = store.save(
        {"model": {"w": np.arange(6, dtype=np.float32)}, "optimizer": opt, "step": 7},
        model="tiny",
        step=7,
        metrics={"val_loss": 0.5},
    )
    invoke("restore", "main", "--to", str(tmp_path / "out"))
    invoke("import", str(tmp_path / "out"), "--branch", "back")
    back = store.resolve("back")
    assert (back.model, back.step, back.metrics, back.table) == ("tiny", 7, {"val_loss": 0.5}, snap.table)
    assert store.verify().ok
