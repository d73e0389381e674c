"""Breaker tests for how a chunk is saved: per-thread codec scratch (``_work.scratch``), keyframes hashed while
they are encoded (``Objects._put_keyframe``), a first save that keeps no reference copies and a chunk maybe
unchanged since its parent hashed before it is copied (``ReferenceCache.differs``). Each asserts what a user
checks: loaded tensors equal to what was saved, ``verify`` clean, damage refused loudly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
import torch

import ckpt
from ckpt.errors import CkptError
from ckpt.store import _layout as layout
from ckpt.store import _objects
from ckpt.store._codecs import decode_into, layout_for
from ckpt.store._codecs._chunk import encode_chunk
from ckpt.store._reference_cache import REFERENCES

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("empty_reference_cache")]

CHUNK = 16 << 10


def clone(state: dict[str, Any]) -> dict[str, Any]:
    return {k: clone(v) if isinstance(v, dict) else v.detach().clone() for k, v in state.items()}


def assert_equal(back: dict[str, Any], want: dict[str, Any]) -> None:
    assert back.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, dict):
            assert_equal(back[k], v)
        else:
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def chunk_file(root: Path, digest: str) -> Path:
    return root / layout.chunk_path(digest)


def digests(store: ckpt.Store, sid: str, tensor: str) -> list[str]:
    return list(store.table(sid).tensors[tensor].chunks)


# -- a chunk unchanged since its parent, whose stored object is gone or damaged --------------------------------


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_an_unchanged_chunk_rewritten_while_the_caller_changes_it_stores_what_its_digest_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """The parent's chunk at the same place is gone (or truncated) from the store; the next save finds the chunk
    unchanged by its hash and writes it back, while a caller thread changes the tensor right after that hash:
    the object written must hold the bytes hashed (or the save must store other bytes under their own digest),
    never the changed bytes under the old digest."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK)
    w = torch.randn(4 * CHUNK // 4, generator=torch.Generator().manual_seed(0))
    first = store.save({"model": {"w": w}}, step=0)
    target = digests(store, first.id, "model/w")[1]
    path = chunk_file(root, target)
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-7])
    real = _objects.hash_chunk

    def hash_then_scribble(data: Any) -> str:
        digest = real(data)
        if digest == target:  # the caller's memory changes right after the hash
            w.add_(1)
        return digest

    before = w.clone()
    monkeypatch.setattr(_objects, "hash_chunk", hash_then_scribble)
    second = store.save({"model": {"w": w}}, step=1)
    monkeypatch.setattr(_objects, "hash_chunk", real)
    saved = w.clone()
    report = store.verify()
    # healed with the bytes hashed, or the changed bytes stored under their own digest (the first snapshot then
    # keeps the damage done to it): never the changed bytes under the digest of the bytes hashed
    healed = report.ok
    moved = all(d.digest == target for d in report.damage) and target not in digests(store, second.id, "model/w")
    assert healed or moved, report
    back = store.load(second.id)["model"]["w"]  # each chunk as it was when hashed, before or after the change
    per = CHUNK // 4
    assert all(
        torch.equal(x, y) or torch.equal(x, z)
        for x, y, z in zip(back.split(per), before.split(per), saved.split(per), strict=True)
    )


@pytest.mark.parametrize(
    "setting",
    ["cache-off", "cache-tiny", "compression-off", "small-chunks", "first-save-small-chunks"],
)
def test_a_chunk_changed_by_the_caller_right_after_its_hash_is_stored_under_the_digest_of_what_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """A caller thread changes the tensor right after a changed chunk is hashed, in a save that keeps no copy of
    it (the reference cache off or too small, compression off, chunks too small to be kept): what is stored
    under the digest must be the bytes hashed."""
    chunk = 2048 if "small" in setting else CHUNK
    if setting == "cache-off":
        monkeypatch.setenv("CKPT_REFERENCE_CACHE", "0")
    if setting == "cache-tiny":
        monkeypatch.setenv("CKPT_REFERENCE_CACHE", "8KiB")
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=chunk, compression=setting != "compression-off", pack_size=0)
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(4 * chunk // 4, generator=g) * 0.02).to(torch.bfloat16).float()  # compressible
    if not setting.startswith("first"):
        store.save({"model": {"w": w}}, step=0)
        w.add_(torch.randn(w.shape, generator=g) * 1e-3)
    before = w.clone()
    target = blake3.blake3(before[chunk // 4 : 2 * chunk // 4].numpy().tobytes()).hexdigest()
    real = _objects.hash_chunk

    def hash_then_scribble(data: Any) -> str:
        digest = real(data)
        if digest == target:
            w.mul_(-2)
        return digest

    monkeypatch.setattr(_objects, "hash_chunk", hash_then_scribble)
    snap = store.save({"model": {"w": w}}, step=1)
    monkeypatch.setattr(_objects, "hash_chunk", real)
    report = store.verify()
    assert report.ok, report
    back = store.load(snap.id)["model"]["w"]
    per = chunk // 4
    assert all(
        torch.equal(x, y) or torch.equal(x, z)
        for x, y, z in zip(back.split(per), before.split(per), w.split(per), strict=True)
    )


# -- the codec: digest of exactly the bytes encoded, scratch reuse -------------------------------------------------

LAYOUT_DTYPES = ["BOOL", "I8", "F16", "BF16", "F32", "I64", "F64", "C64", "C128", None]
LENGTHS = [4096, 4097, 4099, 4111, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (1 << 20) + 15, (3 << 20) + 7]


def sample(n: int, seed: int) -> bytes:
    """Compressible bytes (small floats: grouped planes pay) with a random last block."""
    rng = np.random.default_rng(seed)
    body = (rng.standard_normal(n // 4 + 1).astype(np.float32) * 0.01).tobytes()[:n]
    return body[: max(0, n - 100)] + rng.integers(0, 256, min(n, 100), dtype=np.uint8).tobytes()


@pytest.mark.parametrize("threads", [0, 2])
def test_a_keyframe_hashed_while_encoded_has_the_digest_of_its_bytes(threads: int) -> None:
    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        for i, dtype in enumerate(LAYOUT_DTYPES):
            for n in LENGTHS if dtype in ("BF16", "C128", None) else LENGTHS[:5]:
                raw = sample(n, i * 100 + n % 97)
                h = blake3.blake3()
                enc = encode_chunk(raw, layout=layout_for(dtype), executor=pool, hasher=h)
                assert h.hexdigest() == blake3.blake3(raw).hexdigest(), (dtype, n)
                out = bytearray(n)
                decode_into(enc.codec, b"".join(bytes(p) for p in enc.parts), out)
                assert bytes(out) == raw, (dtype, n)
    finally:
        if pool:
            pool.shutdown()


def test_blocks_encoded_one_after_another_on_one_thread_keep_their_own_planes() -> None:
    """Two chunks encoded in turn on one thread (the scratch reused): the first's parts still decode to it."""
    for dtype in ("BF16", "F32", "F16", "I64", "C128"):
        a, b = sample(1 << 20, 1), sample(1 << 20, 2)
        ea = encode_chunk(a, layout=layout_for(dtype))
        eb = encode_chunk(b, layout=layout_for(dtype))
        for enc, raw in ((ea, a), (eb, b)):
            out = bytearray(len(raw))
            decode_into(enc.codec, b"".join(bytes(p) for p in enc.parts), out)
            assert bytes(out) == raw, dtype


@pytest.mark.parametrize("op", [None, 0, 1])
def test_deltas_of_every_element_size_and_tail_decode_to_their_bytes(op: int | None) -> None:
    """XOR and ADD deltas (and the default op) of chunks with tails, blocks of 64 KiB to 8 MiB, two threads."""
    from ckpt.store._codecs._chunk import OP_ADD, OP_XOR

    assert (OP_XOR, OP_ADD) == (0, 1)
    ref_digest = "ab" * 32
    with ThreadPoolExecutor(2) as pool:
        for i, dtype in enumerate(LAYOUT_DTYPES):
            lay = layout_for(dtype)
            if op == OP_ADD and lay.element_size not in (1, 2, 4, 8):
                continue
            for n, block_log in ((4099, 16), ((1 << 20) + 7, 20), ((9 << 20) + 3, 23)):
                if n > (1 << 21) and dtype not in ("BF16", "F32", "C128"):
                    continue
                ref = sample(n, i)
                new = bytearray(ref)
                arr = np.frombuffer(new, dtype=np.uint8)
                arr[::97] ^= 0x5A  # a sparse change, also in the tail
                arr[-1] ^= 1
                enc = encode_chunk(
                    bytes(new), layout=lay, reference=ref, reference_digest=ref_digest, op=op,
                    block_log=block_log, executor=pool, min_saving=-1.0,
                )  # fmt: skip
                out = bytearray(n)
                decode_into(enc.codec, b"".join(bytes(p) for p in enc.parts), out, reference=ref, executor=pool)
                assert bytes(out) == bytes(new), (dtype, n, block_log, enc.codec)


# -- saves through the store ------------------------------------------------------------------------------------

TORCH_DTYPES = [torch.bool, torch.int8, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.int64,
                torch.float64, torch.complex64, torch.complex128]  # fmt: skip


def tensor(dtype: torch.dtype, n: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, generator=g) * 0.02
    if dtype == torch.bool:
        return x > 0.01
    if dtype in (torch.int8, torch.uint8, torch.int64):
        return (x * 1000).to(dtype)
    if dtype.is_complex:
        return torch.complex(x, x.flip(0)).to(dtype)
    return x.to(dtype)


@pytest.mark.parametrize("chunk_size", [4096 + 5, (1 << 20) + 3])
def test_three_saves_of_every_dtype_with_odd_chunks_load_exactly(tmp_path: Path, chunk_size: int) -> None:
    """Keyframes hashed while encoded, then deltas (XOR and ADD) from a new process's cache state: every chunk
    ends in a tail (the chunk size is no multiple of any element size) and the last chunk is short."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=chunk_size, pack_size=0)
    g = torch.Generator().manual_seed(3)
    elements = 3 * chunk_size // 16 + 7 if chunk_size < 8192 else 2 * chunk_size // 8 + 3
    state = {"model": {str(d).split(".")[1]: tensor(d, elements, g) for d in TORCH_DTYPES}}
    saved = []
    for step in range(3):
        saved.append((store.save(state, step=step).id, clone(state)))
        if step == 1:
            REFERENCES.clear()  # as a new process continuing the run
        for v in state["model"].values():  # a sparse change, also past each chunk's first 4 KiB
            flat = v.view(-1)
            idx = torch.arange(step % 5, flat.numel(), 37)
            flat[idx] = tensor(v.dtype, idx.numel(), g)
    report = store.verify()
    assert report.ok, report
    assert {p.read_bytes()[5] for p in (tmp_path / "s").rglob("chunks/*/*")} >= {1, 2}  # grouped and deltas
    for sid, want in saved:
        assert_equal(store.load(sid), want)


# -- damaged references between saves ---------------------------------------------------------------------------


def weights(step: int, n: int = 4 * CHUNK // 4) -> torch.Tensor:
    """A weight a few Adam-sized steps from the last: consecutive saves are deltas of each other."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(n, generator=g) * 0.02
    for _ in range(step):
        w = w + torch.randn(n, generator=g) * 1e-4
    return w


def damage_file(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    path.chmod(0o644)
    if how == "flip":
        path.write_bytes(data[:-40] + bytes([data[-40] ^ 0x10]) + data[-39:])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # another valid chunk's object in its place
        path.write_bytes(other.read_bytes())


def load_or_refuse(store: ckpt.Store, sid: str, want: dict[str, Any]) -> None:
    try:
        back = store.load(sid)
    except CkptError:
        return
    assert_equal(back, want)


@pytest.mark.parametrize("how", ["flip", "truncate", "other"])
@pytest.mark.parametrize("when", ["after-first", "after-second"])
def test_a_keyframe_damaged_between_saves_is_never_built_on(tmp_path: Path, how: str, when: str) -> None:
    """The keyframes of the first save are damaged after it (the next save decodes them: no copies kept) or
    after the second (whose deltas were proven against their stored bytes): the saves after that load exactly,
    each earlier one loads exactly or fails with a CkptError."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK, pack_size=0)
    saved: list[tuple[str, dict[str, Any]]] = []
    for step in range(4):
        state = {"model": {"w": weights(step), "b": weights(step, 3 * CHUNK // 2).to(torch.bfloat16)}}
        saved.append((store.save(state, step=step).id, clone(state)))
        if step == (0 if when == "after-first" else 1):
            first = saved[0][0]
            keys = digests(store, first, "model/w") + digests(store, first, "model/b")
            for i, d in enumerate(keys):
                damage_file(chunk_file(root, d), how, chunk_file(root, keys[(i + 1) % len(keys)]))
            broken = step
    for sid, want in saved[broken + 1 :]:
        assert_equal(store.load(sid), want)
    for sid, want in saved[: broken + 1]:
        load_or_refuse(store, sid, want)
    report = store.verify()
    before = {d for sid, _ in saved[: broken + 1] for t in ("model/w", "model/b") for d in digests(store, sid, t)}
    after = {d for sid, _ in saved[broken + 1 :] for t in ("model/w", "model/b") for d in digests(store, sid, t)}
    damaged = {d.digest for d in report.damage}
    assert damaged and damaged <= before - after, report


def test_a_chunk_changed_only_past_its_first_4_kib_is_stored_as_changed(tmp_path: Path) -> None:
    """From the third save on, the cache keeps the parent's chunks and compares their first 4 KiB: a change
    further in (and one in the last byte) is still a change."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0)
    w = weights(0)
    saved = []
    for step in range(5):
        saved.append((store.save({"model": {"w": w}}, step=step).id, {"model": {"w": w.clone()}}))
        w = w.clone()
        view = w.view(torch.uint8)
        view[CHUNK + 4096 + step] ^= 1  # the second chunk, just past its first 4 KiB
        view[-1] ^= 0x40  # the last byte of the last chunk
    assert len({tuple(digests(store, sid, "model/w")) for sid, _ in saved}) == len(saved)
    for sid, want in saved:
        assert_equal(store.load(sid), want)
    assert store.verify().ok


@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_the_same_bytes_twice_in_a_first_save_and_under_another_branch_load_exactly(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """Tied weights, the same bytes under two names and dtypes, a chunk already stored as a delta on another
    branch: first saves (keyframes hashed while encoded, the existence check after encoding) deduplicate them."""
    if backend == "s3":
        opts = request.getfixturevalue("s3_server")
        store = ckpt.init(f"s3://ckpt-test/brk3-{tmp_path.name[-12:]}", chunk_size=CHUNK, pack_size=0, **opts)
    else:
        store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0)
    w0, w1 = weights(0), weights(1)
    store.save({"model": {"w": w0}}, step=0)
    on_main = store.save({"model": {"w": w1}}, step=1)  # deltas against step 0
    store.branch("other", at=on_main.id)
    tied = weights(2)
    state = {
        "model": {"a": tied, "b": tied, "c": w1.clone(), "d": tied.view(torch.int32)},
        "opt": {"copy": w1.clone(), "same": w0.clone()},
    }
    want = clone(state)
    snap = store.save(state, "fresh", step=0)  # a new branch: no parent, every chunk a keyframe candidate
    assert set(digests(store, snap.id, "model/c")) == set(digests(store, on_main.id, "model/w"))
    assert digests(store, snap.id, "model/a") == digests(store, snap.id, "model/b")
    assert_equal(store.load(snap.id), want)
    if backend == "file":  # (a gc on the moto server takes seconds)
        store.delete_branch("main")
        store.delete_branch("other")
        store.gc(grace=0, expire_reflog=0)
        assert_equal(store.load(snap.id), want)
        assert store.verify().ok


# -- a caller changing its tensor while a first save encodes it ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_a_tensor_changed_between_the_blocks_of_its_keyframe_is_stored_under_the_digest_of_what_was_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """A first save copies each 1 MiB block before it cuts and hashes it: the tensor changes after the first
    block's copy (as another thread could): the chunk stored is torn, but decodes to what its digest says."""
    from ckpt.store._codecs import _work

    store = ckpt.init(str(tmp_path / "s"), chunk_size=(3 << 20) + 5, pack_size=0)
    w = tensor(dtype, (4 << 20) // dtype.itemsize + 3, torch.Generator().manual_seed(5))
    before = w.clone()
    real = _work.BLOCKS.take
    taken: list[int] = []

    def take_then_scribble(nbytes: int) -> Any:
        taken.append(nbytes)
        if len(taken) == 2:  # before the second block is copied
            w.view(torch.uint8).bitwise_xor_(0x21)
        return real(nbytes)

    monkeypatch.setattr(_work.BLOCKS, "take", take_then_scribble)
    snap = store.save({"w": w})
    monkeypatch.setattr(_work.BLOCKS, "take", real)
    assert len(taken) >= 2
    report = store.verify()
    assert report.ok, report
    back = store.load(snap.id)["w"].view(torch.uint8)
    old, new = before.view(torch.uint8), w.view(torch.uint8)
    assert bool(((back == old) | (back == new)).all())


# -- the Checkpointer ---------------------------------------------------------------------------------------------


def test_async_checkpointer_saves_then_a_new_process_continuing_the_run_all_load(tmp_path: Path) -> None:
    """A model trained in place between async saves (staging buffers and the digest cache reused, frozen
    embeddings unchanged, an Adam state), the cache emptied as in a new process, then more saves."""
    root = tmp_path / "s"
    store = ckpt.init(str(root), chunk_size=CHUNK)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 32), torch.nn.Linear(32, 200), torch.nn.Linear(200, 32))
    model[0].weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randint(0, 256, (16,))
    saved: list[tuple[Any, dict[str, Any]]] = []
    for run in range(2):
        if run:
            REFERENCES.clear()
        with ckpt.Checkpointer(store, "main", async_save=True, max_pending=2) as ckpts:
            for step in range(run * 3, run * 3 + 3):
                model(x).square().mean().backward()
                opt.step()
                opt.zero_grad()
                state = {"model": model.state_dict()}
                saved.append((ckpts.save(state, step=step), clone(state)))
        for handle, _ in saved:
            handle.result()
    for handle, want in saved:
        assert_equal(store.load(handle.result().id), want)
    assert store.verify().ok


def test_packs_of_small_tensors_of_every_dtype_over_three_saves_load_exactly(tmp_path: Path) -> None:
    """Small tensors (odd byte counts, every element size) share packs: keyframes hashed while encoded, then
    deltas; a tensor whose shape changes between saves, one that appears, one that goes."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=8 << 10)
    g = torch.Generator().manual_seed(11)
    state = {f"{str(d).split('.')[1]}{i}": tensor(d, 37 * i + 5, g) for d in TORCH_DTYPES for i in range(1, 9)}
    saved = []
    for step in range(3):
        saved.append((store.save(state, step=step).id, clone(state)))
        for v in list(state.values()):
            flat = v.view(-1)
            flat[::7] = tensor(v.dtype, flat[::7].numel(), g)
        state["float322"] = tensor(torch.float32, 100 + step, g)  # its shape changes
        state[f"new{step}"] = tensor(torch.bfloat16, 999, g)
        state.pop(f"new{step - 1}", None)
    for sid, want in saved:
        assert_equal(store.load(sid), want)
    assert store.verify().ok


@pytest.mark.s3
@pytest.mark.parametrize("how", ["flip", "other"])
def test_on_s3_a_keyframe_damaged_between_saves_is_never_built_on(
    tmp_path: Path, s3_server: dict[str, Any], how: str
) -> None:
    import boto3

    prefix = f"brk3-{how}-{tmp_path.name[-10:]}"
    store = ckpt.init(f"s3://ckpt-test/{prefix}", chunk_size=CHUNK, pack_size=0, **s3_server)
    client = boto3.client("s3", endpoint_url=s3_server["endpoint_url"], region_name="us-east-1")
    saved: list[tuple[str, dict[str, Any]]] = []
    for step in range(4):
        state = {"model": {"w": weights(step)}}
        saved.append((store.save(state, step=step).id, clone(state)))
        if step == 1:
            keys = digests(store, saved[0][0], "model/w")
            for i, d in enumerate(keys):
                key = f"{prefix}/{layout.chunk_path(d)}"
                data = client.get_object(Bucket="ckpt-test", Key=key)["Body"].read()
                if how == "flip":
                    data = data[:-40] + bytes([data[-40] ^ 0x10]) + data[-39:]
                else:
                    other = f"{prefix}/{layout.chunk_path(keys[(i + 1) % len(keys)])}"
                    data = client.get_object(Bucket="ckpt-test", Key=other)["Body"].read()
                client.put_object(Bucket="ckpt-test", Key=key, Body=data)
    for sid, want in saved[2:]:
        assert_equal(store.load(sid), want)
    for sid, want in saved[:2]:
        load_or_refuse(store, sid, want)


def test_empty_tiny_and_view_tensors_around_the_encoding_threshold_load_exactly(tmp_path: Path) -> None:
    """Chunks of 0, 1, 4095, 4096 and 4097 bytes (raw or encoded, compressible or not), views at an offset of
    a larger storage, a transposed view, a 0-d tensor: a first save, then one with every one changed."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0)
    g = torch.Generator().manual_seed(13)
    big = tensor(torch.float32, 3 * CHUNK, g)
    state: dict[str, Any] = {
        "empty": torch.empty(0, dtype=torch.bfloat16),
        "one": torch.ones(1, dtype=torch.int8),
        "scalar": torch.tensor(3.5),
        "noise4095": torch.randint(0, 256, (4095,), dtype=torch.uint8, generator=g),
        "noise4096": torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=g),
        "zeros4096": torch.zeros(4096, dtype=torch.uint8),
        "small4097": tensor(torch.float16, 4097, g).view(torch.uint8)[:4097],
        "offset": big[1001 : 1001 + 2 * CHUNK // 4],
        "transposed": big[: 64 * 96].view(64, 96).t(),
    }
    saved = []
    for step in range(2):
        saved.append((store.save(state, step=step).id, clone(state)))
        for v in state.values():
            v.copy_(tensor(v.dtype, v.numel(), g).view(v.shape))  # in place: views write into their storage
    for sid, want in saved:
        assert_equal(store.load(sid), want)
    assert store.verify().ok


def test_two_threads_saving_two_branches_from_one_first_save_all_load(tmp_path: Path) -> None:
    """Both branches' first deltas decode the parent's keyframes (no copies kept) at the same time, then go on
    from their own kept chunks; a third branch from the same parent comes after both."""
    import threading

    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0)
    parent = store.save({"model": {"w": weights(0)}}, step=0)
    for name in ("a", "b", "c"):
        store.branch(name, at=parent.id)
    barrier = threading.Barrier(2)
    saved: dict[str, list[tuple[str, dict[str, Any]]]] = {"a": [], "b": [], "c": []}
    errors: list[BaseException] = []

    def run(name: str, seed: int) -> None:
        try:
            g = torch.Generator().manual_seed(seed)
            w = weights(0)
            for step in range(1, 4):
                w = w + torch.randn(w.shape, generator=g) * 1e-4
                if step == 1 and name != "c":
                    barrier.wait(timeout=60)
                state = {"model": {"w": w}}
                saved[name].append((store.save(state, name, step=step).id, clone(state)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n, i)) for i, n in enumerate("ab")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    run("c", 9)
    assert not errors, errors
    for runs in saved.values():
        for sid, want in runs:
            assert_equal(store.load(sid), want)
    assert store.verify().ok


@pytest.mark.parametrize("budget", ["64MiB", "0", "20KiB"])
def test_prune_and_gc_between_saves_and_a_new_process_all_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    """Each save's parent pruned and collected (grace 0) before the next; the cache emptied midway as in a new
    process; cache budgets large, zero and smaller than the state: the saves kept load exactly."""
    monkeypatch.setenv("CKPT_REFERENCE_CACHE", budget)
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0, delta_depth=3)
    saved: list[tuple[str, dict[str, Any]]] = []
    frozen = weights(9, 2 * CHUNK // 4)
    for step in range(6):
        state = {"model": {"w": weights(step), "frozen": frozen}}
        saved.append((store.save(state, step=step).id, clone(state)))
        if step == 3:
            REFERENCES.clear()
        if step:
            store.prune(saved[step - 1][0])
            store.gc(grace=0, expire_reflog=0)
    assert_equal(store.load(saved[-1][0]), saved[-1][1])
    assert store.verify().ok


@pytest.mark.s3
def test_on_s3_an_unchanged_chunk_rewritten_while_the_caller_changes_it_stores_what_its_digest_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: dict[str, Any]
) -> None:
    import boto3

    prefix = f"brk3-unchanged-{tmp_path.name[-10:]}"
    store = ckpt.init(f"s3://ckpt-test/{prefix}", chunk_size=CHUNK, pack_size=0, **s3_server)
    client = boto3.client("s3", endpoint_url=s3_server["endpoint_url"], region_name="us-east-1")
    w = weights(0)
    first = store.save({"model": {"w": w}}, step=0)
    target = digests(store, first.id, "model/w")[1]
    client.delete_object(Bucket="ckpt-test", Key=f"{prefix}/{layout.chunk_path(target)}")
    real = _objects.hash_chunk

    def hash_then_scribble(data: Any) -> str:
        digest = real(data)
        if digest == target:
            w.add_(1)
        return digest

    monkeypatch.setattr(_objects, "hash_chunk", hash_then_scribble)
    second = store.save({"model": {"w": w}}, step=1)
    monkeypatch.setattr(_objects, "hash_chunk", real)
    report = store.verify()
    assert all(d.digest == target for d in report.damage), report
    assert target not in digests(store, second.id, "model/w") or report.ok
    store.load(second.id)


def test_attached_files_of_odd_sizes_come_back_byte_identical(tmp_path: Path) -> None:
    """Files are chunks of one plane (``dtype=None``): empty, tiny, just under and over 4 KiB, past a block."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=(1 << 20) + 7, pack_size=0)
    rng = np.random.default_rng(4)
    text = b'{"hidden_size": 64, "layers": [1, 2, 3]}\n' * 60000
    files = {
        "empty.txt": b"",
        "one.bin": b"\x00",
        "under.json": text[:4095],
        "at.json": text[:4096],
        "config.json": text[: (2 << 20) + 3],
        "noise.bin": rng.integers(0, 256, (1 << 20) + 9, dtype=np.uint8).tobytes(),
    }
    first = store.save({"w": torch.ones(3)}, files=files)
    changed = dict(files, **{"config.json": files["config.json"][:-1] + b"}"})
    second = store.save({"w": torch.ones(3)}, files=changed)
    assert store.files(first.id) == files
    assert store.files(second.id) == changed
    assert store.verify().ok


def test_a_save_without_compression_between_compressed_saves_all_load(tmp_path: Path) -> None:
    """``save(compression=False)`` midway: raw chunks copied before their hash, then deltas against them."""
    store = ckpt.init(str(tmp_path / "s"), chunk_size=CHUNK, pack_size=0)
    saved = []
    for step in range(5):
        state = {"model": {"w": weights(step), "h": weights(step).to(torch.bfloat16)}}
        saved.append((store.save(state, step=step, compression=step not in (1, 2)).id, clone(state)))
    for sid, want in saved:
        assert_equal(store.load(sid), want)
    assert store.verify().ok
