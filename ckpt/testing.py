"""Helpers for testing code that uses ckpt: a throwaway in-memory store, a small state, deep comparison.

Example:
    >>> from ckpt.testing import assert_state_equal, memory_store, tiny_state
    >>> store = memory_store()
    >>> state = tiny_state()
    >>> _ = store.save(state)
    >>> assert_state_equal(store.load("main"), state)
"""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from ckpt.state import is_array
from ckpt.store import Store, init

__all__ = ["assert_state_equal", "memory_store", "tiny_state"]


def memory_store(*, chunk_size: int = 4096) -> Store:
    """A new store on fsspec's in-process memory filesystem, under a unique root.

    Args:
        chunk_size: small by default, so that tensors over 4 KiB span several chunks (smaller ones share packs
            of at most ``chunk_size`` bytes, as in any new store).
    """
    return init(f"memory://ckpt-testing-{uuid.uuid4().hex}", chunk_size=chunk_size)


def tiny_state(seed: int = 0) -> dict[str, Any]:
    """A small state tree with numpy tensors and every kind of JSON leaf (no torch needed)."""
    rng = np.random.default_rng(seed)
    return {
        "model": {
            "layer.weight": rng.standard_normal((8, 4)).astype(np.float32),
            "layer.bias": np.zeros(8, np.float32),
        },
        "optimizer": {"state": {0: {"step": 3}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]},
        "step": 3,
        "note": None,
        "nan": math.nan,
    }


def assert_state_equal(actual: Any, expected: Any, path: str = "") -> None:
    """Assert two state trees are equal: same structure and types, bit-identical tensors, nan equal to nan.

    Raises:
        AssertionError: naming the first path that differs.
    """
    where = path or "<root>"
    if is_array(expected):
        assert is_array(actual), f"{where}: expected a tensor, got {type(actual).__name__}"
        assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(expected, torch.Tensor):
            assert actual.dtype == expected.dtype and actual.shape == expected.shape, f"{where}: dtype/shape differ"
            a, e = actual.detach().cpu().contiguous(), expected.detach().cpu().contiguous()
            assert a.reshape(-1).view(torch.uint8).equal(e.reshape(-1).view(torch.uint8)), f"{where}: values differ"
        else:
            assert actual.dtype == expected.dtype and actual.shape == expected.shape, f"{where}: dtype/shape differ"
            assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes(), (
                f"{where}: values differ"
            )
        return
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{where}: expected a mapping, got {type(actual).__name__}"
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for k in expected:
            assert_state_equal(actual[k], expected[k], f"{path}/{k}" if path else str(k))
        return
    if isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_state_equal(a, e, f"{path}/{i}" if path else str(i))
        return
    if isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), f"{where}: {actual!r} is not nan"
        return
    assert type(actual) is type(expected) and actual == expected, f"{where}: {actual!r} != {expected!r}"
