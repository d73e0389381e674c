"""Serving the app with uvicorn: loopback by default, a non-loopback address only when asked for explicitly."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn

from ckpt.errors import CkptError
from ckpt.ui._app import LOOPBACK_HOSTS, create_app

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Binding", "bind", "is_loopback", "serve", "serving"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address (``127.0.0.0/8``, ``::1``).

    Raises:
        CkptError: the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CkptError(f"cannot resolve the host {host!r}: {e}", hint="give an address such as 127.0.0.1") from e
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


@dataclass
class Binding:
    """A listening socket and the URL it answers at.

    Attributes:
        socket: the bound, listening socket.
        host: the host asked for.
        port: the port bound (the free one chosen when asked for port 0).
        url: ``http://host:port/``.
        loopback: whether the host is a loopback address.
    """

    socket: socket.socket
    host: str
    port: int
    url: str
    loopback: bool


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, allow_remote: bool = False) -> Binding:
    """Bind and listen, refusing a non-loopback address unless ``allow_remote``.

    Args:
        host: the address or name to listen on.
        port: the TCP port; 0 picks a free one.
        allow_remote: listen on an address other machines can reach (the command line sets it only when
            ``--host`` is given explicitly).

    Raises:
        CkptError: a non-loopback host without ``allow_remote``, a host that does not resolve, or a port in
            use or not allowed.
    """
    loopback = is_loopback(host)
    if not loopback and not allow_remote:
        raise CkptError(
            f"refusing to serve on {host}: it is not a loopback address, so other machines could read the store",
            hint="to expose the store on purpose, pass allow_remote=True",
            cli_hint=f"to expose the store on purpose, pass --host {host} explicitly",
        )
    plain = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(plain, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise CkptError(
                f"port {port} on {host} is in use",
                hint="pick another port, or port=0 for a free one",
                cli_hint="pick another with --port N, or --port 0 for a free one",
            ) from e
        raise CkptError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    bound = int(sock.getsockname()[1])
    shown = f"[{plain}]" if ":" in plain else plain
    return Binding(socket=sock, host=host, port=bound, url=f"http://{shown}:{bound}/", loopback=loopback)


def _server(store: Store, binding: Binding) -> uvicorn.Server:
    allowed: Any = LOOPBACK_HOSTS if binding.loopback else None
    app = create_app(store, allowed_hosts=allowed)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
    return uvicorn.Server(config)


def serve(store: Store, binding: Binding) -> None:
    """Serve the app on a bound socket until Ctrl-C (or SIGTERM); returns when the server has stopped.

    Args:
        store: the store to show, read-only.
        binding: from ``bind()``.

    Raises:
        KeyboardInterrupt: after a clean shutdown on Ctrl-C (uvicorn re-raises the signal it caught).
    """
    try:
        _server(store, binding).run(sockets=[binding.socket])
    finally:
        binding.socket.close()


@contextlib.contextmanager
def serving(store: Store, host: str = DEFAULT_HOST, port: int = 0, *, allow_remote: bool = False) -> Iterator[str]:
    """Serve the app in a background thread for the duration of a ``with`` block (tests, notebooks).

    The socket listens before the block starts, so requests made inside it are answered as soon as the
    server's loop runs (they wait in the socket's queue until then).

    Yields:
        The base URL, e.g. ``http://127.0.0.1:40123/``.

    Example:
        >>> with serving(store) as url:  # doctest: +SKIP
        ...     print(url)  # open it in a browser
    """
    binding = bind(host, port, allow_remote=allow_remote)
    server = _server(store, binding)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [binding.socket]}, name="ckpt-ui", daemon=True)
    thread.start()
    try:
        yield binding.url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        binding.socket.close()
