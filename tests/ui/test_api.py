"""The JSON API under /api/, over a real server on a loopback port: what each endpoint returns, errors, safety."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.cli import cli
from ckpt.diff import diff, layer_of

from .conftest import get, get_json

Family = tuple[ckpt.Store, dict[str, ckpt.Snapshot]]


def test_store_lists_branches_and_tags(served: str, family: Family) -> None:
    store, snaps = family
    info = get_json(served + "api/store")
    assert info["url"] == store.url and info["ckpt_version"] == ckpt.__version__
    assert info["branches"] == store.branches()
    assert set(info["branches"]) == {"main", "exp/lr-3e-4", "instruct", "lora", "merged"}
    assert info["tags"]["tiny-lm-v1"]["id"] == snaps["m5"].id
    assert info["tags"]["tiny-lm-v1"]["frozen"] is True
    assert info["tags"]["tiny-lm-v1"]["message"] == "best validation loss"


def test_graph_has_one_node_per_snapshot_and_one_edge_per_parent(served: str, family: Family) -> None:
    store, snaps = family
    g = get_json(served + "api/graph")
    records = store.snapshots()
    assert sorted(n["id"] for n in g["nodes"]) == sorted(s.id for s in records)
    parent_edges = sorted((e["source"], e["target"]) for e in g["edges"] if e["kind"] == "parent")
    assert parent_edges == sorted((p, s.id) for s in records for p in s.parents)
    assert g["missing"] == []
    relation = {(e["source"], e["target"]): e["relation"] for e in g["edges"]}
    assert relation[(snaps["m5"].id, snaps["i1"].id)] == "finetune"
    assert relation[(snaps["i2"].id, snaps["lora"].id)] == "adapter"
    assert relation[(snaps["lora"].id, snaps["merged"].id)] == "merge"
    assert relation[(snaps["i2"].id, snaps["merged"].id)] == "merge"  # the second parent of the merge
    assert relation[(snaps["m4"].id, snaps["e1"].id)] == "continue"

    nodes = {n["id"]: n for n in g["nodes"]}
    places = [(n["x"], n["y"]) for n in g["nodes"]]
    assert len(set(places)) == len(places)  # no two snapshots drawn on top of each other
    for e in g["edges"]:
        assert nodes[e["source"]]["x"] < nodes[e["target"]]["x"]  # left to right: parents first
    assert {nodes[snaps[k].id]["y"] for k in ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8")} == {40}  # one row
    assert len({nodes[snaps[k].id]["y"] for k in ("e1", "e2", "e3")}) == 1
    assert nodes[snaps["m2"].id]["pruned"] and nodes[snaps["m3"].id]["pruned"]
    assert sum(n["pruned"] for n in g["nodes"]) == 2
    assert nodes[snaps["m5"].id]["refs"]["tags"] == [{"name": "tiny-lm-v1", "frozen": True}]
    assert nodes[snaps["m8"].id]["refs"]["branches"] == ["main"]
    assert nodes[snaps["lora"].id]["base"] == snaps["i2"].id
    assert nodes[snaps["m5"].id]["metrics"] == {"train_loss": 0.52, "val_loss": 0.58}
    assert g["width"] >= max(n["x"] for n in g["nodes"]) and g["height"] >= max(n["y"] for n in g["nodes"])


def test_snapshot_page_data(served: str, family: Family, tmp_path: Path) -> None:
    store, snaps = family
    d = get_json(served + "api/snap/tiny-lm-v1")
    s = snaps["m5"]
    rec = d["snapshot"]
    assert (rec["id"], rec["short_id"], rec["step"], rec["epoch"]) == (s.id, s.short_id, 2500, 5)
    assert rec["metrics"] == {"train_loss": 0.52, "val_loss": 0.58}
    assert rec["message"] == "epoch 5" and rec["created_at"] == s.created_at and rec["model"] == "tiny-lm"
    assert rec["refs"] == {"branches": [], "tags": [{"name": "tiny-lm-v1", "frozen": True}]}
    assert [p["id"] for p in d["parents"]] == [snaps["m4"].id]
    assert {c["id"] for c in d["children"]} == {snaps["m6"].id, snaps["i1"].id}
    assert d["history_length"] == 5
    assert [x["id"] for x in d["lineage"]] == [snaps["m1"].id, s.id]
    assert d["lineage"][1]["steps"] == 4

    table = store.table(s.id)
    t = d["tensors"]
    assert t["available"] and t["count"] == len(table.tensors) and t["bytes"] == table.nbytes
    listed = {x["name"]: x for layer in t["layers"] for x in layer["tensors"]}
    assert set(listed) == set(table.tensors)
    for name, x in listed.items():
        entry = table.tensors[name]
        assert (x["dtype"], tuple(x["shape"]), x["bytes"]) == (entry.dtype, entry.shape, entry.nbytes)
    assert [layer["layer"] for layer in t["layers"]][:2] == ["model/embed_tokens", "model/layers.0"]
    for layer in t["layers"]:
        assert {layer_of(x["name"]) for x in layer["tensors"]} == {layer["layer"]}
        assert layer["bytes"] == sum(x["bytes"] for x in layer["tensors"])
    assert t["by_dtype"] == [{"dtype": "F32", "count": len(table.tensors), "bytes": table.nbytes}]
    assert t["stored_bytes"] == store.footprint(s.id).stored_bytes > 0  # stored (compressed or not) beside raw

    # the restore command shown works as printed
    restore = next(c["text"] for c in d["commands"] if c["label"] == "restore to files")
    argv = shlex.split(restore)
    assert argv[0] == "ckpt" and s.short_id in argv
    argv[argv.index("--to") + 1] = str(tmp_path / "out")
    result = CliRunner().invoke(cli, argv[1:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "out").iterdir())
    python = [c["text"] for c in d["commands"] if "ckpt.open(" in c["text"]]
    assert python and all(repr(store.url) in c and repr(s.id) in c for c in python)


def test_snapshot_files_adapter_base_and_deep_revisions(served: str, family: Family) -> None:
    store, snaps = family
    inst = get_json(served + "api/snap/instruct")
    assert inst["files"] == [{"path": "config.json", "size": len(store.files("instruct")["config.json"])}]
    assert [x["id"] for x in inst["lineage"]] == [snaps["m1"].id, snaps["m5"].id, snaps["i1"].id, snaps["i2"].id]
    lora = get_json(served + "api/snap/lora")
    assert lora["base"]["id"] == snaps["i2"].id and lora["snapshot"]["relation"] == "adapter"
    assert any("ckpt.load_merged(" in c["text"] for c in lora["commands"])
    assert get_json(served + "api/snap/main~3")["snapshot"]["id"] == snaps["m5"].id
    assert get_json(served + "api/snap/" + snaps["e2"].id[:10])["snapshot"]["id"] == snaps["e2"].id
    assert get_json(served + "api/snap/exp/lr-3e-4")["snapshot"]["id"] == snaps["e3"].id
    assert get_json(served + "api/snap/main%5E")["snapshot"]["id"] == snaps["m7"].id  # main^, percent-encoded
    pruned = get_json(served + "api/snap/" + snaps["m2"].id)
    assert pruned["snapshot"]["pruned"] is True and pruned["commands"] == []


def test_run_view_data(served: str, family: Family) -> None:
    _store, snaps = family
    d = get_json(served + "api/run/main")
    main = [snaps[f"m{i}"] for i in range(1, 9)]
    assert [s["id"] for s in d["saves"]] == [s.id for s in main]
    assert d["x_label"] == "step" and [s["x"] for s in d["saves"]] == [500.0 * i for i in range(1, 9)]
    assert [s["pruned"] for s in d["saves"]] == [False, True, True, False, False, False, False, False]
    assert [s["metrics"]["val_loss"] for s in d["saves"]] == [s.metrics["val_loss"] for s in main]
    assert d["monitor"] == "val_loss"
    assert d["groups"] == [{"group": "loss", "metrics": ["train_loss", "val_loss"]}]
    assert d["series"]["val_loss"] == {"mode": "min", "best": snaps["m5"].id, "since_best": 3, "points": 8}
    assert d["series"]["train_loss"]["best"] == snaps["m8"].id
    assert d["head"] == snaps["m8"].id

    exp = get_json(served + "api/run/exp/lr-3e-4")  # a branch carries on main's run from where it split
    assert [s["id"] for s in exp["saves"]] == [s.id for s in main[:4]] + [snaps[k].id for k in ("e1", "e2", "e3")]
    assert exp["series"]["val_loss"]["best"] == snaps["e2"].id

    inst = get_json(served + "api/run/instruct")  # a fine-tune's run starts at its first snapshot
    assert [s["id"] for s in inst["saves"]] == [snaps["i1"].id, snaps["i2"].id]
    whole = get_json(served + "api/run/instruct?scope=lineage")
    assert [s["id"] for s in whole["saves"]] == [s.id for s in main[:5]] + [snaps["i1"].id, snaps["i2"].id]
    assert whole["x_label"] == "save"  # steps restart at the fine-tune: saves are numbered instead
    assert [s["x"] for s in whole["saves"]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_diff_view_data(served: str, family: Family) -> None:
    store, snaps = family
    d = get_json(served + "api/diff/tiny-lm-v1..instruct")
    expected = diff(store, "tiny-lm-v1", "instruct").model_dump(mode="json")
    for key in ("a", "b", "tensors", "layers", "files", "added", "removed", "changed", "unchanged", "added_bytes"):
        assert d[key] == expected[key], key
    assert d["a_snapshot"]["id"] == snaps["m5"].id and d["b_snapshot"]["id"] == snaps["i2"].id
    layers = {x["layer"]: x for x in d["layers"]}
    for i in range(4):  # only the MLP of each layer was tuned
        assert layers[f"model/layers.{i}"]["changed"] == 1 and layers[f"model/layers.{i}"]["unchanged"] == 2
        assert 0 < layers[f"model/layers.{i}"]["max_relative_change"] < 1
    assert layers["model/lm_head"]["unchanged"] == 1 and layers["model/lm_head"].get("max_relative_change") is None
    a = store.load("tiny-lm-v1")["model"]["layers.0.mlp.up_proj.weight"]
    b = store.load("instruct")["model"]["layers.0.mlp.up_proj.weight"]
    row = next(t for t in d["tensors"] if t["name"] == "model/layers.0.mlp.up_proj.weight")
    assert row["relative_change"] == pytest.approx(float(np.linalg.norm(b - a) / np.linalg.norm(a)), rel=1e-5)


def test_snapshots_pages(served: str, family: Family) -> None:
    store, _ = family
    everything = [s.id for s in store.snapshots()]
    page = get_json(served + "api/snapshots?offset=5&limit=4")
    assert page["total"] == len(everything) == 15
    assert [s["id"] for s in page["snapshots"]] == everything[5:9]
    assert get_json(served + "api/snapshots")["snapshots"][0]["id"] == everything[0]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("api/snap/no-such-branch", 404, "no-such-branch"),
        ("api/run/no-such-branch", 404, "no-such-branch"),
        ("api/diff/main", 400, "A..B"),
        ("api/diff/main..", 400, "A..B"),
        ("api/diff/main..nope", 404, "nope"),
        ("api/run/main?scope=everything", 400, "scope"),
        ("api/snapshots?limit=0", 400, "limit"),
        ("api/snapshots?offset=x", 400, "offset"),
        ("api/nothing-here", 404, "Not Found"),
    ],
)
def test_errors_are_json_with_a_hint(served: str, path: str, status: int, words: str) -> None:
    code, headers, body = get(served + path)
    assert code == status
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert words in error["error"]
    if status == 404 and "snap" in path:
        assert error["hint"] and "ckpt ls" in error["hint"]


def test_pages_are_one_shell_for_every_deep_link(served: str) -> None:
    shells = set()
    for path in ("", "snap/main", "snap/exp/lr-3e-4", "run/main", "diff/main~1..main", "diff", "diff/"):
        status, headers, body = get(served + path)
        assert status == 200 and headers["content-type"].startswith("text/html")
        shells.add(body)
    assert len(shells) == 1
    assert get(served + "no/such/page")[0] == 404


def _tree_digest(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_read_only_no_method_but_get_and_nothing_written(served: str, family: Family) -> None:
    store, _snaps = family
    root = Path(store.url)
    before = _tree_digest(root)
    paths = ["", "api/store", "api/graph", "api/snapshots", "api/snap/main", "api/run/main", "api/diff/main~1..main",
             "snap/main", "static/app.js"]  # fmt: skip
    for path in paths:
        assert get(served + path)[0] == 200, path
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, _, _ = get(served + path, method=method)
            assert status == 405, (method, path, status)
    assert _tree_digest(root) == before


def test_security_headers(served: str) -> None:
    for path in ("", "api/store", "static/app.js"):
        _, headers, _ = get(served + path)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    assert get(served + "api/store")[1]["cache-control"] == "no-store"


def test_requests_for_another_host_are_refused(served: str) -> None:
    port = served.rstrip("/").rsplit(":", 1)[1]
    assert get(served + "api/store", headers={"Host": "attacker.example"})[0] == 400  # DNS rebinding
    assert get(served + "api/store", headers={"Host": f"attacker.example:{port}"})[0] == 400
    assert get(served + "api/store", headers={"Host": f"localhost:{port}"})[0] == 200
    assert get(served + "api/store", headers={"Host": f"[::1]:{port}"})[0] == 200


def test_static_files_are_vendored() -> None:
    import ckpt.ui._app

    static = Path(ckpt.ui._app.STATIC)
    assert (static / "vendor" / "uplot" / "uPlot.iife.min.js").stat().st_size > 10_000
    assert "MIT" in (static / "vendor" / "uplot" / "LICENSE").read_text()
    html = (static / "index.html").read_text()
    script = (static / "app.js").read_text()
    for text in (html, script):  # the site works offline: no other host is named
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
        assert "//cdn" not in text


def test_saves_appear_on_the_next_request(tmp_path: Path) -> None:
    import ckpt.ui

    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    store.save({"w": np.zeros(4, np.float32)}, step=1, metrics={"val_loss": 1.0})
    with ckpt.ui.serving(ckpt.open(store.url)) as url:
        assert len(get_json(url + "api/graph")["nodes"]) == 1
        store.save({"w": np.ones(4, np.float32)}, step=2, metrics={"val_loss": 0.5})
        assert len(get_json(url + "api/graph")["nodes"]) == 2
        assert [s["step"] for s in get_json(url + "api/run/main")["saves"]] == [1, 2]


def test_non_finite_metrics_are_strict_json(tmp_path: Path) -> None:
    import ckpt.ui

    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    store.save({"w": np.zeros(4, np.float32)}, step=1, metrics={"val_loss": 1.0})
    store.save({"w": np.ones(4, np.float32)}, step=2, metrics={"val_loss": float("nan"), "grad": float("inf")})
    with ckpt.ui.serving(store) as url:
        for path in ("api/graph", "api/snap/main", "api/run/main", "api/snapshots"):
            _, _, body = get(url + path)
            literals: list[str] = []
            json.loads(body, parse_constant=literals.append)
            assert literals == [], path
        run: Any = get_json(url + "api/run/main")
        assert run["saves"][1]["metrics"] == {"val_loss": "NaN", "grad": "Infinity"}
        assert run["series"]["val_loss"]["best"] == run["saves"][0]["id"]


@pytest.mark.s3
def test_a_store_on_s3(s3_server: dict[str, Any]) -> None:
    import ckpt.ui

    url = "s3://ckpt-test/ui-store"
    store = ckpt.init(url, chunk_size=4096, **s3_server)
    store.save({"w": np.zeros(8, np.float32)}, step=1, model="m", metrics={"val_loss": 1.0})
    store.save({"w": np.ones(8, np.float32)}, step=2, metrics={"val_loss": 0.5})
    with ckpt.ui.serving(ckpt.open(url, **s3_server)) as base:
        assert len(get_json(base + "api/graph")["nodes"]) == 2
        assert get_json(base + "api/snap/main")["snapshot"]["step"] == 2
        assert get_json(base + "api/diff/main~1..main")["changed"] == 1


def test_pruned_and_collected_snapshot_keeps_its_page(tmp_path: Path) -> None:
    from datetime import timedelta

    from ckpt.ui import _views as views

    store = ckpt.init(str(tmp_path / "s"), chunk_size=4096)
    old = store.save({"w": np.zeros(4, np.float32)}, step=1, metrics={"val_loss": 1.0})
    store.save({"w": np.ones(4, np.float32)}, step=2, metrics={"val_loss": 0.5})
    store.prune(old.id)
    store.gc(grace=timedelta(0))
    d = views.snapshot_view(store, old.id)
    assert d["snapshot"]["pruned"] is True and d["commands"] == []
    assert d["tensors"]["count"] == 1 and "pruned" in d["tensors"]["note"]  # gc keeps the table, not the chunks
    assert views.run_view(store, "main")["saves"][0]["pruned"] is True
    assert len(views.graph_view(store)["nodes"]) == 2


def test_static_files_stay_in_their_folder(served: str) -> None:
    for path in (
        "static/../app.py",
        "static/%2e%2e/app.py",
        "static/..%2fapp.py",
        "static/%2e%2e/%2e%2e/pyproject.toml",
    ):
        status, _, body = get(served + path)
        assert status in (400, 404), (path, status)
        assert b"create_app" not in body and b"[project]" not in body
