"""Retention policies for ``Store.retain`` (and the training ``Checkpointer``).

Example:
    >>> from ckpt.retention import AnyOf, KeepBest, KeepLast
    >>> policy = AnyOf(KeepLast(3), KeepBest("val_loss", 2, mode="min"))
"""

from ckpt.store import AnyOf, KeepBest, KeepEvery, KeepLast, RetentionPolicy

__all__ = ["AnyOf", "KeepBest", "KeepEvery", "KeepLast", "RetentionPolicy"]
