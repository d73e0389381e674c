__version__ = "0.1.0"

#: The name ckpt has on the Python package index: ``pip install ckpt-store`` (the module is ``ckpt``, the command
#: ``ckpt``; the index's ``ckpt`` is an unrelated project).
DISTRIBUTION = "ckpt-store"
