"""Types shared by the store's modules and the layers above: progress callbacks and tensor frameworks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

__all__ = ["Framework", "Progress"]

#: Called with a number of bytes each time that many more are done (``rich`` progress bars take it as is).
Progress = Callable[[int], None]

#: What a loaded tensor is: a ``torch.Tensor`` or a ``numpy.ndarray``.
Framework = Literal["torch", "numpy"]
