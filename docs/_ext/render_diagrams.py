"""Render the site's diagrams, ``docs/diagrams/*.mmd`` (Mermaid), to ``docs/diagrams/*.svg``.

    python docs/_ext/render_diagrams.py [--mermaid path/to/mermaid.min.js]

The site shows the SVG files, so that it loads nothing from other hosts and its diagrams show offline and
without JavaScript. Run this after editing a ``.mmd`` file, and commit both: ``tests/test_docs.py`` checks that
every SVG was rendered from its source as it is now (the source's SHA-256 is written into the SVG).

Rendering needs headless Chromium (``/usr/bin/chromium``, Debian's package) and Mermaid's browser bundle: give
its path with ``--mermaid``, or have ``npm`` fetch it (``npm pack mermaid@11`` into a temporary folder).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import re
import subprocess
import tempfile
from pathlib import Path

DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"
CHROMIUM = "/usr/bin/chromium"
MERMAID = "mermaid@11"
CONFIG = (
    '{"startOnLoad": false, "theme": "neutral", "securityLevel": "strict", "htmlLabels": false, '
    '"flowchart": {"htmlLabels": false}, "fontFamily": "sans-serif"}'
)

PAGE = """<!doctype html><html><body>
<script src="{mermaid}"></script>
<pre id="source">{source}</pre>
<div id="out"></div>
<script>
mermaid.initialize({config});
mermaid.render("diagram", document.getElementById("source").textContent).then(
  (r) => {{ document.getElementById("out").innerHTML = r.svg; document.title = "rendered"; }},
  (e) => {{ document.title = "failed: " + e; }});
</script></body></html>
"""


def source_digest(text: str) -> str:
    """The SHA-256 of a diagram's source, as written into its SVG."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fetch_mermaid(folder: Path) -> Path:
    """Mermaid's browser bundle, fetched with ``npm pack`` into ``folder``."""
    subprocess.run(["npm", "pack", MERMAID, "--silent"], cwd=folder, check=True, capture_output=True)
    tarball = next(folder.glob("mermaid-*.tgz"))
    subprocess.run(["tar", "xzf", tarball.name], cwd=folder, check=True)
    return folder / "package" / "dist" / "mermaid.min.js"


def render(source: str, mermaid_js: Path, work: Path) -> str:
    """The SVG Mermaid draws for ``source``, from a page loaded in headless Chromium."""
    page = work / "render.html"
    page.write_text(
        PAGE.format(mermaid=mermaid_js.as_uri(), source=html.escape(source), config=CONFIG), encoding="utf-8"
    )
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            f"--user-data-dir={work / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    title = re.search(r"<title>(.*?)</title>", out, flags=re.S)
    if not title or title.group(1) != "rendered":
        raise SystemExit(f"mermaid did not render: {title.group(1) if title else out[-2000:]}")
    svg = re.search(r'<div id="out">(<svg.*</svg>)</div>', out, flags=re.S)
    assert svg, out[-2000:]
    return _sized(_round_paths(svg.group(1)))


def _sized(svg: str) -> str:
    """Width and height from the viewBox instead of ``width="100%"``: an ``<img>`` of it has its real size."""
    box = re.search(r'viewBox="[-\d.]+ [-\d.]+ ([\d.]+) ([\d.]+)"', svg)
    assert box, svg[:300]
    width, height = (round(float(v)) for v in box.groups())
    head, rest = svg.split(">", 1)
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    head = re.sub(r'\sstyle="max-width:[^"]*"', "", head)
    return f'{head} width="{width}" height="{height}">{rest}'


def _round_paths(svg: str) -> str:
    """Path data with coordinates to 0.1 px (Mermaid writes 15 digits: the file gets several times smaller)."""

    def short(m: re.Match[str]) -> str:
        return re.sub(r"-?\d+\.\d{2,}", lambda n: f"{float(n.group(0)):.1f}", m.group(0))

    return re.sub(r' d="[^"]*"', short, svg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mermaid", type=Path, help="Mermaid's mermaid.min.js (default: fetched with npm pack).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckpt-diagrams-") as tmp:
        work = Path(tmp)
        mermaid_js = args.mermaid.resolve() if args.mermaid else fetch_mermaid(work)
        for mmd in sorted(DIAGRAMS.glob("*.mmd")):
            source = mmd.read_text(encoding="utf-8")
            svg = render(source, mermaid_js, work)
            note = f"<!-- rendered by docs/_ext/render_diagrams.py from {mmd.name}, sha256 {source_digest(source)} -->"
            mmd.with_suffix(".svg").write_text(f"{note}\n{svg}\n", encoding="utf-8")
            print(f"{mmd.with_suffix('.svg').relative_to(DIAGRAMS.parent.parent)}: {len(svg)} bytes")


if __name__ == "__main__":
    main()
