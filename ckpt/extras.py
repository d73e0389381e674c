"""Optional extras: the one place that names the distribution, so every "install this" hint agrees.

ckpt's core needs only its required dependencies; the web app (``ckpt ui``), plots (``ckpt plot``), torch,
S3 and the other filesystems come with extras of the distribution. When a feature's extra is missing, the
error's hint is :func:`install_hint`'s ``pip install '<distribution>[<extra>]'``.
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "install_hint"]

#: The name the package is installed under (``pip install <DISTRIBUTION>``); a test checks it against
#: ``[project] name`` in pyproject.toml, so a rename of the distribution is made here and nowhere else.
DISTRIBUTION = "ckpt-store"  # the index's "ckpt" is an unrelated project; the module is `ckpt`


def install_hint(extra: str) -> str:
    """The command that installs one of ckpt's extras, quoted for a POSIX shell.

    Args:
        extra: the extra's name, e.g. ``ui`` or ``plot``.

    Returns:
        e.g. ``pip install 'ckpt-store[ui]'``.

    Example:
        >>> install_hint("ui")
        "pip install 'ckpt-store[ui]'"
    """
    return f"pip install '{DISTRIBUTION}[{extra}]'"
