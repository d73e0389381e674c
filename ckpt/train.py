"""``ckpt.train``: the training integration's public names, ``Checkpointer`` and ``SaveHandle``.

They live in the package ``ckpt.training`` (whose docs explain async saves, the digest cache and how a run is
read back from the store); this module keeps the import path ``from ckpt.train import Checkpointer``.
"""

from ckpt.training import Checkpointer, SaveHandle

__all__ = ["Checkpointer", "SaveHandle"]
