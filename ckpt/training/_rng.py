"""Random number generator state as ordinary, storable state: ``ckpt.rng_state()`` and ``ckpt.set_rng_state()``.

A resumed run draws the same data order and the same dropout masks as an uninterrupted one only if every
global generator it uses starts where the interrupted run left it. ``rng_state()`` captures them as a plain
tree (ints, floats, strings, tuples and uint8 tensors: nothing pickled) that goes into a snapshot next to the
model and optimizer; ``set_rng_state()`` puts them back.

Covered: Python's ``random``, NumPy's legacy global generator (``np.random.*``), torch's CPU generator and,
when CUDA is available, every CUDA device's generator. Generators your own code creates
(``np.random.default_rng()``, ``torch.Generator()``, a ``DataLoader(generator=…)``) are objects you hold: save
their state yourself (``g.get_state()`` is a uint8 tensor, ``bit_generator.state`` a dict of ints).

The tree, with the keys present for what is installed::

    {"python": {"version": 3, "state": (625 ints), "gauss_next": None},
     "numpy": {"bit_generator": "MT19937", "key": [624 ints], "pos": 624, "has_gauss": 0, "cached_gaussian": 0.0},
     "torch": <uint8 tensor>,
     "cuda": [<uint8 tensor>, ...]}

Example:
    >>> import ckpt
    >>> s = ckpt.rng_state()
    >>> import random
    >>> a = random.random()
    >>> ckpt.set_rng_state(s)
    >>> random.random() == a
    True
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Mapping
from typing import Any

from ckpt.errors import StateMismatchError

__all__ = ["rng_state", "set_rng_state"]


def _torch() -> Any:
    """torch, if it is installed (imported on first use), else ``None``."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch


def rng_state() -> dict[str, Any]:
    """The state of the global random generators, as a tree ``Store.save`` stores (nothing pickled).

    Returns:
        ``{"python": …, "numpy": …, "torch": …, "cuda": […]}``; ``torch`` when torch is installed, ``cuda``
        when CUDA is available. The tensors are copies: later draws do not change them.

    Example:
        >>> state = {"model": model.state_dict(), "rng": ckpt.rng_state()}  # doctest: +SKIP
    """
    version, internal, gauss_next = random.getstate()
    out: dict[str, Any] = {
        "python": {"version": int(version), "state": tuple(int(x) for x in internal), "gauss_next": gauss_next}
    }
    if importlib.util.find_spec("numpy") is not None:
        import numpy as np

        name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
        out["numpy"] = {
            "bit_generator": str(name),
            "key": [int(x) for x in key],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    torch = _torch()
    if torch is not None:
        out["torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Put the global random generators back where ``rng_state()`` found them.

    Keys that are absent are left alone (a state saved without torch restores Python and NumPy only); a
    saved CUDA state is applied to as many devices as both the state and this machine have.

    Args:
        state: what ``rng_state()`` returned, possibly after a trip through a store (tensors may come back as
            torch tensors or numpy arrays, the Python state's tuple as a tuple or a list).

    Raises:
        StateMismatchError: the state is not one ``rng_state()`` made.

    Example:
        >>> state = store.load("main")  # doctest: +SKIP
        >>> ckpt.set_rng_state(state["rng"])  # doctest: +SKIP
    """
    if not isinstance(state, Mapping):
        raise StateMismatchError(f"an RNG state is a mapping made by ckpt.rng_state(), got {type(state).__name__}")
    try:
        if "python" in state:
            py = state["python"]
            random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
        if "numpy" in state:
            import numpy as np

            s = state["numpy"]
            np.random.set_state(
                (
                    str(s["bit_generator"]),
                    np.asarray(s["key"], dtype=np.uint32),
                    int(s["pos"]),
                    int(s["has_gauss"]),
                    float(s["cached_gaussian"]),
                )
            )
        if "torch" in state or "cuda" in state:
            torch = _torch()
            if torch is None:
                raise StateMismatchError("this RNG state holds torch generators, but torch is not installed")
            if "torch" in state:
                torch.set_rng_state(_byte_tensor(torch, state["torch"]))
            if "cuda" in state and torch.cuda.is_available():
                saved = [_byte_tensor(torch, s) for s in state["cuda"]]
                for device, s in enumerate(saved[: torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(s, device)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise StateMismatchError(f"not an RNG state made by ckpt.rng_state(): {e}") from e


def _byte_tensor(torch: Any, value: Any) -> Any:
    """A CPU uint8 tensor from a tensor or a numpy array."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    return t.detach().to(device="cpu", dtype=torch.uint8).contiguous()
