"""``ckpt ui``: a local, read-only web app over a store (an optional extra: ``pip install 'ckpt-store[ui]'``).

Four pages, each with a deep link: the family tree (``/``), a run's metric curves (``/run/<branch>``), one
snapshot (``/snap/<rev>``) and the per-layer change between two (``/diff/<a>..<b>``), drawn from a JSON API under
``/api/``. The tree and the curves read snapshot records only, never tensors. It is built from Starlette and
uvicorn, with uPlot vendored for the curves (``static/vendor``: no CDN, works offline); the tree is laid out
in Python (``ckpt.ui._graph``) and drawn as SVG.

Importing ``ckpt.ui`` needs no extra; the functions below import Starlette and uvicorn when called and say
what to install when they are missing::

    import ckpt, ckpt.ui
    with ckpt.ui.serving(ckpt.open()) as url:   # a background server, e.g. in a notebook
        print(url)
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from ckpt._extras import install_hint
from ckpt.errors import CkptError

if TYPE_CHECKING:
    from ckpt.store import Store
    from ckpt.ui._server import Binding as Binding
    from ckpt.ui._server import bind as bind
    from ckpt.ui._server import serve as serve

__all__ = ["create_app", "require", "serving"]

#: The modules the extra brings.
_NEEDS = ("starlette", "uvicorn")
#: What ``ckpt ui`` needs of the server (not in ``__all__``), imported on first use: it imports uvicorn.
_SERVER = frozenset(("Binding", "bind", "serve"))


def __getattr__(name: str) -> Any:
    """``bind``, ``serve`` and ``Binding`` of the server module, on first use (PEP 562)."""
    if name not in _SERVER:
        raise AttributeError(f"module 'ckpt.ui' has no attribute {name!r}")
    require()
    from ckpt.ui import _server

    return getattr(_server, name)


def require() -> None:
    """Check that the ``ui`` extra is installed.

    Raises:
        CkptError: Starlette or uvicorn cannot be imported; the hint is the ``pip install`` command.
    """
    import importlib

    missing = []
    for module in _NEEDS:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise CkptError(f"`ckpt ui` needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                        "not installed", hint=install_hint("ui"))  # fmt: skip


def create_app(store: Store, *, allowed_hosts: Collection[str] | None = None) -> Any:
    """The read-only Starlette app over ``store``.

    Args:
        store: the store to show.
        allowed_hosts: ``Host`` header values to answer; default: the loopback names only.

    Raises:
        CkptError: the ``ui`` extra is not installed.
    """
    require()
    from ckpt.ui._app import LOOPBACK_HOSTS
    from ckpt.ui._app import create_app as build

    return build(store, allowed_hosts=LOOPBACK_HOSTS if allowed_hosts is None else allowed_hosts)


@contextlib.contextmanager
def serving(store: Store, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False) -> Iterator[str]:
    """Serve the app in a background thread while the ``with`` block runs; yields its URL.

    Args:
        store: the store to show.
        host: the address to listen on (loopback by default).
        port: the TCP port; 0 picks a free one.
        allow_remote: required to listen on a non-loopback address.

    Raises:
        CkptError: the ``ui`` extra is missing, the address is not loopback without ``allow_remote``, or the
            port is in use.

    Example:
        >>> with ckpt.ui.serving(store) as url:  # doctest: +SKIP
        ...     input(f"open {url}, then press Enter")
    """
    require()
    from ckpt.ui._server import serving as run

    with run(store, host, port, allow_remote=allow_remote) as url:
        yield url
