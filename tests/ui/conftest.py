"""Fixtures for the web app: a family store, the app served on a free loopback port, headless Chromium.

The browser is Debian's Chromium (``/usr/bin/chromium``) driven by Playwright for Python with
``executable_path`` pointed at it (no ``playwright install``: nothing is downloaded). Browser tests skip when
either is missing; the JSON API tests need only the ``ui`` extra.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt

from .family import build

CHROMIUM = Path("/usr/bin/chromium")
#: As the workplace's probe starts it: no GPU, no sandbox (root), nothing fetched from the network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def get(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: status, headers (lower-case names), body; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_json(url: str) -> Any:
    status, headers, body = get(url)
    assert status == 200, (url, status, body[:500])
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[ckpt.Store, dict[str, ckpt.Snapshot]]:
    """A local store holding ``tests/ui/family.py``'s model family (built once per module)."""
    store = ckpt.init(str(tmp_path_factory.mktemp("ui") / "store"), chunk_size=4096)
    return store, build(store)


@pytest.fixture(scope="module")
def served(family: tuple[ckpt.Store, dict[str, ckpt.Snapshot]]) -> Iterator[str]:
    """The app over the family store on 127.0.0.1 and a free port; yields the base URL (``http://…/``)."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    import ckpt.ui

    with ckpt.ui.serving(ckpt.open(family[0].url)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium context (fresh profile folder), 1100×700, shared by the module's tests."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (Debian package chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="ckpt-ui-chromium-")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1100, "height": 700},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


class Watched:
    """A page that records console errors, uncaught exceptions and dialogs (an ``alert`` would be XSS)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)

    def open(self, url: str) -> Any:
        """Go to ``url`` and wait until the page has drawn itself (``data-ready`` on an element)."""
        self.page.goto(url)
        self.page.wait_for_selector("[data-ready]", state="attached", timeout=60_000)
        return self.page


@pytest.fixture
def page(browser: Any) -> Iterator[Watched]:
    """A new tab, closed after the test; the test checks ``errors`` and ``dialogs`` itself."""
    tab = browser.new_page()
    try:
        yield Watched(tab)
    finally:
        tab.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder screenshots go to (a temporary folder)."""
    return tmp_path_factory.mktemp("screenshots")
