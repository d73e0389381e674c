"""The Starlette application: pages, the JSON API under ``/api/``, vendored static files; read-only.

Every route answers ``GET`` (and ``HEAD``) only; any other method gets ``405``. Pages are one static HTML shell
whose script draws the page from the JSON API, putting every name into the page as text (``textContent``),
never as markup, under a Content-Security-Policy that allows scripts from this server only. Requests whose
``Host`` header names another host are refused (``400``), so a web page elsewhere cannot reach the API
through DNS rebinding.

| route | what |
| --- | --- |
| ``/`` | the family tree |
| ``/run/<rev>`` | a run's metrics over steps |
| ``/snap/<rev>`` | one snapshot |
| ``/diff/<a>..<b>`` | per-layer relative change from A to B |
| ``/api/store`` | location, version, branches, tags |
| ``/api/graph`` | every snapshot as a laid-out node, every parent and adapter base as an edge |
| ``/api/snapshots?offset=&limit=`` | records, newest first |
| ``/api/snap/<rev>`` | the snapshot page's data |
| ``/api/run/<rev>?scope=run|lineage`` | the run view's data |
| ``/api/diff/<a>..<b>`` | ``ckpt.diff.diff`` with norms, as JSON |
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ckpt.errors import (
    AmbiguousRevisionError,
    CkptError,
    InvalidNameError,
    MissingObjectError,
    RecordError,
    RevisionError,
    RevisionNotFoundError,
)
from ckpt.ui import _views as views

if TYPE_CHECKING:
    from ckpt.store import Store

__all__ = ["LOOPBACK_HOSTS", "create_app"]

STATIC = Path(__file__).parent / "static"

#: Host names a loopback-bound server answers to.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

#: Scripts, styles, pictures and requests from this server only; no frames, no plugins, no form posts.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port: ``[::1]:8765`` → ``[::1]``, ``a.b:80`` → ``a.b``."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Guard:
    """ASGI middleware: refuse unknown ``Host`` headers, add the security headers, no caching of the API."""

    def __init__(self, app: ASGIApp, allowed_hosts: Collection[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if _host_name(host) not in self.allowed:
                response = Response(
                    f"refused: Host {host!r} is not this server's address\n", status_code=400, media_type="text/plain"
                )
                await response(scope, receive, send)
                return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + _HEADERS
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _StrictJSON(JSONResponse):
    """JSON without NaN/Infinity literals (views turn them into strings first)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _status(error: CkptError) -> int:
    if isinstance(error, AmbiguousRevisionError):
        return 409
    if isinstance(error, (RevisionNotFoundError, RevisionError)):
        return 404
    if isinstance(error, MissingObjectError):
        return 410
    if isinstance(error, (RecordError, InvalidNameError)):
        return 400
    return 500


def _error(status: int, message: str, hint: str | None = None, kind: str = "error") -> _StrictJSON:
    return _StrictJSON({"error": message, "hint": hint, "kind": kind}, status_code=status)


def create_app(store: Store, *, allowed_hosts: Collection[str] | None = LOOPBACK_HOSTS) -> Starlette:
    """The read-only web app over one store.

    Args:
        store: the store to show; every request reads its current state (no cache), so saves made while the
            app runs appear on the next page load.
        allowed_hosts: the ``Host`` header values to answer (without port); ``None`` answers any (for a
            server exposed on purpose with ``--host``).

    Returns:
        An ASGI application (serve it with uvicorn, or ``ckpt.ui.serve``).

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_app(ckpt.open()), host="127.0.0.1", port=8765)  # doctest: +SKIP
    """
    shell = (STATIC / "index.html").read_bytes()

    async def page(request: Request) -> Response:
        return HTMLResponse(shell)

    def api(view: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                data = await run_in_threadpool(view, request)
            except CkptError as e:
                return _error(_status(e), e.message, e.cli_hint, type(e).__name__)  # its readers use `ckpt`
            except OSError as e:  # the store's filesystem refused (permission denied …)
                return _error(500, str(e) or type(e).__name__, None, type(e).__name__)
            return _StrictJSON(data)

        return endpoint

    def scope_of(request: Request) -> Any:
        scope = request.query_params.get("scope", "run")
        if scope not in ("run", "lineage"):
            raise RecordError(f"scope must be run or lineage, got {scope!r}")
        return scope

    def int_param(request: Request, name: str, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise RecordError(f"{name} must be an integer, got {raw!r}") from None

    routes = [
        Route("/", page),
        Route("/run/{rev:path}", page),
        Route("/snap/{rev:path}", page),
        Route("/diff", page),
        Route("/diff/{spec:path}", page),
        Route("/api/store", api(lambda r: views.store_view(store))),
        Route("/api/graph", api(lambda r: views.graph_view(store))),
        Route(
            "/api/snapshots",
            api(
                lambda r: views.snapshots_page(
                    store, offset=int_param(r, "offset", 0), limit=int_param(r, "limit", 100)
                )
            ),
        ),
        Route("/api/snap/{rev:path}", api(lambda r: views.snapshot_view(store, r.path_params["rev"]))),
        Route("/api/run/{rev:path}", api(lambda r: views.run_view(store, r.path_params["rev"], scope=scope_of(r)))),
        Route(
            "/api/diff/{spec:path}",
            api(lambda r: views.diff_view(store, *views.parse_diff_spec(r.path_params["spec"]))),
        ),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if request.url.path.startswith("/api/"):
            return _error(status, str(detail))
        return Response(f"{status}: {detail}\n", status_code=status, media_type="text/plain")

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.add_middleware(_Guard, allowed_hosts=allowed_hosts)
    return app
