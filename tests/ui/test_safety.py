"""Names are text, never markup: a store whose branch, tag, model, message, metric, metadata, file and tensor
names are shaped like XSS payloads renders them literally in every page, runs none of them, and injects no
element; the JSON API returns them verbatim; ``ckpt plot`` escapes them in SVG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

import ckpt

from .conftest import Watched, get_json

BRANCH = "<img/src=x/onerror=alert(1)>"
TAG = "<svg/onload=alert(2)>"
MODEL = "<script>alert(3)</script>"
MESSAGE = '"><img src=x onerror=alert(4)>'
METRIC = "<b>val</b>_loss"
META_KEY = "<i onmouseover=alert(5)>k</i>"
FILE = "<img src=x onerror=alert(6)>.json"
TENSOR = "<img src=x onerror=alert(7)>.weight"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> ckpt.Store:
    store = ckpt.init(str(tmp_path_factory.mktemp("xss") / "store"), chunk_size=4096)
    w = np.arange(16, dtype=np.float32)
    store.save({"model": {"w": w}}, step=1, model="plain", metrics={"val_loss": 1.0})
    store.branch(BRANCH, at="main")
    for step in (2, 3):
        store.save(
            {"model": {"w": w * step, TENSOR: w + step}},
            branch=BRANCH,
            step=step,
            model=MODEL,
            message=MESSAGE,
            metrics={METRIC: 1.0 / step, "val_loss": 1.0 / step},
            metadata={META_KEY: "<script>alert(8)</script>"},
            files={FILE: b"{}"},
        )
    store.tag(TAG, BRANCH)
    return store


@pytest.fixture(scope="module")
def hostile_url(hostile: ckpt.Store) -> Iterator[str]:
    pytest.importorskip("starlette")
    import ckpt.ui

    with ckpt.ui.serving(hostile) as url:
        yield url


def test_api_returns_names_verbatim(hostile_url: str, hostile: ckpt.Store) -> None:
    assert BRANCH in get_json(hostile_url + "api/store")["branches"]
    d = get_json(hostile_url + "api/snap/" + quote(BRANCH, safe=""))
    assert d["snapshot"]["model"] == MODEL and d["snapshot"]["message"] == MESSAGE
    assert d["snapshot"]["refs"] == {"branches": [BRANCH], "tags": [{"name": TAG, "frozen": False}]}
    assert d["files"] == [{"path": FILE, "size": 2}]
    assert any(t["name"] == "model/" + TENSOR for layer in d["tensors"]["layers"] for t in layer["tensors"])
    run = get_json(hostile_url + "api/run/" + quote(BRANCH, safe=""))
    assert METRIC in run["metrics"]


def _no_injection(p: Any) -> None:
    """Nothing of the payloads became an element or ran: no <img>, <i>, <b>; only the page's own two scripts."""
    assert p.locator("img").count() == 0 and p.locator("main i, main b").count() == 0
    assert p.eval_on_selector_all("script", "els => els.map(e => e.getAttribute('src'))") == [
        "/static/vendor/uplot/uPlot.iife.min.js",
        "/static/app.js",
    ]
    assert p.locator("svg.tree svg").count() == 0


def test_every_page_shows_the_names_as_text(hostile_url: str, hostile: ckpt.Store, page: Watched, shots: Path) -> None:
    head = hostile.branches()[BRANCH]
    p = page.open(hostile_url)
    refs = p.eval_on_selector_all("svg.tree text.ref", "els => els.map(e => e.textContent)")
    assert BRANCH in refs and TAG in refs
    assert MODEL in p.eval_on_selector_all("svg.tree text.model", "els => els.map(e => e.textContent)")
    titles = p.eval_on_selector_all("svg.tree a.node title", "els => els.map(e => e.textContent).join('\\n')")
    assert MESSAGE in titles and METRIC in titles
    _no_injection(p)
    p.screenshot(path=str(shots / "xss-tree.png"))

    p = page.open(hostile_url + "snap/" + quote(BRANCH, safe=""))
    text = p.inner_text("main")
    for name in (BRANCH, TAG, MODEL, MESSAGE, METRIC, META_KEY, FILE, "<script>alert(8)</script>"):
        assert name in text, name
    assert head[:12] in text
    _no_injection(p)
    p.click("#layers details.layer summary >> nth=0")
    p.click("#layers details.layer summary >> nth=1")
    assert "model/" + TENSOR in p.inner_text("#layers")
    _no_injection(p)
    p.screenshot(path=str(shots / "xss-snapshot.png"), full_page=True)

    p = page.open(hostile_url + "run/" + quote(BRANCH, safe=""))
    assert METRIC in p.inner_text("table#saves thead") and BRANCH in p.inner_text("h1")
    assert METRIC in " ".join(p.locator(".u-legend").all_inner_texts())
    assert BRANCH in p.eval_on_selector_all("#run-select option", "els => els.map(e => e.textContent)")
    _no_injection(p)

    p = page.open(hostile_url + "diff/main.." + quote(BRANCH, safe=""))
    assert "model/" + TENSOR in p.inner_text("#diff-tensors") and FILE in p.inner_text("#diff-files")
    assert BRANCH in p.inner_text("#diff-heads")
    _no_injection(p)
    assert page.dialogs == [] and page.errors == []


def test_plot_escapes_names_in_svg(hostile: ckpt.Store, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from ckpt.plot import save_plot

    out = save_plot(hostile, METRIC, tmp_path / "m.svg", [BRANCH])
    svg = out.read_text()
    assert "<b>" not in svg and "<img" not in svg and "<script" not in svg
    assert "&lt;b&gt;val&lt;/b&gt;_loss" in svg


def test_a_hostile_address_is_shown_as_text(hostile_url: str, page: Watched) -> None:
    payload = "<img src=x onerror=alert(9)>"
    for path in ("snap/", "run/", "diff/main.."):
        p = page.open(hostile_url + path + quote(payload, safe=""))
        assert payload in p.inner_text(".error")  # the error names the revision, as text
        _no_injection(p)
    assert page.dialogs == []
