"""``init``, ``verify`` and ``gc`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.cli import cli

from .conftest import Invoke, parse


def test_init_at_url(invoke: Invoke, tmp_path: Path) -> None:
    target = tmp_path / "models"
    out = invoke("init", str(target), "--chunk-size", "1MiB", store=False).stdout
    assert (
        out.strip()
        == f"initialised an empty ckpt store at {target} (chunks of 1.0 MiB, compressed, deltas up to 16 deep, small "
        "tensors in packs of 1.0 MiB)"
    )
    assert ckpt.open(str(target)).chunk_size == 1 << 20


def test_init_pack_size_and_no_pack(invoke: Invoke, tmp_path: Path) -> None:
    data = parse(invoke("init", str(tmp_path / "a"), "--pack-size", "64KiB", "--json", store=False))
    assert (data["pack_size"], data["format_version"]) == (65536, "3.0")
    data = parse(invoke("init", str(tmp_path / "b"), "--no-pack", "--json", store=False))
    assert (data["pack_size"], data["format_version"]) == (0, "2.0")
    assert "pack_size" not in json.loads((tmp_path / "b" / "ckpt.json").read_bytes())
    data = parse(invoke("init", str(tmp_path / "z"), "--pack-size", "0", "--json", store=False))  # 0 is --no-pack
    assert (data["pack_size"], data["format_version"]) == (0, "2.0")
    assert (
        "not both"
        in invoke("init", str(tmp_path / "c"), "--no-pack", "--pack-size", "1MiB", store=False, code=2).stderr
    )
    assert (
        "pack_size"
        in invoke(
            "init", str(tmp_path / "d"), "--chunk-size", "1MiB", "--pack-size", "2MiB", store=False, code=1
        ).stderr
    )


def test_init_json_and_default_location(invoke: Invoke, store_path: Path) -> None:
    data = parse(invoke("init", "--json", "--chunk-size", "8KiB"))  # --store given by the fixture
    assert data == {
        "url": str(store_path),
        "chunk_size": 8192,
        "compression": True,
        "delta_depth": 16,
        "pack_size": 8192,
        "format_version": "3.0",
    }
    assert "exists already" in invoke("init", code=1).stderr


def test_init_defaults_to_dot_ckpt_here(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / ".ckpt" / "ckpt.json").is_file()
    assert ckpt.open(str(tmp_path / ".ckpt")).chunk_size == 64 << 20
    monkeypatch.setenv("CKPT_CHUNK_SIZE", "4KiB")
    result = runner.invoke(cli, ["init", str(tmp_path / "other")])
    assert result.exit_code == 0 and ckpt.open(str(tmp_path / "other")).chunk_size == 4096


def _corrupt_one_chunk(store_path: Path) -> Path:
    chunk = next(p for p in sorted((store_path / "chunks").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    return chunk


def test_verify_ok(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    out = invoke("verify").stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("checked ") and last.endswith("): ok")
    data = parse(invoke("verify", "--all", "--json"))
    assert data["ok"] is True and data["damage"] == [] and data["snapshots"] >= 7 and data["chunks"] > 0
    assert set(data) == {"ok", "snapshots", "chunks", "bytes", "damage", "releases"}
    one = parse(invoke("verify", "lora", "--json"))
    assert one["snapshots"] == 1 and one["bytes"] == 512 + 16  # as stored: the chunk with its 16-byte header
    invoke("verify", "main", "--all", code=2)


def test_verify_reports_damage_and_exits_1(
    invoke: Invoke, store: ckpt.Store, store_path: Path, family: dict[str, ckpt.Snapshot]
) -> None:
    chunk = _corrupt_one_chunk(store_path)
    result = invoke("verify", code=1)
    assert "corrupt chunk " + chunk.name[:16] in result.stdout
    assert "1 problem" in result.stdout and "hint:" in result.stderr
    data = parse(invoke("verify", "--json", code=1))
    assert data["ok"] is False
    (damage,) = data["damage"]
    assert damage["kind"] == "corrupt" and damage["object"] == "chunk" and damage["digest"] == chunk.name
    assert damage["snapshots"] and damage["tensors"]


def test_gc(invoke: Invoke, store: ckpt.Store, family: dict[str, ckpt.Snapshot]) -> None:
    out = invoke("gc", "--dry-run", "--grace", "0").stdout
    assert out.startswith("would free ") and "kept" in out
    dry = parse(invoke("gc", "--dry-run", "--grace", "0", "--json"))
    assert dry["dry_run"] is True and dry["chunks"] > 0 and dry["freed_bytes"] > 0
    assert set(dry) == {
        "dry_run", "snapshots", "tables", "chunks", "other", "freed_bytes", "kept_chunks", "kept_bytes",
        "grace_seconds", "young_chunks", "young_bytes", "young_records", "reused_chunks", "reused_bytes", "damage",
        "revived_snapshots", "foreign",
    }  # fmt: skip
    # young objects are spared by the default grace period, and the report says so
    young = parse(invoke("gc", "--json"))
    assert young["chunks"] == 0 and young["young_chunks"] == dry["chunks"] and young["grace_seconds"] == 3600
    assert young["young_bytes"] > 0
    spared = invoke("gc", "--dry-run").stdout
    assert f"spared {dry['chunks']} chunks (" in spared and "that nothing needs" in spared
    assert "less than 1h ago (--grace)" in spared and "`ckpt gc --grace 0`" in spared
    done = parse(invoke("gc", "--grace", "0", "--expire-reflog", "never", "--json"))
    assert done["dry_run"] is False and done["chunks"] == dry["chunks"] and done["freed_bytes"] == dry["freed_bytes"]
    assert invoke("gc", "--grace", "0").stdout.startswith("freed 0 B")
    assert parse(invoke("verify", "--json"))["ok"]
    invoke("gc", "--expire-reflog", "sometime", code=2)


def test_gc_reclaims_a_deleted_branch(invoke: Invoke, store: ckpt.Store) -> None:
    store.save({"w": np.zeros(4096, np.float32)})
    store.save({"w": np.arange(4096, dtype=np.float32)}, branch="tmp")
    digests = store.table("tmp").tensors["w"].chunks
    size = sum(e.size for e in store.backend.list("chunks/") if e.path.rsplit("/", 1)[-1] in digests)  # as stored
    invoke("branch", "-d", "tmp")
    kept = parse(invoke("gc", "--grace", "0", "--json"))
    assert kept["snapshots"] == 0  # the reflog keeps it for 30 days
    freed = parse(invoke("gc", "--grace", "0", "--expire-reflog", "0", "--json"))
    assert freed["snapshots"] == 1 and freed["freed_bytes"] >= size


def test_gc_refuses_on_damage_and_keep_damaged_goes_ahead(invoke: Invoke, store: ckpt.Store) -> None:
    first = store.save({"w": np.zeros(4096, np.float32)})
    head = store.save({"w": np.ones(4096, np.float32)})
    store.prune(first.id)
    path = f"snapshots/{head.id[:2]}/{head.id}.json"
    data = bytearray(store.backend.read(path))
    data[-2] ^= 1
    store.backend.replace(path, bytes(data))
    result = invoke("gc", "--grace", "0", code=1)
    assert "gc refused to delete anything" in result.stderr and "ckpt verify" in result.stderr
    kept = invoke("gc", "--grace", "0", "--keep-damaged")
    assert kept.stdout.startswith("freed 0 B") and "damaged, everything it might need was kept" in kept.stderr
    assert parse(invoke("gc", "--grace", "0", "--keep-damaged", "--json"))["damage"][0]["object"] == "snapshot"
