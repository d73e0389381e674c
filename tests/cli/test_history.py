"""``log``, ``show`` and ``diff`` from the command line."""

from __future__ import annotations

import re

import numpy as np
import pytest

import ckpt

from .conftest import Invoke, parse

SNAPSHOT_KEYS = {
    "id",
    "short_id",
    "pruned",
    "refs",
    "parents",
    "relation",
    "model",
    "step",
    "epoch",
    "metrics",
    "message",
    "metadata",
    "created_at",
    "ckpt_version",
    "base",
    "table",
    "tensor_count",
    "tensor_bytes",
}


def release_name(store: ckpt.Store) -> str:
    return next(n for n, t in store.tags().items() if t.frozen)


# -- log --------------------------------------------------------------------------------------------------------


def test_log_one_line_per_snapshot(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    lines = invoke("log").stdout.splitlines()
    assert len(lines) == 3
    c, b, a = lines
    assert c.startswith(family["c"].short_id)
    assert "(main, frozen: " + release_name(store) + ")" in c
    assert "continue" in c and "tiny-llama" in c and "step 200" in c and "epoch 2" in c
    assert "val_loss=0.004975" in c and '"epoch 2"' in c and "just now" in c
    assert "(tag: best)" in b
    assert a.startswith(family["a"].short_id) and "import" in a and a.endswith("[pruned]")


def test_log_rev_and_limit(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    lines = invoke("log", "instruct", "-n", "2").stdout.splitlines()
    assert [line.split()[0] for line in lines] == [family["i2"].short_id, family["i1"].short_id]
    assert "finetune" in lines[1] and "tiny-llama-instruct" in lines[1]
    assert len(invoke("log", "retry", "--max-count", "1").stdout.splitlines()) == 1
    assert invoke("log", "-n", "0").stdout == ""
    invoke("log", "-n", "-1", code=2)


def test_log_json(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    data = parse(invoke("log", "--json"))
    assert [d["id"] for d in data] == [family[k].id for k in "cba"]
    for d in data:
        assert set(d) == SNAPSHOT_KEYS
    c, b, a = data
    assert c["refs"] == [
        {"kind": "branch", "name": "main"},
        {"kind": "tag", "name": release_name(store), "frozen": True},
    ]
    assert b["refs"] == [{"kind": "tag", "name": "best", "frozen": False}]
    assert a["pruned"] is True and c["pruned"] is False
    assert c["parents"] == [family["b"].id] and a["parents"] == []
    assert c["short_id"] == family["c"].short_id
    assert c["metrics"] == {"val_loss": pytest.approx(1 / 201)}


def test_log_json_nonfinite_metrics_are_strings(invoke: Invoke, store: ckpt.Store) -> None:
    store.save({"w": [1]}, metrics={"loss": float("nan"), "best": float("inf")})
    assert parse(invoke("log", "--json"))[0]["metrics"] == {"best": "Infinity", "loss": "NaN"}
    assert "loss=nan" in invoke("log").stdout


def test_log_all(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    data = parse(invoke("log", "--all", "--json"))
    assert {d["id"] for d in data} == {s.id for s in family.values()}
    stamps = [d["created_at"] for d in data]
    assert stamps == sorted(stamps, reverse=True)
    assert len(invoke("log", "--all").stdout.splitlines()) == len({s.id for s in family.values()})
    assert len(parse(invoke("log", "--all", "-n", "3", "--json"))) == 3
    invoke("log", "main", "--all", code=2)


def test_log_empty_store(invoke: Invoke, store: ckpt.Store) -> None:
    result = invoke("log")
    assert result.stdout == "" and "no branch or tag yet" in result.stderr
    assert parse(invoke("log", "--json")) == []
    assert parse(invoke("log", "--all", "--json")) == []
    assert invoke("log", "--graph", "--all").stdout == ""


def test_log_without_main_shows_the_only_branch(invoke: Invoke, store: ckpt.Store) -> None:
    store.save({"w": [1]}, branch="other")
    result = invoke("log")
    assert "no branch 'main': showing other" in result.stderr
    assert result.stdout == invoke("log", "other").stdout and len(result.stdout.splitlines()) == 1
    invoke("log", "main", code=1)


def test_log_graph_all_draws_the_family(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    out = invoke("log", "--graph", "--all").stdout
    lines = out.splitlines()
    rows = {k: next(i for i, line in enumerate(lines) if s.short_id in line) for k, s in family.items()}
    # children above parents
    for child, parent in (("l", "i2"), ("i2", "i1"), ("i1", "c"), ("c", "b"), ("r", "b"), ("b", "a")):
        assert rows[child] < rows[parent], (child, parent, out)
    # every snapshot row has a node, the pruned one a hollow node
    assert re.search(r"○[ │]* " + family["a"].short_id, out)
    assert re.search(r"●[ │]* " + family["c"].short_id, out)
    # relation on each edge, branches splitting off
    assert "adapter" in lines[rows["l"]] and "finetune" in lines[rows["i1"]]
    assert "╯" in out
    assert lines[rows["a"]].endswith("[pruned]")
    # json: the same snapshots, children before parents
    data = parse(invoke("log", "--graph", "--all", "--json"))
    order = [d["id"] for d in data]
    assert order.index(family["l"].id) < order.index(family["i2"].id) < order.index(family["c"].id)
    assert order.index(family["r"].id) < order.index(family["b"].id)


def test_log_graph_of_one_rev_follows_all_parents(invoke: Invoke, store: ckpt.Store) -> None:
    a = store.save({"w": [1]}, message="a")
    store.branch("x", at="main")
    x = store.save({"w": [2]}, branch="x", message="x")
    b = store.save({"w": [3]}, message="b")
    m = store.save({"w": [4]}, parents=["main", "x"], relation="merge", message="m")
    out = invoke("log", "--graph").stdout
    lines = out.splitlines()
    assert lines[0].startswith("● " + m.short_id) and "merge of" in lines[0]
    assert lines[1].startswith("├─╮")
    assert any(re.match(r"^│ ● " + x.short_id, line) for line in lines)
    assert lines[-2] == "├─╯" and lines[-1].startswith("● " + a.short_id)
    assert b.short_id in out
    assert len(parse(invoke("log", "--graph", "--json"))) == 4
    assert len(parse(invoke("log", "--graph", "-n", "2", "--json"))) == 2
    # without --graph, first parents only
    assert [d["id"] for d in parse(invoke("log", "--json"))] == [m.id, b.id, a.id]


def test_log_graph_shows_an_adapter_base_that_is_not_a_parent(invoke: Invoke, store: ckpt.Store) -> None:
    base = store.save({"w": [1]}, model="base")
    store.branch("other", at="main")
    other = store.save({"w": [2]}, branch="other")
    ad = store.save({"a": [1]}, branch="ad", parents=["other"], relation="adapter", base=base.id)
    out = invoke("log", "ad", "--graph").stdout
    assert f"base {base.short_id}" in out
    assert "├─╮" in out and other.short_id in out and ad.short_id in out


# -- show -------------------------------------------------------------------------------------------------------


def test_show_text(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    out = invoke("show", "lora").stdout
    assert out.startswith(f"snapshot {family['l'].id} (lora)")
    assert re.search(r"relation\s+adapter", out)
    assert re.search(r"base\s+" + family["i2"].short_id + r" \(tiny-llama-instruct, step 10\)", out)
    a, c, i1, i2, lora = (family[k].short_id for k in ("a", "c", "i1", "i2", "l"))
    assert (
        f"tiny-llama {a} ─continue ×2→ tiny-llama {c} ─finetune→ tiny-llama-instruct {i1} ─continue→ "
        f"tiny-llama-instruct {i2} ─adapter→ tiny-lora {lora}" in out
    )  # the fork points are the snapshots each line grew from
    out = invoke("show", "instruct", "--tensors").stdout
    assert "config.json" in out and "F16" in out and "model/layers.0.w" in out and "(32, 32)" in out
    out = invoke("show", family["a"].id[:8]).stdout
    assert "[pruned" in out and "none (a root)" in out
    assert "snapshot " + family["c"].id in invoke("show").stdout  # default: main


def test_show_json(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    data = parse(invoke("show", "instruct", "--json"))
    assert set(data) == {"snapshot", "parents", "base", "lineage", "history_length", "files", "tensors", "storage"}
    storage = data["storage"]  # its chunks as stored beside their raw bytes
    assert storage["raw_bytes"] == 2 * 4096 + 2048 + 2 and storage["stored_bytes"] > 0 and storage["missing"] == 0
    assert set(data["snapshot"]) == SNAPSHOT_KEYS
    assert data["snapshot"]["id"] == family["i2"].id
    assert data["snapshot"]["refs"] == [{"kind": "branch", "name": "instruct"}]
    assert [p["id"] for p in data["parents"]] == [family["i1"].id]
    assert data["base"] is None
    assert [(x["id"], x["relation"], x["steps"]) for x in data["lineage"]] == [
        (family["a"].id, "import", 0),
        (family["c"].id, "continue", 2),
        (family["i1"].id, "finetune", 1),
        (family["i2"].id, "continue", 1),
    ]
    assert data["lineage"][0]["pruned"] is True
    assert data["history_length"] == 5
    assert data["files"] == [{"path": "config.json", "size": 2}]
    t = data["tensors"]
    assert t["count"] == 3
    assert t["bytes"] == 2 * 4096 + 2048
    assert t["by_dtype"] == {"F32": {"count": 2, "bytes": 8192}, "F16": {"count": 1, "bytes": 2048}}
    assert t["by_group"] == {"model": {"count": 3, "bytes": 10240}}
    assert "list" not in t
    listed = parse(invoke("show", "instruct", "--tensors", "--json"))["tensors"]["list"]
    assert listed[0] == {"name": "model/layers.0.w", "dtype": "F16", "shape": [32, 32], "bytes": 2048}
    assert [x["name"] for x in listed] == ["model/layers.0.w", "model/layers.1.w", "model/embed.weight"]
    lora = parse(invoke("show", "lora", "--json"))
    assert lora["base"]["id"] == family["i2"].id
    assert lora["tensors"]["by_group"] == {"lora": {"count": 1, "bytes": 512}}


def test_show_unknown_rev(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    assert invoke("show", "nope", "--json", code=1).stdout == ""


# -- diff -------------------------------------------------------------------------------------------------------


def test_diff_text(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    out = invoke("diff", "main", "instruct").stdout
    assert out.startswith(f"diff {family['c'].short_id} (main) → {family['i2'].short_id} (instruct)")
    assert "0 added, 0 removed, 2 changed, 1 unchanged" in out
    assert "F32 → F16" in out
    assert re.search(r"model/layers\.1\.w\s+F32\s+\(32, 32\)\s+0\.1000", out)
    assert "file added: config.json" in out
    out = invoke("diff", "main", "main").stdout
    assert "no tensor differs" in out and "B adds 0 B (0 chunks)" in out


def test_diff_json(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    data = parse(invoke("diff", "main", "lora", "--json"))
    assert set(data) == {
        "a",
        "b",
        "tensors",
        "layers",
        "files",
        "state_changed",
        "added",
        "removed",
        "changed",
        "unchanged",
        "added_chunks",
        "added_bytes",
        "added_stored_bytes",
    }
    assert (data["a"], data["b"]) == (family["c"].id, family["l"].id)
    assert (data["added"], data["removed"], data["changed"], data["unchanged"]) == (1, 3, 0, 0)
    assert data["added_bytes"] == 512 and data["added_chunks"] == 1
    assert data["added_stored_bytes"] == 512 + 16  # one raw chunk (too small to compress) and its header
    assert data["tensors"][0] == {
        "name": "lora/layers.1.lora_A",
        "status": "added",
        "layer": "lora/layers.1",
        "dtype_a": None,
        "dtype_b": "F32",
        "shape_a": None,
        "shape_b": [4, 32],
        "bytes_a": 0,
        "bytes_b": 512,
        "relative_change": None,
        "note": None,
    }
    assert {x["layer"] for x in data["layers"]} == {"lora/layers.1", "model/layers.0", "model/layers.1", "model/embed"}
    data = parse(invoke("diff", "main", "instruct", "--json"))
    changed = {x["name"]: x for x in data["tensors"] if x["status"] == "changed"}
    assert changed["model/layers.1.w"]["relative_change"] == pytest.approx(0.1, rel=1e-5)
    assert changed["model/layers.0.w"]["dtype_b"] == "F16"
    assert 0 < changed["model/layers.0.w"]["relative_change"] < 1e-3
    assert data["files"] == [{"path": "config.json", "status": "added", "size_a": None, "size_b": 2}]
    nonorm = parse(invoke("diff", "main", "instruct", "--no-norms", "--json"))
    assert all(x["relative_change"] is None for x in nonorm["tensors"] if x["status"] == "changed")


def test_diff_with_a_pruned_side(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    data = parse(invoke("diff", family["a"].id, "best", "--json"))
    assert data["changed"] == 3
    assert all("pruned" in x["note"] for x in data["tensors"])
    assert "A was pruned" in invoke("diff", family["a"].id, "best").stdout


def test_diff_state_changed(invoke: Invoke, store: ckpt.Store) -> None:
    w = np.ones(8, np.float32)
    store.save({"w": w, "step": 1})
    store.save({"w": w, "step": 2})
    data = parse(invoke("diff", "main~1", "main", "--json"))
    assert data["state_changed"] is True and data["unchanged"] == 1
    assert "state tree differs" in invoke("diff", "main~1", "main").stdout
