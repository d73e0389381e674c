"""torch.distributed.checkpoint into a store with real process groups: gloo on CPU, one subprocess per rank."""

from __future__ import annotations

import json
import signal
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from click.testing import CliRunner
from safetensors.torch import load_file

import ckpt
import ckpt.dcp
from ckpt.cli import cli

from .conftest import result_of, start_ranks
from .ranks import extra_state, uneven

pytestmark = pytest.mark.torch


def _tiny_llama(folder: Path) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=36,  # 36 / 2 ranks, and 16 × 36 blocks both ways
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def _cli(store: ckpt.Store, *argv: str) -> Any:
    out = CliRunner().invoke(cli, ["--store", store.url, *argv])
    assert out.exit_code == 0, out.output
    return out.output


def test_two_ranks_save_one_snapshot_that_every_reader_reads(tmp_path: Path, run_ranks: Any) -> None:
    """DTensors in rows, columns, replicated and uneven blocks, saved by 2 ranks: the snapshot loads 2 → 2 in
    another sharding, 2 → 1 through DCP, whole with ``store.load``, restores to a Hugging Face folder that
    transformers loads with equal logits, and diffs as equal to the same state saved in one process. A
    second save (async) with a tenth of the tensors changed writes only those."""
    model = _tiny_llama(tmp_path / "hf")
    store = ckpt.init(str(tmp_path / "store"), chunk_size=1 << 20)
    args = {
        "url": store.url,
        "opts": {},
        "weights": str(tmp_path / "hf" / "model.safetensors"),
        "config": str(tmp_path / "hf" / "config.json"),
    }
    results = run_ranks("save", args)
    sid, sid2, changed = results[0]["snap"], results[0]["snap2"], results[0]["changed"]
    assert results[1]["snap"] == sid and results[1]["snap2"] == sid2  # every rank learns the snapshot id
    weights = load_file(args["weights"])
    more = uneven()

    # the record and the table: blocks where ranks held blocks, one entry where a tensor was whole
    snap = store.resolve(sid)
    assert (snap.step, snap.model, snap.metrics, snap.relation) == (3, "tiny", {"loss": 0.5}, "import")
    assert store.log("main")[0].id == sid2 and store.log("main")[1].id == sid
    table = store.table(sid)
    rows = table.tensors["model/model.layers.0.mlp.down_proj.weight"]
    assert [s.offsets for s in rows.shards] in ([(0, 0), (0, 8)], [(0, 0), (8, 0)])
    assert table.tensors["uneven/rows"].shards[1].sizes == (3, 5)  # 7 rows: 4 + 3
    norm = table.tensors["model/model.norm.weight"]  # replicated: written once, whole
    assert norm.shards == () and len(norm.chunks) == 1

    # whole tensors, the model's own names, the state as DCP flattened it
    state = store.load(sid)
    assert list(state) == ["model", "uneven", "plain", "step", "sched", "betas", "note"]
    assert list(state["model"]) == list(weights)
    for k, v in weights.items():
        assert torch.equal(state["model"][k], v), k
    for k in ("rows", "cols", "one"):
        assert torch.equal(state["uneven"][k], more[k]), k
    assert table.tensors["uneven/one"].shards == ()  # the empty block is not recorded: one block, stored whole
    assert (state["step"], state["sched"], state["betas"], state["note"]) == (
        3,
        {"last_epoch": 3, "lrs": [0.1, 0.01]},
        (0.9, 0.999),
        None,
    )

    # 2 -> 1 through DCP, into plain tensors
    target = {
        "model": {k: torch.zeros_like(v) for k, v in weights.items()},
        "uneven": {"rows": torch.zeros(7, 5), "cols": torch.zeros(5, 7), "one": torch.zeros(1, 3)},
        **extra_state({"plain": torch.zeros(6, dtype=torch.float64)}),
    }
    target["step"] = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(target, storage_reader=ckpt.dcp.StorageReader(store, sid), no_dist=True)
    for k, v in weights.items():
        assert torch.equal(target["model"][k], v), k
    assert torch.equal(target["uneven"]["cols"], more["cols"]) and target["step"] == 3

    # the same state saved in one process: ckpt diff sees no change
    plain = store.save(
        {"model": weights, "uneven": {k: more[k] for k in ("rows", "cols", "one")}, **extra_state(more)},
        branch="plain",
    )
    d = json.loads(_cli(store, "diff", sid, plain.id, "--json"))
    assert d["changed"] == 0 and d["added"] == d["removed"] == 0 and not d["state_changed"], d

    # the async save wrote only the changed tensors' chunks
    d2 = json.loads(_cli(store, "diff", sid, sid2, "--json"))
    assert d2["changed"] == len(changed)
    assert d2["added_bytes"] == sum(weights[k].nbytes for k in changed)

    # restore to a Hugging Face folder: transformers loads it, equal logits
    _cli(store, "restore", sid, "--to", str(tmp_path / "out"))
    from transformers import LlamaForCausalLM

    back = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
    assert store.verify().ok


@pytest.mark.s3
def test_fsdp2_on_s3_loads_a_one_process_snapshot_and_resumes_bit_exactly(s3_server: Any, run_ranks: Any) -> None:
    """A snapshot saved by ``store.save`` in one process loads into an FSDP2 model on 2 ranks (1 → 2); a
    2-rank training run saved with DCP to S3 resumes, in a fresh model and optimizer, to the same bits."""
    from .ranks import _Net

    url = "s3://ckpt-test/dcp-train"
    store = ckpt.init(url, chunk_size=1 << 20, **s3_server)
    torch.manual_seed(5)
    store.save({"model": _Net().state_dict()}, branch="plain")
    results = run_ranks("train", {"url": url, "opts": s3_server})
    assert results[0]["compared"] == results[1]["compared"] > 8
    main = store.resolve("main")
    assert main.step == 3
    optim = store.load("main")["optim"]
    assert set(optim) == {"state", "param_groups"} and optim["param_groups"][0]["betas"] == (0.9, 0.999)
    assert store.verify().ok


def test_a_rank_killed_mid_save_leaves_the_branch_where_it_was(tmp_path: Path, run_ranks: Any) -> None:
    """Rank 1 is SIGKILLed after its first chunk is written: the coordinator never commits, the branch stays,
    the store verifies, and the same save on two live ranks then goes through."""
    store = ckpt.init(str(tmp_path / "store"), chunk_size=1024)
    before = store.save({"model": {"w": torch.zeros(2)}, "step": 0})
    args = {"url": store.url, "opts": {}, "seed": 7}
    procs = start_ranks("kill", args)
    try:
        assert procs[1].stdout is not None
        line = procs[1].stdout.readline()  # the event: its first chunk is in the store
        assert line.strip() == "STARTED", line
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=60)
        assert result_of(procs[0])["raised"] is not None  # the coordinator saw the save fail
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert store.branches()["main"] == before.id
    assert store.verify().ok
    assert any(e.path.startswith("chunks/") for e in store.backend.list("chunks/"))  # its leftovers, for gc

    results = run_ranks("resave", args)
    assert store.branches()["main"] == results[0]["snap"] == results[1]["snap"]
    snap = store.resolve("main")
    assert snap.parents == (before.id,) and snap.step == 7
    assert store.verify().ok
    assert store.load("main")["model"]["layer0"].shape == (16, 32)
