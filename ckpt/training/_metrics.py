"""The numbers a training framework logged, as metrics a snapshot records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["scalar_metrics"]


def scalar_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a framework's logged values (``trainer.callback_metrics``, an evaluation's metrics) as
    floats; everything else (bools, tensors of several elements, strings …) is left out.

    This picks what to record from a mapping that holds more than metrics; ``ckpt.model.clean_metrics`` then
    checks what is recorded (and refuses a value that is not a number).

    Example:
        >>> scalar_metrics({"val_loss": 0.5, "epoch": 3, "done": True, "name": "x"})
        {'val_loss': 0.5, 'epoch': 3.0}
    """
    out: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, bool):
            continue
        numel = getattr(value, "numel", None)
        if callable(numel) and numel() != 1:
            continue
        try:
            out[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out
