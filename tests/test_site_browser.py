"""The built site, as a reader gets it: served over HTTP, opened in headless Chromium, every internal link whole.

The site is built into a temporary folder and served on 127.0.0.1 by ``http.server`` in a thread. Chromium
(Debian's ``chromium`` package, ``/usr/bin/chromium``; the browser tests skip without it) loads the home page
and a guide, runs their JavaScript and dumps the DOM; the test checks the title, the navigation, the search box,
and that the theme's script ran. Independently of the browser, every ``href`` and ``src`` of every built HTML
page that points inside the site is checked: the file exists and, for a ``#fragment``, the page has an element
with that id.
"""

from __future__ import annotations

import functools
import html
import http.server
import importlib.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT = 120

# (path on the site, words its <title> starts with, a heading the page shows)
PAGES = [
    ("", "Home", "ckpt"),
    ("guides/hugging-face/", "Hugging Face and PEFT folders", "Hugging Face and PEFT folders"),
]


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module (not strictly: test_docs.py checks that)."""
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_click") if not _have(m)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["NO_MKDOCS_2_WARNING"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The base URL of the site, served on 127.0.0.1 (a free port) until the module's tests are done."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="docs-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _dump_dom(url: str, profile: Path) -> str:
    """The DOM of ``url`` after its scripts ran, as headless Chromium sees it."""
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"chromium failed on {url}:\n{result.stderr[-2000:]}"
    assert result.stdout.strip(), f"chromium printed no DOM for {url}:\n{result.stderr[-2000:]}"
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")
@pytest.mark.parametrize(("path", "title", "heading"), PAGES, ids=[p[0] or "home" for p in PAGES])
def test_page_renders_in_chromium(served: str, tmp_path: Path, path: str, title: str, heading: str) -> None:
    dom = _dump_dom(served + path, tmp_path / "profile")
    m = re.search(r"<title>(.*?)</title>", dom, flags=re.S)
    assert m and html.unescape(m.group(1)).strip() == f"{title} - ckpt", f"title: {m and m.group(1)!r}"
    # the theme's script ran: it swaps the root's no-js class for js
    root = re.search(r"<html[^>]*>", dom)
    assert root and re.search(r'class="[^"]*\bjs\b', root.group(0)) and "no-js" not in root.group(0), root
    h1 = re.search(r"<h1[^>]*>(.*?)</h1>", dom, flags=re.S)
    assert h1 and re.sub(r"<[^>]+>", "", h1.group(1)).replace("¶", "").strip() == heading
    # navigation: the tabs and the sidebar, with every section and a link to each guide
    assert 'class="md-tabs' in dom and 'class="md-nav' in dom
    for section in ("Get started", "Guides", "Concepts", "Reference"):
        assert re.search(rf">\s*{section}\s*<", dom), f"no {section!r} in the navigation"
    for guide in sorted((ROOT / "docs" / "guides").glob("*.md")):
        if path != f"guides/{guide.stem}/":  # the page itself is linked as ./
            link = re.search(rf'<a [^>]*href="[^"]*\b{guide.stem}/"', dom)
            assert link, f"the navigation has no link to guides/{guide.stem}/"
    # the search box
    search = re.search(r"<input[^>]*\bmd-search__input\b[^>]*>", dom)
    assert search and 'placeholder="Search"' in search.group(0), "no search box"


class _Links(HTMLParser):
    """The ids of a page, and the URLs its elements point at."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (name == "name" and tag == "a"):
                self.ids.add(value)
            elif name in ("href", "src"):
                self.urls.append(value)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_no_internal_link_is_broken(site: Path) -> None:
    pages = {p: _parse(p) for p in sorted(site.rglob("*.html"))}
    broken: list[str] = []
    checked = 0
    for page, links in pages.items():
        rel = page.relative_to(site).as_posix()
        base = "http://site/" + rel
        for url in links.urls:
            parts = urlsplit(url)
            if parts.scheme in ("mailto", "data", "javascript", "tel") or (
                parts.scheme in ("http", "https") and not url.startswith("http://site/")
            ):
                continue  # outside the site
            if url.startswith("//"):
                continue
            target = urlsplit(urljoin(base, url))
            if target.netloc != "site":
                continue
            path = site / unquote(target.path).lstrip("/")
            if target.path.endswith("/") or path.is_dir():
                path = path / "index.html"
            checked += 1
            if not path.is_file():
                broken.append(f"{rel}: {url} (no {path.relative_to(site)})")
                continue
            fragment = unquote(target.fragment)
            if fragment and path.suffix == ".html":
                ids = pages[path].ids if path in pages else _parse(path).ids
                if fragment not in ids:
                    broken.append(f"{rel}: {url} (no #{fragment} in {path.relative_to(site)})")
    assert checked > 500, f"only {checked} links checked: is the site complete?"
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:50])


def _text(fragment: str) -> str:
    """The text of an HTML fragment (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def _code_blocks(dom: str) -> list[list[str]]:
    """The lines of every ``<pre>`` block of a page, as a reader sees them."""
    return [_text(m).splitlines() for m in re.findall(r"<pre[^>]*>(.*?)</pre>", dom, flags=re.S)]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_api_examples_render_as_highlighted_code(served: str, tmp_path: Path) -> None:
    """Docstring ``Example:`` sections show as Python sessions: highlighted, no quotes, no doctest flags."""
    dom = _dump_dom(served + "api/", tmp_path / "profile")
    assert "<blockquote" not in dom, "an Example rendered as Markdown quotes"
    assert "doctest:" not in _text(dom), "doctest flags shown"
    sessions = [lines for lines in _code_blocks(dom) if lines and lines[0].startswith(">>> ")]
    assert len(sessions) >= 20, f"only {len(sessions)} examples render as code"
    assert any('>>> store = ckpt.init("memory://docs-init")' in line for s in sessions for line in s)
    # highlighted: the prompt and the names carry Pygments' classes
    init = dom.index("docs-init")
    block = dom[dom.rindex("<pre", 0, init) : dom.index("</pre>", init)]
    assert 'class="gp"' in block and 'class="n"' in block, block[:500]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_cli_reference_keeps_each_example_on_its_own_line(served: str, tmp_path: Path) -> None:
    """Each command's examples (click's ``\\b`` paragraphs) show one command a line, as `ckpt CMD --help` does."""
    from ckpt.cli.app import cli

    dom = _dump_dom(served + "cli/", tmp_path / "profile")
    lines = {line.strip() for block in _code_blocks(dom) for line in block}
    checked = 0
    for name, command in cli.commands.items():
        help_text = command.help or ""
        if "Examples:" not in help_text:
            continue
        examples = [
            line.strip().split("#")[0].strip()
            for line in help_text.split("Examples:", 1)[1].splitlines()
            if line.strip().startswith("ckpt ")
        ]
        assert examples, name
        for example in examples:
            assert any(line.startswith(f"$ {example}") for line in lines), (name, example)
            checked += 1
    assert checked >= 30, checked


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_diagrams_render_offline(site: Path, served: str, tmp_path: Path) -> None:
    """The concept pages' diagrams are SVG files of the site: a browser draws them, nothing comes from a CDN."""
    probe = site / "diagram-probe.html"  # same origin as the pages: it can look into them
    probe.write_text(
        """<!doctype html><title>loading</title>
<iframe id="f" src="PAGE"></iframe>
<script>
document.getElementById("f").addEventListener("load", () => {
  const imgs = [...document.getElementById("f").contentDocument.querySelectorAll("img.diagram")];
  Promise.all(imgs.map((i) => i.decode().then(() => i.naturalWidth, () => 0))).then((w) => {
    document.title = "widths " + w.join(" ");
  });
});
</script>""",
        encoding="utf-8",
    )
    for page in ("concepts/object-model/", "concepts/commit-protocol/"):
        probe.write_text(re.sub(r'src="[^"]*"', f'src="{page}"', probe.read_text(), count=1), encoding="utf-8")
        dom = _dump_dom(served + probe.name, tmp_path / "profile")
        title = re.search(r"<title>(.*?)</title>", dom, flags=re.S)
        assert title and title.group(1).startswith("widths "), (page, title and title.group(1))
        widths = [int(w) for w in title.group(1).split()[1:]]
        assert widths and all(w > 200 for w in widths), (page, widths)
    probe.unlink()
    # nothing on any page loads from another host, and no Mermaid block is left for the theme to fetch a CDN for
    for path in sorted(site.rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        assert 'class="mermaid"' not in text, path
        for tag, attr in (("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src")):
            for m in re.finditer(rf"<{tag}\b[^>]*\b{attr}=\"(https?:)?//", text):
                raise AssertionError(f"{path.relative_to(site)} loads {m.group(0)}… from another host")
