"""Read a ckpt snapshot by hand, following docs/format.md, with only json, struct, blake3, zstandard and numpy.

Run it with ``python examples/docs_read_raw.py [STORE]`` (default: a new temporary folder). ckpt is used only
to write the store; the reading part does not import it.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile

import blake3
import numpy as np
import zstandard

# a few dtypes of the table in docs/format.md, enough for this example
NUMPY = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


def write_store(root: str) -> None:
    import ckpt  # only for writing

    store = ckpt.init(root, chunk_size=1 << 16)  # two chunks for `emb`: each compressed (codec 1); `w` in a pack
    emb = (np.sin(np.arange(32768, dtype=np.float32)) * 0.02).astype(np.float32)
    state = {"model": {"w": np.arange(10, dtype=np.float32), "emb": emb}, "lr": 0.1, "betas": (0.9, 0.999)}
    store.save(state, step=1)


def read(root: str, path: str) -> bytes:
    with open(os.path.join(root, path), "rb") as f:
        return f.read()


def read_object(root: str, path: str, digest: str) -> bytes:
    data = read(root, path)
    assert blake3.blake3(data).hexdigest() == digest, f"{path} is corrupt"
    return data


def read_chunk(root: str, digest: str, length: int) -> bytes:
    data = read(root, f"chunks/{digest[:2]}/{digest}")
    magic, fmt, codec, _reserved, raw_length = struct.unpack("<4sBBHQ", data[:16])
    assert (magic, fmt, raw_length) == (b"ckpt", 1, length), "bad chunk header"
    if codec == 0:  # raw
        payload = data[16:]
    elif codec == 1:  # grouped: byte planes, each stored or one zstd frame ("Grouped body")
        payload = grouped(data[16:], length)
    else:
        raise NotImplementedError(f"codec {codec} (a delta: decode its reference first, docs/format.md)")
    assert blake3.blake3(payload).hexdigest() == digest, "corrupt chunk"
    return payload


def grouped(body: bytes, n: int) -> bytes:
    transform, k, block_log, _ = struct.unpack("<BBBB", body[:4])
    block = 1 << block_log
    nblocks = -(-n // block)
    lengths = struct.unpack(f"<{nblocks * k}I", body[4 : 4 + 4 * nblocks * k])
    pos, out = 4 + 4 * nblocks * k, bytearray()
    for j in range(nblocks):
        m = (min(block, n - j * block)) // k  # whole elements in this block
        planes = []
        for i in range(k):
            frame = body[pos : pos + lengths[j * k + i]]
            pos += len(frame)
            planes.append(np.frombuffer(frame if len(frame) == m else zstandard.decompress(frame), np.uint8))
        words = np.zeros(m, dtype=f"<u{k}")
        for i, plane in enumerate(planes):
            words |= plane.astype(words.dtype) << (8 * i)
        if transform == 1:  # the top 16 bits were rotated left by one bit: rotate them right
            shift = 8 * k - 16
            top = (words >> shift) & 0xFFFF
            top = ((top >> 1) | (top << 15)) & 0xFFFF
            words = (words & ((1 << shift) - 1)) | (top << shift)
        out += words.tobytes()
    return bytes(out + body[pos:])  # the tail: the last n mod k bytes, as they are


def read_tensor(root: str, entry: dict, chunk_size: int) -> np.ndarray:
    dtype = np.dtype(NUMPY[entry["dtype"]]).newbyteorder("<")
    nbytes = int(np.prod(entry["shape"], dtype=np.int64)) * dtype.itemsize
    if "pack" in entry:  # format 3.0: a small tensor inside a shared chunk (a pack) of `length` raw bytes
        offset, length = entry["pack"]
        raw = read_chunk(root, entry["chunks"][0], length)[offset : offset + nbytes]
    else:
        pieces = [read_chunk(root, d, min(chunk_size, nbytes - i * chunk_size)) for i, d in enumerate(entry["chunks"])]
        raw = b"".join(pieces)
    return np.frombuffer(raw, dtype=dtype).reshape(entry["shape"])


def decode(node, tensors):  # the typed JSON of the state tree
    if isinstance(node, list):
        return [decode(v, tensors) for v in node]
    if isinstance(node, dict):
        ((tag, body),) = node.items()
        if tag == "$dict":
            return {k: decode(v, tensors) for k, v in body}
        if tag == "$tuple":
            return tuple(decode(v, tensors) for v in body)
        if tag == "$float":
            return float(body)
        if tag == "$tensor":
            return tensors[body]
        raise ValueError(f"unknown node {tag}")
    return node


def main(root: str) -> None:
    write_store(root)
    config = json.loads(read(root, "ckpt.json"))
    assert config["format"] == "ckpt" and int(config["format_version"].split(".")[0]) <= 3

    snap_id = json.loads(read(root, "refs/heads/main"))["id"]
    snap = json.loads(read_object(root, f"snapshots/{snap_id[:2]}/{snap_id}.json", snap_id))
    table = json.loads(read_object(root, f"tables/{snap['table'][:2]}/{snap['table']}.json", snap["table"]))
    tensors = {path: read_tensor(root, e, table["chunk_size"]) for path, e in table["tensors"].items()}
    state = decode(table["tree"], tensors)

    print(f"main -> {snap_id[:12]}  step {snap['step']}  relation {snap['relation']}")
    for path, e in table["tensors"].items():
        where = f"at byte {e['pack'][0]} of a pack" if "pack" in e else f"in {len(e['chunks'])} chunks"
        print(f"  {path}: {e['dtype']} {e['shape']} {where}")
    print(f"  lr {state['lr']}, betas {state['betas']}, w {state['model']['w'].tolist()}")
    assert state["model"]["w"].tolist() == list(range(10))
    assert np.array_equal(state["model"]["emb"], (np.sin(np.arange(32768, dtype=np.float32)) * 0.02))
    assert state["betas"] == (0.9, 0.999) and state["lr"] == 0.1


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "store"))
