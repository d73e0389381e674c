"""Screenshots of ``ckpt ui`` for the "See your runs" guide, taken in headless Chromium.

The browser tests call ``take()`` into a temporary folder. To refresh the guide's pictures::

    python -m tests.ui.screenshots            # writes docs/assets/see-your-runs/*.png

A picture is replaced only when it differs visibly from the one already there (ids and dates change from run
to run, the pictures should not), so the repository only changes when the pages do. Pictures are quantized
to a small palette to stay small.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

#: (file, page, what to wait for)
PAGES = [
    ("tree.png", "", "svg.tree[data-ready]"),
    ("run.png", "run/main", "section.chart canvas"),
    ("snapshot.png", "snap/tiny-lm-v1", "#commands"),
    ("diff.png", "diff/tiny-lm-v1..instruct", "#layer-bars"),
]
SIZE = {"width": 1000, "height": 620}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "assets" / "see-your-runs"
#: Share of pixels that may differ before a picture counts as changed.
TOLERANCE = 0.03


def shrink(path: Path) -> None:
    """Quantize a PNG to 64 colours (a screenshot of flat UI loses nothing visible)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def differs(a: Path, b: Path) -> bool:
    """Whether two pictures differ in size or in more than ``TOLERANCE`` of their pixels."""
    from PIL import Image, ImageChops

    with Image.open(a) as ia, Image.open(b) as ib:
        if ia.size != ib.size:
            return True
        delta = ImageChops.difference(ia.convert("RGB"), ib.convert("RGB")).convert("L").point(lambda v: v > 24)
        changed = sum(delta.histogram()[1:])
        return changed > TOLERANCE * ia.size[0] * ia.size[1]


def take(context: Any, url: str, folder: Path) -> list[Path]:
    """Open each page of ``PAGES`` under ``url`` and save a screenshot of the viewport into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    page = context.new_page()
    page.set_viewport_size(SIZE)
    out = []
    try:
        for name, path, ready in PAGES:
            page.goto(url + path)
            page.wait_for_selector(ready, state="attached", timeout=60_000)
            page.wait_for_selector("[data-ready]", state="attached", timeout=60_000)
            target = folder / name
            page.screenshot(path=str(target))
            shrink(target)
            out.append(target)
    finally:
        page.close()
    return out


def main(argv: list[str]) -> int:
    """Build the family store, serve it, take the pictures, and copy the changed ones into ``docs``."""
    from playwright.sync_api import sync_playwright

    import ckpt
    import ckpt.ui

    from .conftest import CHROMIUM, FLAGS
    from .family import build

    dest = Path(argv[0]) if argv else DOCS
    with tempfile.TemporaryDirectory() as tmp:
        store = ckpt.init(str(Path(tmp) / "store"), chunk_size=4096)
        build(store)
        with ckpt.ui.serving(store) as url, sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(Path(tmp) / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS
            )
            try:
                pictures = take(context, url, Path(tmp) / "shots")
            finally:
                context.close()
        dest.mkdir(parents=True, exist_ok=True)
        for picture in pictures:
            old = dest / picture.name
            if old.exists() and not differs(picture, old):
                print(f"unchanged: {old}")
                continue
            old.write_bytes(picture.read_bytes())
            print(f"wrote {old} ({old.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
