"""``ckpt ui`` page loads over a store of many snapshots, against reading the records alone, in the same run.

    python benchmarks/ui.py [--snapshots 1000] [--repeat 5] [--no-browser]

Builds a store of ``--snapshots`` snapshots shaped like a busy project (a long main run, a branch every 50
saves, fine-tunes with their own runs, frozen releases, pruned saves; tiny tensors, because the pages read
records only), serves it with ``ckpt.ui.serving`` on 127.0.0.1, and prints, each the median of ``--repeat``:

- baseline: ``store.snapshots()``, every record read through the public API: the floor of any view that shows
  every snapshot (``ckpt log --all`` pays the same);
- ``/api/graph``: the family tree's data (records, refs, layout, JSON) over HTTP;
- the tree page in headless Chromium: navigation start → the SVG drawn (every node and edge in the DOM),
  as the page itself measures it (``performance.now()``), shell, scripts and API call included;
- the run page of main and a snapshot page, the same way.

The last line is one JSON object with the figures (seconds) and ``page_ratio`` = tree page / baseline. The
goal for 1,000 snapshots is a tree page under 1 s on this project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

import ckpt
import ckpt.ui

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def build(store: ckpt.Store, n: int) -> None:
    """``n`` snapshots: main's run, a 10-save branch off every 40th of its saves, a fine-tune off every 150th,
    a frozen release every 250th."""
    w = np.zeros(4, np.float32)
    made = 0
    step = 0
    runs = 0
    while made < n:
        step += 100
        runs += 1
        loss = 2.0 / (1 + step / 2000)
        snap = store.save({"w": w + step}, step=step, epoch=step // 1000, model="big-lm",
                          metrics={"train_loss": loss, "val_loss": loss * 1.1}, message=f"step {step}")  # fmt: skip
        made += 1
        if runs % 40 == 0 and made < n:
            name = f"exp/{made}"
            store.branch(name, at=snap.id)
            for j in range(min(10, n - made)):
                store.save({"w": w - step - j}, branch=name, step=step + 10 * (j + 1), metrics={"val_loss": loss})
                made += 1
        if runs % 150 == 0 and made < n:
            line = f"ft/{made}"
            store.derive(snap.id, {"w": w * 2 + step}, branch=line, model="big-lm-instruct", step=0)
            made += 1
        if runs % 250 == 0:
            store.freeze(snap.id, name=f"big-lm-v{runs // 250}")
    history = store.log("main")
    for s in history[5:-5:3]:  # retention released a third of main's older saves
        if not any(t.id == s.id for t in store.tags().values()):
            store.prune(s.id)


def median(f: Callable[[], float], repeat: int) -> float:
    return statistics.median(f() for _ in range(repeat))


def timed(f: Callable[[], object]) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium page loads")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        store = ckpt.init(str(Path(tmp) / "store"), chunk_size=4096)
        t = time.perf_counter()
        build(store, args.snapshots)
        count = len(store.snapshots())
        print(f"store: {count} snapshots, {len(store.branches())} branches, {len(store.tags())} tags "
              f"(built in {time.perf_counter() - t:.1f} s)")  # fmt: skip
        result: dict[str, float | int] = {"snapshots": count}
        result["records_s"] = median(lambda: timed(store.snapshots), args.repeat)
        with ckpt.ui.serving(ckpt.open(store.url)) as url:

            def fetch(path: str) -> bytes:
                with urllib.request.urlopen(url + path, timeout=600) as r:
                    return bytes(r.read())

            size = len(fetch("api/graph"))
            result["api_graph_s"] = median(lambda: timed(lambda: fetch("api/graph")), args.repeat)
            result["api_graph_bytes"] = size
            result["api_run_s"] = median(lambda: timed(lambda: fetch("api/run/main")), args.repeat)
            if not args.no_browser and CHROMIUM.exists():
                from playwright.sync_api import sync_playwright

                with sync_playwright() as p:
                    context = p.chromium.launch_persistent_context(
                        str(Path(tmp) / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
                        viewport={"width": 1200, "height": 800},
                    )  # fmt: skip
                    page = context.new_page()

                    def load(path: str) -> float:
                        page.goto(url + path)
                        page.wait_for_selector("main[data-drawn-ms]", state="attached", timeout=600_000)
                        return float(page.get_attribute("main", "data-drawn-ms") or "nan") / 1000

                    load("")  # warm: the browser's first start, static files cached
                    nodes = page.locator("svg.tree a.node").count()
                    assert nodes == count, (nodes, count)
                    result["tree_page_s"] = median(lambda: load(""), args.repeat)
                    result["run_page_s"] = median(lambda: load("run/main"), args.repeat)
                    result["snapshot_page_s"] = median(lambda: load("snap/main"), args.repeat)
                    context.close()
    base = float(result["records_s"])
    rows = [("read every record (baseline)", "records_s"), ("GET /api/graph", "api_graph_s"),
            ("GET /api/run/main", "api_run_s"), ("tree page, drawn", "tree_page_s"),
            ("run page of main, drawn", "run_page_s"), ("snapshot page, drawn", "snapshot_page_s")]  # fmt: skip
    for label, key in rows:
        if key in result:
            value = float(result[key])
            print(f"{label:32} {value:8.3f} s   {value / base:6.2f} × baseline")
    if "tree_page_s" in result:
        result["page_ratio"] = round(float(result["tree_page_s"]) / base, 2)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
