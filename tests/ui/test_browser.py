"""The pages in a real browser (headless Chromium): the tree, clicking a node, a run's curves, a diff.

One server and one browser serve the whole module; each test opens a tab, checks what a user would see, and
that the page logged no error (a CSP violation or a script error shows up there) and opened no dialog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ckpt

from .conftest import Watched
from .screenshots import PAGES, take

Family = tuple[ckpt.Store, dict[str, ckpt.Snapshot]]


def clean(page: Watched) -> None:
    assert page.errors == [] and page.dialogs == []


def test_tree_draws_every_snapshot_and_every_parent(served: str, family: Family, page: Watched, shots: Path) -> None:
    store, snaps = family
    p = page.open(served)
    records = store.snapshots()
    ids = p.eval_on_selector_all("svg.tree a.node", "els => els.map(e => e.dataset.id)")
    assert sorted(ids) == sorted(s.id for s in records)
    edges = p.eval_on_selector_all(
        "svg.tree path.edge.kind-parent", "els => els.map(e => [e.dataset.source, e.dataset.target])"
    )
    assert sorted(map(tuple, edges)) == sorted((par, s.id) for s in records for par in s.parents)
    assert p.locator("svg.tree a.node.pruned").count() == 2
    assert p.eval_on_selector_all("svg.tree a.node.frozen", "els => els.map(e => e.dataset.id)") == [snaps["m5"].id]
    labels = p.eval_on_selector_all("svg.tree text.edge-label", "els => els.map(e => e.textContent)")
    assert sorted(labels) == ["adapter", "finetune", "merge", "merge"]
    refs = set(p.eval_on_selector_all("svg.tree text.ref", "els => els.map(e => e.textContent)"))
    assert refs == {"main", "exp/lr-3e-4", "instruct", "lora", "merged", "tiny-lm-v1 (frozen)"}
    assert p.inner_text("#counts") == "15 snapshots · 5 branches · 1 tag (1 frozen) · 2 pruned"
    p.screenshot(path=str(shots / "tree-full.png"), full_page=True)

    # click a node: its page, with its record
    p.click(f'svg.tree a.node[data-id="{snaps["m5"].id}"] circle.dot')
    p.wait_for_url(f"**/snap/{snaps['m5'].id}")
    p.wait_for_selector("[data-ready]", state="attached")
    record = p.inner_text("#record")
    assert snaps["m5"].id in record and "epoch 5" in record and "2500" in record
    assert "tiny-lm-v1 (frozen)" in p.inner_text("h1")
    clean(page)


def test_tree_zooms_and_pans(served: str, page: Watched) -> None:
    p = page.open(served)
    transform = lambda: p.get_attribute("svg.tree g.viewport", "transform")  # noqa: E731
    box = p.locator("svg.tree").bounding_box()
    assert box is not None
    start = transform()
    p.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    p.mouse.wheel(0, -400)  # zoom in around the pointer
    p.wait_for_function("t => document.querySelector('svg.tree g.viewport').getAttribute('transform') !== t", arg=start)
    zoomed = transform()
    assert float(zoomed.split("scale(")[1].rstrip(")")) > float(start.split("scale(")[1].rstrip(")"))
    p.mouse.move(box["x"] + 30, box["y"] + 30)  # drag an empty corner: pan, and no navigation
    p.mouse.down()
    p.mouse.move(box["x"] + 130, box["y"] + 90, steps=5)
    p.mouse.up()
    assert transform() != zoomed and p.url == served
    p.click("text=Fit")
    assert transform() != zoomed
    p.fill("input[type=search]", "exp/lr-3e-4")
    p.press("input[type=search]", "Enter")
    assert p.locator("svg.tree a.node.found").count() == 1
    clean(page)


def test_run_view_has_a_point_per_save(served: str, family: Family, page: Watched) -> None:
    _store, snaps = family
    p = page.open(served + "run/main")
    assert p.locator("table#saves tr.save").count() == 8
    assert p.locator("table#saves tr.save.pruned").count() == 2
    chart = p.locator('section.chart[data-group="loss"]')
    assert chart.get_attribute("data-points") == "8"
    assert chart.locator("canvas").count() >= 1
    assert p.locator("section.chart").count() == 1  # train and validation loss on one chart
    legend = p.inner_text('section.chart[data-group="loss"] .u-legend')
    assert "train_loss" in legend and "val_loss" in legend
    notes = p.inner_text("#best-notes")
    assert f"best val_loss (lowest): 0.58 at step 2500, {snaps['m5'].short_id}" in notes
    assert "then 3 saves without improvement" in notes
    assert "8 saves · 2 pruned by retention" in p.inner_text("#run-summary")
    # the branch menu leads to another run
    p.select_option("#run-select", "exp/lr-3e-4")
    p.wait_for_url("**/run/exp%2Flr-3e-4")
    p.wait_for_selector("[data-ready]", state="attached")
    assert p.locator("table#saves tr.save").count() == 7
    clean(page)


def test_snapshot_page_of_an_adapter(served: str, family: Family, page: Watched) -> None:
    _store, snaps = family
    p = page.open(served + "snap/lora")
    assert snaps["lora"].id in p.inner_text("#record")
    assert p.get_attribute("#record a[data-id]", "data-id") == snaps["i2"].id  # its base
    assert "ckpt.load_merged(" in p.inner_text("#commands")
    assert p.locator("#layers details.layer").count() == 4
    p.click("#layers details.layer summary")
    assert p.locator("#layers tr.tensor:visible").count() == 2
    p.click("#diff-parent")
    p.wait_for_url(f"**/diff/{snaps['i2'].id}..{snaps['lora'].id}")
    p.wait_for_selector("#layer-bars", state="attached")
    clean(page)


def test_diff_view_bars_per_layer(served: str, family: Family, page: Watched) -> None:
    store, _snaps = family
    p = page.open(served + "diff/tiny-lm-v1..instruct")
    names = p.eval_on_selector_all("#layer-bars span.name", "els => els.map(e => e.textContent)")
    assert names == [layer.layer for layer in ckpt.diff.diff(store, "tiny-lm-v1", "instruct", norms=False).layers]
    values = dict(
        p.eval_on_selector_all("#layer-bars span.value", "els => els.map(e => [e.dataset.layer, e.textContent])")
    )
    assert values["model/lm_head"] == "unchanged"
    assert all(0 < float(values[f"model/layers.{i}"]) < 1 for i in range(4))
    assert p.locator("#diff-tensors tbody tr").count() == 4
    # the form goes to another diff
    p.fill("input[name=a]", "main~1")
    p.fill("input[name=b]", "main")
    p.click("button[type=submit]")
    p.wait_for_url("**/diff/main~1..main")
    p.wait_for_selector("#layer-bars", state="attached")
    assert "0 added, 0 removed" in p.inner_text("#diff-counts")
    clean(page)


def test_unknown_revision_shows_the_error_and_hint(served: str, page: Watched) -> None:
    p = page.open(served + "snap/no-such-thing")
    text = p.inner_text(".error")
    assert "no-such-thing" in text and "hint: list what exists" in text
    assert page.dialogs == []


def test_screenshots(served: str, browser: Any, shots: Path) -> None:
    pictures = take(browser, served, shots)
    assert [p.name for p in pictures] == [name for name, _, _ in PAGES]
    for picture in pictures:
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 2_000 < picture.stat().st_size < 200_000
