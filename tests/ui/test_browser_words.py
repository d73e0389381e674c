"""Small words a user reads in the browser: counts in the singular, a plain tag told apart from a release."""

from __future__ import annotations

import numpy as np
import pytest

import ckpt

from .conftest import Watched

Family = tuple[ckpt.Store, dict[str, ckpt.Snapshot]]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """One tensor per snapshot, two saves a chunk apart; a plain tag on the first, a frozen release on the
    second; a snapshot with no model name."""
    store = ckpt.init(str(tmp_path_factory.mktemp("ui-words") / "store"), chunk_size=4096)
    a = store.save({"w": np.zeros(8, np.float32)}, model="tiny", step=1)
    b = store.save({"w": np.ones(8, np.float32)}, model="tiny", step=2)
    store.tag("best", a.id)
    store.freeze(b.id, name="tiny-v1")
    c = store.save({"w": np.full(8, 2, np.float32)}, branch="anon")
    return store, {"a": a, "b": b, "anon": c}


def test_one_is_singular(served: str, family: Family, page: Watched) -> None:
    _, snaps = family
    p = page.open(served + f"snap/{snaps['a'].id}")
    summary = p.inner_text("#tensor-summary")
    assert summary.startswith("1 tensor, 32 B (raw), ") and summary.endswith(" stored"), summary
    p = page.open(served + "diff/best..tiny-v1")
    counts = p.inner_text("#diff-counts")
    assert "0 added, 0 removed, 1 changed, 0 unchanged tensors" in counts and "(1 chunk)" in counts, counts
    assert page.errors == [] and page.dialogs == []


def test_a_plain_tag_is_not_drawn_as_a_release(served: str, family: Family, page: Watched) -> None:
    _, snaps = family
    p = page.open(served)
    fill = "els => els.map(e => getComputedStyle(e).fill)"
    tag_fill = p.eval_on_selector_all("svg.tree text.ref.tag:not(.frozen)", fill)
    frozen_fill = p.eval_on_selector_all("svg.tree text.ref.tag.frozen", fill)
    assert len(tag_fill) == 1 and len(frozen_fill) == 1 and tag_fill != frozen_fill
    assert "tag" in p.inner_text(".legend")
    p = page.open(served + f"snap/{snaps['a'].id}")
    colour = "e => getComputedStyle(e).color"
    tag_colour = p.eval_on_selector(".badge.tag:not(.frozen)", colour)
    p = page.open(served + f"snap/{snaps['b'].id}")
    frozen_background = p.eval_on_selector(".badge.frozen", "e => getComputedStyle(e).backgroundColor")
    assert tag_colour != frozen_background
    p = page.open(served + f"snap/{snaps['anon'].id}")  # its lineage names a snapshot with no model name
    assert f"(no model name) {snaps['anon'].short_id}" in p.inner_text("body")
    assert page.errors == [] and page.dialogs == []
