"""``ckpt.diff``: the tensor-level diff as a library function (no torch needed but for making bf16 inputs)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.cli._output import human_bytes
from ckpt.diff import SnapshotDiff, TensorDiff, chunk_sizes, diff, group_of, layer_of, tensor_order
from ckpt.state import TensorSource


def _store(tmp_path: Path, chunk_size: int = 4096) -> ckpt.Store:
    return ckpt.init(str(tmp_path / "s"), chunk_size=chunk_size)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(b64 - a64) / np.linalg.norm(a64))


def _by_name(d: SnapshotDiff) -> dict[str, TensorDiff]:
    return {t.name: t for t in d.tensors}


def test_statuses_dtypes_shapes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    rng = np.random.default_rng(0)
    a: dict[str, np.ndarray] = {
        "same": rng.standard_normal(100).astype(np.float32),
        "changed": rng.standard_normal((10, 10)).astype(np.float32),
        "recast": rng.standard_normal(50).astype(np.float32),
        "reshaped": np.zeros((4, 4), np.float32),
        "ints": np.arange(10, dtype=np.int64),
        "gone": np.ones(3, np.float32),
    }
    b = dict(a)
    b["changed"] = a["changed"] * np.float32(1.5)
    b["recast"] = a["recast"].astype(np.float16)
    b["reshaped"] = np.zeros((2, 8), np.float32)
    b["ints"] = np.arange(10, dtype=np.int64) + 1
    del b["gone"]
    b["new"] = np.ones(5, np.float32)
    store.save(a)
    store.save(b)
    d = diff(store, "main~1", "main")
    t = _by_name(d)
    assert (d.added, d.removed, d.changed, d.unchanged) == (1, 1, 4, 1)
    assert t["same"].status == "unchanged" and t["same"].relative_change == 0.0
    assert t["changed"].relative_change == pytest.approx(0.5, rel=1e-6)
    assert t["recast"].dtype_changed and not t["recast"].shape_changed
    assert t["recast"].relative_change == pytest.approx(_rel(a["recast"], b["recast"]), rel=1e-6)
    assert t["reshaped"].shape_changed and t["reshaped"].relative_change is None
    assert t["reshaped"].note == "shape changed"
    assert t["ints"].relative_change is None and "not a floating-point dtype" in (t["ints"].note or "")
    assert t["gone"].status == "removed" and t["gone"].dtype_b is None and t["gone"].bytes_b == 0
    assert t["new"].status == "added" and t["new"].shape_b == (5,)
    # B's order first, then what was removed
    assert [x.name for x in d.tensors] == [*b, "gone"]
    assert d.a == store.resolve("main~1").id and d.b == store.resolve("main").id
    # round-trips through JSON
    assert SnapshotDiff.model_validate_json(d.model_dump_json()) == d


def test_norms_off(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save({"w": np.ones(4, np.float32)})
    store.save({"w": np.full(4, 2, np.float32)})
    (t,) = diff(store, "main~1", "main", norms=False).tensors
    assert t.status == "changed" and t.relative_change is None and "not computed" in (t.note or "")


@pytest.mark.torch
def test_bf16_is_decoded_with_numpy(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    store = _store(tmp_path)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 70, generator=g).to(torch.bfloat16)  # 42000 bytes: spans chunks
    b = (a.float() + 0.01 * torch.randn(300, 70, generator=g)).to(torch.bfloat16)
    store.save({"w": a, "f32": a.float()})
    store.save({"w": b, "f32": b.float()})
    t = _by_name(diff(store, "main~1", "main"))
    expected = float((b.double() - a.double()).norm() / a.double().norm())
    assert t["w"].relative_change == pytest.approx(expected, rel=1e-9)
    assert t["f32"].relative_change == pytest.approx(expected, rel=1e-6)
    # bf16 against float32 of the same values: no change at all
    store.save({"w": a.float(), "f32": a.float()}, branch="x", parents=["main~1"])
    cross = _by_name(diff(store, "main~1", "x"))
    assert cross["w"].dtype_changed and cross["w"].relative_change == 0.0


def test_fp8_norm_is_skipped_and_says_so(tmp_path: Path) -> None:
    store = _store(tmp_path)

    def fp8(data: bytes) -> TensorSource:
        return TensorSource("F8_E4M3", (len(data),), "torch", memoryview(data))

    store.save({"q": fp8(b"\x01\x02\x03\x04")})
    store.save({"q": fp8(b"\x01\x02\x03\x05")})
    (t,) = diff(store, "main~1", "main").tensors
    assert t.status == "changed" and t.relative_change is None
    assert "fp8" in (t.note or "") and "not computed" in (t.note or "")


def test_undefined_relative_change(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save({"zero": np.zeros(4, np.float32), "nan": np.ones(4, np.float32)})
    store.save({"zero": np.ones(4, np.float32), "nan": np.array([1, np.nan, 1, 1], np.float32)})
    t = _by_name(diff(store, "main~1", "main"))
    assert t["zero"].relative_change is None and "A is all zeros" in (t["zero"].note or "")
    assert t["nan"].relative_change is None and "nan" in (t["nan"].note or "")


def test_chunk_edges_that_split_elements(tmp_path: Path) -> None:
    store = _store(tmp_path, chunk_size=4097)  # not a multiple of any element size
    rng = np.random.default_rng(1)
    a = rng.standard_normal(5000)
    b = a + rng.standard_normal(5000) * 0.1
    c = rng.standard_normal(3000).astype(np.complex128) * (1 + 1j)
    store.save({"f64": a, "c128": c, "f16": a.astype(np.float16)})
    store.save({"f64": b, "c128": c * 2, "f16": b.astype(np.float16)})
    t = _by_name(diff(store, "main~1", "main"))
    assert t["f64"].relative_change == pytest.approx(_rel(a, b), rel=1e-12)
    assert t["c128"].relative_change == pytest.approx(1.0, rel=1e-12)
    assert t["f16"].relative_change == pytest.approx(_rel(a.astype(np.float16), b.astype(np.float16)), rel=1e-6)


def test_layers(tmp_path: Path) -> None:
    store = _store(tmp_path)
    w = {f"model/layers.{i}.{p}": np.full(8, i, np.float32) for i in range(3) for p in ("q.weight", "k.weight")}
    store.save(w)
    w2 = dict(w)
    w2["model/layers.1.q.weight"] = np.full(8, 2, np.float32)
    w2["model/layers.1.k.weight"] = np.full(8, 1.5, np.float32)
    store.save(w2)
    d = diff(store, "main~1", "main")
    layers = {x.layer: x for x in d.layers}
    assert list(layers) == ["model/layers.0", "model/layers.1", "model/layers.2"]
    assert layers["model/layers.1"].changed == 2 and layers["model/layers.1"].unchanged == 0
    assert layers["model/layers.1"].max_relative_change == pytest.approx(1.0)
    assert layers["model/layers.0"].unchanged == 2 and layers["model/layers.0"].max_relative_change is None


def test_bytes_b_adds_over_a(tmp_path: Path) -> None:
    store = _store(tmp_path)
    rng = np.random.default_rng(2)
    big = rng.standard_normal(4096).astype(np.float32)  # 4 chunks
    store.save({"w": big})
    edited = big.copy()
    edited[0] = 42  # only the first chunk differs
    store.save({"w": edited, "extra": big[:1024].copy()}, files={"config.json": b'{"a": 1}'})  # extra = chunk 0 of A
    d = diff(store, "main~1", "main")
    assert d.added_chunks == 2 and d.added_bytes == 4096 + 8
    assert [(f.path, f.status, f.size_b) for f in d.files] == [("config.json", "added", 8)]
    back = diff(store, "main", "main~1")
    assert back.added_bytes == 0  # every chunk of the old snapshot is in the new one ("extra" holds chunk 0)
    assert back.files[0].status == "removed"
    assert sum(chunk_sizes(store.table("main")).values()) == 5 * 4096 + 8  # w: 4 chunks, extra: 1, config


def test_files_changed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save({"w": [1]}, files={"config.json": b"{}", "same.txt": b"x"})
    store.save({"w": [1]}, files={"config.json": b'{"v": 2}', "same.txt": b"x"})
    (f,) = diff(store, "main~1", "main").files
    assert (f.path, f.status, f.size_a, f.size_b) == ("config.json", "changed", 2, 8)


def test_layer_and_group_names() -> None:
    assert layer_of("model/layers.3.self_attn.q_proj.weight") == "model/layers.3"
    assert layer_of("model.layers.10.mlp.up_proj.weight") == "model.layers.10"
    assert layer_of("model/embed_tokens.weight") == "model/embed_tokens"
    assert layer_of("optimizer/state/0/exp_avg") == "optimizer/state/0"
    assert layer_of("lm_head.weight") == "lm_head"
    assert layer_of("0.weight") == "0"
    assert layer_of("w") == "w"
    assert group_of("model/layers.0.w") == "model"
    assert group_of("lm_head.weight") == "lm_head"
    assert group_of("w") == "w"


def test_tensor_order_follows_the_state_tree(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save({"z": np.ones(1), "a": np.ones(1), "m": {"y": np.ones(1), "b": np.ones(1)}})
    assert tensor_order(store.table("main")) == ["z", "a", "m/y", "m/b"]
    assert math.isclose(diff(store, "main", "main").tensors[0].relative_change or 0.0, 0.0)


def test_ckpt_bookkeeping_files_are_not_listed(tmp_path: Path) -> None:
    """Files under ``.ckpt/`` (the headers ckpt keeps of imported safetensors files) are not the user's files."""
    store = _store(tmp_path)
    store.save({"w": [1]}, files={"config.json": b"{}"})
    store.save({"w": [1]}, files={"config.json": b"{}", ".ckpt/safetensors/model.safetensors.header": b"{}"})
    assert diff(store, "main~1", "main").files == ()
    assert diff(store, "main", "main~1").files == ()


def test_stored_bytes_beside_raw_with_compression(tmp_path: Path, invoke: Any) -> None:
    """With compression on, B's new chunks are reported as stored (a delta against A: a fraction of raw), and
    the figure is the bytes their objects take on disk."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=1 << 16)
    rng = np.random.default_rng(5)
    w = (rng.standard_normal(1 << 16) * 0.02).astype(np.float32)  # 4 chunks of 64 KiB
    store.save({"w": w})
    moved = w.copy()
    moved[::7] += np.float32(1e-6)  # every chunk changes a little: each a small delta against A's
    store.save({"w": moved})
    d = diff(store, "main~1", "main")
    table = store.table("main")
    new = set(table.chunk_digests()) - set(store.table("main~1").chunk_digests())
    on_disk = sum((tmp_path / "s" / "chunks" / c[:2] / c).stat().st_size for c in new)
    assert d.added_chunks == 4 and d.added_bytes == w.nbytes
    assert d.added_stored_bytes == on_disk
    assert 0 < d.added_stored_bytes < d.added_bytes / 2
    assert diff(store, "main", "main").added_stored_bytes == 0
    raw = ckpt.init(str(tmp_path / "raw"), chunk_size=1 << 16, compression=False)
    raw.save({"w": w})
    raw.save({"w": moved})
    assert diff(raw, "main~1", "main").added_stored_bytes == d.added_bytes + 4 * 16  # raw: headers only
    out = invoke("--store", str(tmp_path / "s"), "diff", "main~1", "main", "--no-norms").stdout
    assert f"B adds 256.0 KiB (4 chunks), stored as {human_bytes(on_disk)} ({on_disk / w.nbytes:.2f} of raw)" in out
    data = json.loads(invoke("--store", str(tmp_path / "s"), "diff", "main~1", "main", "--json").stdout)
    assert (data["added_bytes"], data["added_stored_bytes"]) == (w.nbytes, on_disk)


def test_stored_bytes_unknown_when_b_pruned_or_chunk_missing(tmp_path: Path) -> None:
    store = ckpt.init(str(tmp_path / "s"), chunk_size=1 << 16)
    store.save({"w": np.ones(1 << 14, np.float32)})
    snap = store.save({"w": np.full(1 << 14, 2, np.float32)})
    chunk = store.table("main").tensors["w"].chunks[0]
    (tmp_path / "s" / "chunks" / chunk[:2] / chunk).unlink()
    d = diff(store, "main~1", "main", norms=False)
    assert d.added_bytes == 1 << 16 and d.added_stored_bytes is None
    assert snap.id == d.b
