"""The digest cache: the chunk digests of live tensors, trusted only while a tensor is provably unchanged.

A tensor's digests are remembered with its identity: its storage (alive: an address reused after a free does
not count), data pointer, offset, shape, strides, dtype, device and torch's version counter ``_version``,
which every in-place torch operation bumps. A hit is also checked against a sample of the tensor's own
elements as they were when hashed, which catches writes that bypass the version counter (fused optimizers,
``p.data.add_()``, numpy views); a tensor caught that way is never cached again (``untracked``).

Entries are kept for the tensors of the latest save only: a tensor that leaves the state is forgotten, so
that its digests (whose chunks only pruned snapshots may still reference, and ``gc`` may delete) are never
offered to a later save.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["DigestCache", "Identity", "cacheable"]

#: elements compared on a cache hit (every element of a smaller tensor)
SAMPLE = 64


@dataclass
class Identity:
    """What makes a live tensor the same tensor, unchanged, as when its digests were computed."""

    storage: weakref.ref[Any]
    data_ptr: int
    offset: int
    version: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: Any
    device: Any
    index: Any  # sampled element positions (cpu int64 tensor)
    sample: bytes = b""
    digests: tuple[str, ...] = ()

    def matches(self, t: Any) -> bool:
        """The same storage, place, layout and version (the sample is checked separately)."""
        return bool(
            self.version == t._version
            and self.data_ptr == t.data_ptr()
            and self.offset == t.storage_offset()
            and self.shape == tuple(t.shape)
            and self.stride == tuple(t.stride())
            and self.dtype == t.dtype
            and self.device == t.device
            and self.storage() is t.untyped_storage()
        )


class DigestCache:
    """Chunk digests of live tensors by their key in the state tree; thread-safe.

    Attributes:
        untracked: keys of tensors caught changing without a version bump; never cached again.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Identity] = {}
        self.untracked: set[str] = set()
        self._lock = threading.Lock()
        self._rand: Any = None  # a private generator: the global ones belong to the training run

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __getitem__(self, key: str) -> Identity:
        return self._entries[key]

    def lookup(self, key: str, t: Any) -> tuple[str, ...] | None:
        """The digests of a ``cacheable`` tensor if it is provably unchanged since they were computed, else ``None``.

        A tensor whose identity matches but whose sampled elements differ changed behind torch's version
        counter: it is forgotten and never trusted again.
        """
        with self._lock:
            if key in self.untracked:
                return None
            known = self._entries.get(key)
        if known is None or not known.matches(t):
            return None
        if sample(t, known.index) == known.sample:
            return known.digests
        with self._lock:
            self.untracked.add(key)
            self._entries.pop(key, None)
        return None

    def identify(self, key: str, t: Any) -> Identity | None:
        """A new identity for a ``cacheable`` tensor (its sample is taken later, from the staged copy), or
        ``None`` for a tensor caught changing behind torch's version counter."""
        if key in self.untracked:
            return None
        import torch

        if self._rand is None:
            self._rand = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        n = int(t.numel())
        if n <= SAMPLE:
            index = torch.arange(n)
        else:  # 32 evenly spaced (the first and the last included) and 32 random elements
            spread = torch.linspace(0, n - 1, SAMPLE // 2, dtype=torch.float64).to(torch.int64)
            index = torch.cat([spread, torch.randint(n, (SAMPLE // 2,), generator=self._rand)])
        return Identity(
            storage=weakref.ref(t.untyped_storage()),
            data_ptr=int(t.data_ptr()),
            offset=int(t.storage_offset()),
            version=int(t._version),
            shape=tuple(int(d) for d in t.shape),
            stride=tuple(int(s) for s in t.stride()),
            dtype=t.dtype,
            device=t.device,
            index=index,
        )

    def remember(self, key: str, identity: Identity, digests: tuple[str, ...]) -> None:
        """Record the digests a committed save computed for a tensor."""
        identity.digests = digests
        with self._lock:
            if key not in self.untracked:
                self._entries[key] = identity

    def keep_only(self, keys: Iterable[str]) -> None:
        """Forget every tensor but these (the keys of the latest save)."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._entries if k not in keep]:
                del self._entries[key]

    def clear(self) -> None:
        """Forget every tensor (``untracked`` stays)."""
        with self._lock:
            self._entries.clear()


def cacheable(t: Any) -> bool:
    """Whether torch's version counter can vouch for this tensor (and its live bytes can stand in for a copy)."""
    torch = sys.modules["torch"]
    from ckpt.state import dtype_name

    try:
        if t.is_inference():  # no version counter
            return False
    except AttributeError:  # pragma: no cover - very old torch
        return False
    return bool(
        t.layout == torch.strided
        and t.device.type in ("cpu", "cuda")
        and t.is_contiguous()
        and not t.is_conj()
        and not t.is_neg()
        and t.numel() > 0
        and dtype_name(t.dtype) is not None
    )


def sample(t: Any, index: Any) -> bytes:
    """The raw bytes of the elements at ``index`` of a contiguous tensor."""
    import torch

    values = t.detach().reshape(-1)[index.to(t.device)]
    return bytes(values.cpu().contiguous().view(torch.uint8).numpy().tobytes())
