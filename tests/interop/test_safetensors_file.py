"""The safetensors format without torch: byte-identical writes, zero-copy reads, malformed files refused."""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ckpt.errors import RecordError, StateMismatchError, UnsupportedStateError
from ckpt.interop._safetensors import build_header, open_tensors, parse_header, read_header, write_file
from ckpt.state import TORCH_DTYPES, dtype_name

pytestmark = pytest.mark.torch

NAMES = ["a", "b", "z", "model.layers.0.w", "é", 'q"uote\\back\nline\x01\x7f😀\u2028']


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def mixed_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Tensors of every dtype safetensors writes, with awkward names and shapes, in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    shapes: list[tuple[int, ...]] = [(), (0,), (3,), (2, 3), (4, 1, 2)]
    for i, (name, dtype) in enumerate(TORCH_DTYPES.items()):
        if name == "C128":  # not a safetensors dtype
            continue
        for j in torch.randperm(len(NAMES), generator=g)[:3].tolist():
            shape = shapes[(i + j) % len(shapes)]
            n = int(np.prod(shape)) * dtype.itemsize
            data = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
            if dtype == torch.bool:
                data = data % 2
            out[f"{NAMES[j]}{i}"] = data.view(dtype).reshape(shape)
    keys = list(out)
    order = torch.randperm(len(keys), generator=g).tolist()
    return {keys[k]: out[keys[k]] for k in order}


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {}])
@pytest.mark.parametrize("seed", [0, 1])
def test_written_file_is_byte_identical_to_safetensors(tmp_path: Path, metadata: Any, seed: int) -> None:
    tensors = mixed_tensors(seed)
    save_file(tensors, tmp_path / "theirs.safetensors", metadata=metadata)
    items = [(k, dtype_name(v.dtype), tuple(v.shape), [raw_bytes(v)]) for k, v in reversed(tensors.items())]
    write_file(tmp_path / "ours.safetensors", items, metadata=metadata)  # type: ignore[arg-type]
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()


def test_tensor_bytes_may_come_in_any_pieces(tmp_path: Path) -> None:
    t = {"w": torch.arange(1000, dtype=torch.float32), "e": torch.zeros(0), "s": torch.tensor(3, dtype=torch.int64)}
    save_file(t, tmp_path / "theirs.safetensors")
    raw = {k: raw_bytes(v) for k, v in t.items()}
    pieces = {k: [memoryview(b[i : i + 333]) for i in range(0, len(b), 333)] for k, b in raw.items()}
    items = [(k, dtype_name(v.dtype), tuple(v.shape), iter(pieces[k])) for k, v in t.items()]
    write_file(tmp_path / "ours.safetensors", items)  # type: ignore[arg-type]
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()


def test_open_tensors_is_zero_copy_and_in_offset_order(tmp_path: Path) -> None:
    tensors = mixed_tensors(2)
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    header_bytes, header = read_header(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert header_bytes == raw[8 : 8 + n]
    assert header["__metadata__"] == {"format": "pt"}

    sources = open_tensors(path)
    by_offset = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    assert list(sources) == by_offset
    for name, src in sources.items():
        assert src.kind == "torch"
        assert src.dtype == header[name]["dtype"]
        assert src.shape == tuple(header[name]["shape"])
        assert isinstance(src.owner, mmap.mmap)
        assert src.data.obj is src.owner  # a view of the map, not a copy
        assert src.data.readonly
        assert src.data.tobytes() == raw_bytes(tensors[name])


def test_header_is_written_verbatim(tmp_path: Path) -> None:
    """An original header, however it is formatted, comes back byte for byte with the tensors in its order."""
    header = {
        "b": {"data_offsets": [0, 8], "shape": [2], "dtype": "F32"},
        "a": {"dtype": "I8", "shape": [3], "data_offsets": [8, 11]},
        "__metadata__": {"z": "1", "format": "pt"},
    }
    header_bytes = json.dumps(header, indent=1).encode()  # unusual spacing, no padding to 8
    data = np.array([1.5, -2.0], dtype="<f4").tobytes() + b"\x01\x02\x03"
    original = tmp_path / "odd.safetensors"
    original.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)

    got_bytes, got = read_header(original)
    assert got_bytes == header_bytes and list(got) == ["b", "a", "__metadata__"]
    sources = open_tensors(original)
    assert list(sources) == ["b", "a"]
    items = [(k, s.dtype, s.shape, [s.data]) for k, s in reversed(sources.items())]
    write_file(tmp_path / "copy.safetensors", items, header_bytes=got_bytes)
    assert (tmp_path / "copy.safetensors").read_bytes() == original.read_bytes()
    assert load_file(tmp_path / "copy.safetensors")["b"].tolist() == [1.5, -2.0]


def test_writes_refuse_what_does_not_fit(tmp_path: Path) -> None:
    header_bytes, _ = build_header([("w", "F32", (2,))])
    target = tmp_path / "w.safetensors"
    with pytest.raises(StateMismatchError, match="missing"):
        write_file(target, [("v", "F32", (2,), [b"\0" * 8])], header_bytes=header_bytes)
    with pytest.raises(StateMismatchError, match="header"):
        write_file(target, [("w", "F32", (3,), [b"\0" * 12])], header_bytes=header_bytes)
    with pytest.raises(StateMismatchError, match="needs 8 bytes"):
        write_file(target, [("w", "F32", (2,), [b"\0" * 4])])
    with pytest.raises(StateMismatchError, match="needs 8 bytes"):
        write_file(target, [("w", "F32", (2,), [b"\0" * 8, b"\0"])])
    with pytest.raises(RecordError, match="either metadata or header_bytes"):
        write_file(target, [("w", "F32", (2,), [b"\0" * 8])], metadata={}, header_bytes=header_bytes)
    with pytest.raises(RecordError, match="twice"):
        write_file(target, [("w", "F32", (1,), [b"\0" * 4]), ("w", "F32", (1,), [b"\0" * 4])])
    with pytest.raises(RecordError, match="cannot name a tensor"):
        write_file(target, [("__metadata__", "F32", (1,), [b"\0" * 4])])
    with pytest.raises(RecordError, match="dtype"):
        write_file(target, [("w", "F33", (1,), [b"\0" * 4])])
    with pytest.raises(RecordError, match="metadata"):
        write_file(target, [], metadata={"n": 1})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "w.safetensors"
    write_file(target, [("w", "F32", (1,), [b"\0" * 4])])
    before = target.read_bytes()

    def pieces() -> Any:
        yield b"\0" * 4
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_file(target, [("w", "F32", (2,), pieces())])
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def _file(header: Any, data: bytes = b"", *, raw_header: bytes | None = None, length: int | None = None) -> bytes:
    hb = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(hb) if length is None else length) + hb + data


def _entry(dtype: str = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED: dict[str, tuple[bytes, str]] = {
    "shorter than 8 bytes": (b"\x01\x00", "only 2 bytes"),
    "header past the end": (_file({"w": _entry()}, length=10_000), "does not fit in the 69-byte file"),
    "header length past the end and over 100 MB": (_file({}, length=200_000_000), "does not fit"),
    "git lfs pointer": (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 90868376\n",
        "Git LFS pointer",
    ),
    "torch.save zip": (b"PK\x03\x04" + b"\0" * 60, "zip archive"),
    "pickle": (b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01" + b"\0" * 40, "pickle"),
    "html error page": (b"<!DOCTYPE html><html><body>Not found</body></html>\n", "text file"),
    "lone surrogate name": (
        _file(None, raw_header=b'{"\\ud800": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'),
        "surrogate",
    ),
    "not UTF-8": (_file(None, raw_header=b'{"\xff":1}'), "UTF-8"),
    "not an object": (_file(None, raw_header=b"[1, 2]  "), "JSON object"),
    "invalid JSON": (_file(None, raw_header=b'{"w": '), "not valid JSON"),
    "duplicate names": (_file(None, raw_header=b'{"w":1,"w":2}'), "duplicate"),
    "entry not an object": (_file({"w": [1]}), "not a JSON object"),
    "no dtype": (_file({"w": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "no dtype"),
    "negative dim": (_file({"w": _entry(shape=(-2,))}, b"\0" * 8), "invalid shape"),
    "bool dim": (_file({"w": _entry(shape=(True,), offsets=(0, 4))}, b"\0" * 4), "invalid shape"),
    "float dim": (_file({"w": _entry(shape=(2.0,))}, b"\0" * 8), "invalid shape"),
    "three offsets": (_file({"w": _entry(offsets=(0, 8, 9))}, b"\0" * 8), "data_offsets"),
    "negative offset": (_file({"w": _entry(offsets=(-8, 0))}, b"\0" * 8), "data_offsets"),
    "ends before it begins": (_file({"w": _entry(offsets=(8, 0))}, b"\0" * 8), "before it begins"),
    "size does not match dtype x shape": (_file({"w": _entry(offsets=(0, 12))}, b"\0" * 12), "needs 8 bytes"),
    "overlapping tensors": (
        _file({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, b"\0" * 12),
        "overlaps",
    ),
    "gap between tensors": (
        _file({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(12, 20))}, b"\0" * 20),
        "gap",
    ),
    "data missing": (_file({"w": _entry()}, b"\0" * 4), "truncated"),
    "trailing data": (_file({"w": _entry()}, b"\0" * 9), "trailing"),
    "offsets past the end": (_file({"w": _entry(offsets=(8, 16))}, b"\0" * 8), "gap"),
    "metadata not strings": (_file({"__metadata__": {"n": 1}}), "__metadata__"),
    "metadata not a map": (_file({"__metadata__": "x"}), "__metadata__"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_are_refused(tmp_path: Path, case: str) -> None:
    content, message = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(RecordError, match=message):
        read_header(path)
    with pytest.raises(RecordError, match=message):
        open_tensors(path)


def test_lfs_pointer_names_git_lfs_pull_in_its_hint(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(MALFORMED["git lfs pointer"][0])
    with pytest.raises(RecordError) as e:
        read_header(path)
    assert "git lfs pull" in (e.value.hint or "")
    assert "100000000" not in str(e.value)  # not judged by a header length it never had


def test_a_header_over_100_mb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    with path.open("wb") as f:  # a sparse file: the header fits, but is over the limit
        f.write(struct.pack("<Q", 200_000_000) + b"{")
        f.truncate(8 + 200_000_000)
    with pytest.raises(RecordError, match="over the 100000000-byte limit"):
        read_header(path)


def test_a_file_whose_length_looks_like_text_is_still_read(tmp_path: Path) -> None:
    """The sniffing only explains a failure: a real header whose length bytes look odd is read as usual."""
    header = json.dumps({"w": _entry(dtype="U8", shape=(1,), offsets=(0, 1))}).encode()
    header += b" " * (0x3C - len(header))  # length 60 = b"<", unpadded, as some writers leave it
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x07")
    assert list(open_tensors(path)) == ["w"]


def test_dtypes_ckpt_does_not_store_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "f4.safetensors"
    path.write_bytes(_file({"w": _entry(dtype="F4", shape=(2,), offsets=(0, 1))}, b"\0"))
    with pytest.raises(UnsupportedStateError, match="F4"):
        open_tensors(path)


def test_parse_header_alone_checks_the_tiling() -> None:
    _, infos = parse_header(json.dumps({"b": _entry(offsets=(8, 16)), "a": _entry()}).encode())
    assert [i.name for i in infos] == ["a", "b"] and infos[1].begin == 8
    with pytest.raises(RecordError, match="cover 16 bytes of data, but the file holds 20"):
        parse_header(json.dumps({"a": _entry(), "b": _entry(offsets=(8, 16))}).encode(), data_size=20)


def test_empty_file_round_trips(tmp_path: Path) -> None:
    save_file({}, tmp_path / "theirs.safetensors")
    write_file(tmp_path / "ours.safetensors", [])
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()
    assert open_tensors(tmp_path / "ours.safetensors") == {}
