"""Staging: what ``save()`` does while the loop waits — copy the state's tensors into reused buffers.

A ``Slot`` is one set of staging buffers (tensor key → CPU tensor or numpy array). Each async save in flight
owns one slot until it is committed; the ``SlotPool`` bounds how many exist, and hands out the most recently
used (warmest) one first. Buffers are reused from save to save while a tensor keeps its dtype and shape;
a tensor that changes shape gets a new buffer (the old one is freed), and one that leaves the state gives its
buffer back. A buffer whose committed bytes a live tensor still equals, byte for byte, is not refilled: it
stands for the tensor in the next save (``_digest_cache``).
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckpt.errors import UnsupportedStateError
from ckpt.state import TensorSource, alias_key, flatten, tensor_name
from ckpt.store import ProvenSource
from ckpt.training._digest_cache import DigestCache, cacheable

__all__ = ["Slot", "SlotPool", "Staged", "StagedTensor", "stage"]


class Slot:
    """One set of staging buffers, reused from save to save."""

    def __init__(self) -> None:
        self.buffers: dict[str, Any] = {}

    def nbytes(self) -> int:
        """Host memory held by the buffers."""
        return sum(int(b.nbytes) for b in self.buffers.values())


class SlotPool:
    """At most ``size`` slots; ``take()`` blocks while all are in use."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: queue.LifoQueue[Slot] = queue.LifoQueue()  # the warmest set of buffers first
        for _ in range(size):
            self._free.put(Slot())

    def take(self) -> Slot:
        """A free slot (waits for one)."""
        return self._free.get()

    def give(self, slot: Slot) -> None:
        """Return a slot no save reads any more."""
        self._free.put(slot)

    def release(self) -> None:
        """Free the buffers of the slots not in use."""
        while True:
            try:
                slot = self._free.get_nowait()
            except queue.Empty:
                return
            slot.buffers.clear()


@dataclass
class StagedTensor:
    """One torch tensor of a save: its digests reused from the cache (``hit``), or whether the digests this save
    computes for its staging buffer are to be remembered (``remember``)."""

    key: str
    hit: tuple[str, ...] | None = None
    remember: bool = False


@dataclass
class Staged:
    """A state tree ready for the background: tensors replaced by ``TensorSource`` over staged (or live) bytes."""

    tree: Any
    slot: Slot | None = None  # whose buffers hold the staged bytes
    tensors: dict[int, StagedTensor] = field(default_factory=dict)  # id(TensorSource) -> what is known of it
    keys: set[str] = field(default_factory=set)

    @property
    def reused(self) -> int:
        """How many tensors were found unchanged (neither copied nor hashed)."""
        return sum(t.hit is not None for t in self.tensors.values())


def stage(state: Any, slot: Slot | None, cache: DigestCache | None) -> Staged:
    """Copy the state's tensors into ``slot`` (``None``: no copy, the save is synchronous), reusing the digests
    of tensors ``cache`` finds unchanged; stateful objects (modules, optimizers …) become their state dicts.

    Raises:
        UnsupportedStateError: a leaf cannot be stored, or the tree contains itself.
    """
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    out = Staged(tree=None, slot=slot)
    seen: set[int] = set()
    devices: set[Any] = set()  # CUDA devices copied from without blocking

    def forget(key: str) -> None:  # before a buffer is refilled: its known digests no longer name its bytes
        if cache is not None and slot is not None:
            cache.forget(slot, key)

    def unique(path: str) -> str:
        name = tensor_name(path, out.keys)  # the names ``flatten`` gives
        out.keys.add(name)
        return name

    def tensor(t: Any, key: str) -> TensorSource:
        from ckpt.state import torch_source

        digests = cache.lookup(slot, key, t) if cache is not None and slot is not None else None
        if digests is not None:  # byte for byte the buffer whose digests are known: neither copied nor hashed
            assert slot is not None
            bare = torch_source(slot.buffers[key], key)  # the save's own copy stands for the live tensor
            proven = ProvenSource(bare.dtype, bare.shape, bare.kind, bare.data, bare.owner, digests)
            out.tensors[id(proven)] = StagedTensor(key, hit=digests)  # the id of the object the tree holds
            return proven
        forget(key)
        if slot is None:
            staged = t.detach()
        else:
            staged = buffer(slot, key, t)
            cuda = t.device.type == "cuda"
            staged.copy_(t.detach(), non_blocking=cuda)
            if cuda:
                devices.add(t.device)
        src = torch_source(staged, key)
        remember = cache is not None and slot is not None and cacheable(t)
        out.tensors[id(src)] = StagedTensor(key, remember=remember)
        return src

    def array(a: Any, key: str) -> Any:
        forget(key)
        return stage_array(a, key, slot)

    def source(src: TensorSource, key: str) -> TensorSource:
        forget(key)
        return stage_source(src, key, slot)

    staged_as: dict[Any, Any] = {}  # alias_key → the staged leaf: tied tensors stay one tensor (recorded as tied)

    def leaf(value: Any, path: str, stage_one: Any) -> Any:
        name = unique(path)
        key = alias_key(value)
        if key not in staged_as:
            staged_as[key] = stage_one(value, name)
        return staged_as[key]

    def walk(value: Any, path: str) -> Any:
        if torch is not None and isinstance(value, torch.Tensor):
            return leaf(value, path, tensor)
        if np is not None and isinstance(value, np.ndarray):
            return leaf(value, path, array)
        if isinstance(value, TensorSource):
            return leaf(value, path, source)
        if is_stateful(value):  # a module, an optimizer, a scheduler …: its state dict
            value = value.state_dict()
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in seen:
                raise UnsupportedStateError(f"the state tree contains itself at {path or '<root>'}")
            seen.add(id(value))
            try:
                if isinstance(value, Mapping):
                    return {k: walk(v, f"{path}/{k}" if path else str(k)) for k, v in value.items()}
                items = [walk(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(value)]
                return tuple(items) if isinstance(value, tuple) else items
            finally:
                seen.discard(id(value))
        return value

    if torch is not None:
        with torch.no_grad():
            out.tree = walk(state, "")
        for device in devices:  # every device: synchronize() alone waits only for the current one
            torch.cuda.synchronize(device)
    else:
        out.tree = walk(state, "")
    if slot is not None:
        for key in set(slot.buffers) - out.keys:
            forget(key)
            del slot.buffers[key]  # a tensor that left the state gives its memory back
    flatten(out.tree)  # refuse what cannot be stored now, not in the background
    return out


def is_stateful(value: Any) -> bool:
    """Whether a leaf is an object with ``state_dict()``/``load_state_dict()`` (not a tensor, not a mapping)."""
    return (
        not isinstance(value, (Mapping, list, tuple, str, bytes, int, float))
        and callable(getattr(value, "state_dict", None))
        and callable(getattr(value, "load_state_dict", None))
    )


def buffer(slot: Slot, key: str, like: Any) -> Any:
    """The slot's staging tensor for ``key``, reused when dtype and shape fit (pinned for CUDA tensors)."""
    import torch

    pin = like.device.type == "cuda"
    buf = slot.buffers.get(key)
    if (
        buf is None
        or not isinstance(buf, torch.Tensor)
        or buf.dtype != like.dtype
        or buf.shape != like.shape
        or buf.is_pinned() != pin
    ):
        slot.buffers.pop(key, None)  # freed before the new one is made: the peak is one buffer, not two
        buf = torch.empty(like.shape, dtype=like.dtype, pin_memory=pin)
        slot.buffers[key] = buf
    return buf


def stage_array(a: Any, key: str, slot: Slot | None) -> Any:
    """A numpy array: copied into the slot's reused buffer (never cached)."""
    if slot is None:
        return a
    import numpy as np

    buf = slot.buffers.get(key)
    if not isinstance(buf, np.ndarray) or buf.dtype != a.dtype or buf.shape != a.shape:
        slot.buffers.pop(key, None)
        buf = np.empty(a.shape, dtype=a.dtype)
        slot.buffers[key] = buf
    np.copyto(buf, a)
    return buf


def stage_source(src: TensorSource, key: str, slot: Slot | None) -> TensorSource:
    """A ``TensorSource`` leaf: its bytes copied into the slot's reused buffer (hashed again: digests the caller
    claims for them are dropped, a save proves what it stores)."""
    if slot is None:
        return TensorSource(src.dtype, src.shape, src.kind, src.data, src.owner) if src.digests else src
    import numpy as np

    data = src.data.cast("B") if src.data.format != "B" else src.data
    buf = slot.buffers.get(key)
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.shape != (data.nbytes,):
        slot.buffers.pop(key, None)
        buf = np.empty(data.nbytes, dtype=np.uint8)
        slot.buffers[key] = buf
    view = memoryview(buf)  # type: ignore[arg-type]
    view[:] = data
    return TensorSource(src.dtype, src.shape, src.kind, view, buf)  # digests a caller claims are not carried over
