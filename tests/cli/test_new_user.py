"""What a new user hits in the first hour, command line and Python: defaults, hints, accepted forms."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.errors import RecordError, RefExistsError

from .conftest import Invoke, parse, weights


def test_show_freeze_tag_branch_fall_back_to_the_only_branch(invoke: Invoke, store: ckpt.Store) -> None:
    """Without REV, as `ckpt log` does: main, else the only branch (said on stderr), else a hint."""
    snap = store.save({"model": weights(0)}, branch="quickstart", model="tiny")
    shown = invoke("show")
    assert snap.id in shown.stdout and "no branch 'main': using quickstart" in shown.stderr
    assert parse(invoke("show", "--json"))["snapshot"]["id"] == snap.id
    invoke("tag", "first")
    invoke("branch", "retry")
    assert store.tags()["first"].id == snap.id and store.branches()["retry"] == snap.id
    # two branches now, neither main: a revision must be named, and the hint says where to find one
    result = invoke("freeze", code=1)
    assert "no branch 'main', and 2 others: quickstart, retry" in result.stderr
    assert "hint: name the revision" in result.stderr
    release = invoke("freeze", "quickstart").stdout
    assert "as tiny-" in release


def test_freezing_twice_a_day_says_to_name_the_second_release(invoke: Invoke, store: ckpt.Store) -> None:
    store.save({"model": weights(0)}, model="tiny")
    store.save({"model": weights(1)}, model="tiny")
    first = store.freeze("main~1")
    result = invoke("freeze", code=1)
    assert f"a dated release named '{first}' exists already" in result.stderr
    assert f"hint: give this one its own name: --name {first}-2 (or another --model)" in result.stderr
    with pytest.raises(RefExistsError) as err:
        store.freeze("main")
    assert err.value.hint is not None and f"name='{first}-2'" in err.value.hint
    invoke("freeze", "--name", f"{first}-2")
    assert store.tags()[f"{first}-2"].id == store.resolve("main").id
    # a name given explicitly that is taken: the plain message, no advice about dates
    result = invoke("freeze", "--name", first, code=1)
    assert "a tag named" in result.stderr and "dated name" not in result.stderr


def test_gc_takes_durations_in_every_form(store: ckpt.Store) -> None:
    store.save({"w": np.arange(5000, dtype=np.float32)})
    for grace in (0, 0.0, "0", "1h", "90s", timedelta(minutes=5)):
        assert store.gc(grace=grace, dry_run=True).freed_bytes == 0
    for expire in ("30d", 86400, None, "2w"):
        store.gc(expire_reflog=expire, dry_run=True)
    for bad in (-1, "soon", None, True, "1y", float("nan")):
        with pytest.raises(RecordError, match="grace"):
            store.gc(grace=bad)  # type: ignore[arg-type]


def test_sync_takes_urls_and_refuses_anything_else(store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"w": np.arange(5000, dtype=np.float32)})
    dst = ckpt.init(str(tmp_path / "copy"))
    report = ckpt.sync(store.url, str(tmp_path / "copy"))
    assert report.snapshots == 1 and dst.branches() == store.branches()
    with pytest.raises(RecordError, match="not a int"):
        ckpt.sync(3, dst)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", ["5", "1KiB", "4095"])
def test_init_refuses_tiny_chunks(invoke: Invoke, tmp_path: Path, size: str) -> None:
    target = tmp_path / "tiny"
    result = invoke("init", str(target), "--chunk-size", size, store=False, code=1)
    assert "is too small a chunk" in result.stderr and "hint: give --chunk-size 4KiB or more" in result.stderr
    assert not target.exists()
    result = invoke("init", str(target), store=False, code=1, env={"CKPT_CHUNK_SIZE": size})
    assert "$CKPT_CHUNK_SIZE" in result.stderr
    invoke("init", str(target), "--chunk-size", "4KiB", store=False)
    assert ckpt.open(str(target)).chunk_size == 4096


def test_pickles_are_named_in_cli_terms_and_counted(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    folder = tmp_path / "hub"
    folder.mkdir()
    save_file({"w": np.ones((4, 4), np.float32)}, str(folder / "model.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04x")
    result = invoke("import", str(folder), code=1)
    assert "refusing the pickle-based file pytorch_model.bin" in result.stderr and "--skip-pickles" in result.stderr
    (folder / "training_args.bin").write_bytes(b"\x80\x04x")
    assert "refusing 2 pickle-based files" in invoke("import", str(folder), code=1).stderr
    result = invoke("import", str(folder), "--skip-pickles")
    assert "skipped pytorch_model.bin: a pickle: never loaded (it can run code)" in result.stderr
    assert "skip_pickles" not in result.output
    (folder / "model.safetensors").unlink()
    result = invoke("import", str(folder), "--skip-pickles", code=1)
    assert "holds no .safetensors file once 2 pickle files are left out" in result.stderr


def test_plot_to_a_missing_folder_says_so_before_drawing(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    store.save({"w": np.zeros(3, np.float32)}, metrics={"val_loss": 1.0})
    result = invoke("plot", "val_loss", "-o", str(tmp_path / "no" / "such" / "loss.png"), code=1)
    assert f"{tmp_path / 'no' / 'such'} does not exist" in result.stderr
    assert f"hint: create the folder first (mkdir -p {tmp_path / 'no' / 'such'})" in result.stderr


@pytest.mark.s3
def test_a_missing_bucket_is_named_with_what_to_do(invoke: Invoke, s3_server: dict[str, object]) -> None:
    option = f"endpoint_url={s3_server['endpoint_url']}"
    result = invoke("--store-option", option, "init", "s3://no-such-bucket/models", store=False, code=1)
    assert "The specified bucket does not exist" in result.stderr
    assert "hint: the bucket 'no-such-bucket' does not exist: create it first" in result.stderr


def test_messages_say_what_is_true(invoke: Invoke, store: ckpt.Store, tmp_path: Path) -> None:
    a = store.save({"model": weights(0), "step": 1, "opt": {"lr": 0.1}}, model="tiny")
    store.save({"model": weights(1), "step": 2, "opt": {"lr": 0.05}, "note": "x"})
    # diff names what differs outside tensors
    out = invoke("diff", "main~1", "main").stdout
    assert "the state tree differs outside tensors:" in out
    assert "  step: 1 → 2" in out and "  opt/lr: 0.1 → 0.05" in out and '  note: added ("x")' in out
    # deleting a branch: the reflog keeps its snapshots, and the way back is given
    invoke("branch", "retry", "--at", a.id)
    result = invoke("branch", "-d", "retry")
    assert result.stdout == f"deleted branch retry (was {a.short_id})\n"
    assert f"`ckpt branch retry --at {a.short_id}` brings it back" in result.stderr
    assert "`ckpt gc --expire-reflog 0`" in result.stderr
    # a ref that never existed has no reflog: an error, not an empty success
    assert invoke("reflog", "nope", code=1).stderr.startswith("error: no reflog entries for 'nope'")
    # sync with neither revisions nor --all says what to give
    result = invoke("sync", str(tmp_path / ".ckpt"), str(tmp_path / "copy"), code=2)
    assert "say what to copy: the revisions" in result.stderr and not (tmp_path / "copy").exists()
    # verify without signed releases says nothing about signatures
    store.freeze("main", name="tiny-v1")
    assert "sign" not in invoke("verify").output
    # prune of one snapshot speaks of it in the singular
    store.save({"model": weights(2)})
    store.save({"model": weights(3)})
    assert "its record stays in the log" in invoke("prune", "main~1").stderr


def test_dir_of_ckpt_offers_the_public_names_only() -> None:
    names = set(dir(ckpt))
    assert set(ckpt.__all__) <= names
    assert not names & {"Any", "annotations", "importlib", "typing", "ModuleType", "_LAZY", "__getattr__"}
    assert {n for n in names - set(ckpt.__all__)} <= {
        "__version__",
        "errors",
        "storage",
        "testing",
        "store",
        "cli",
        "model",
        "settings",
        "state",
        "interop",
        "lineage",
        "plot",
        "diff",
        "training",
        "dcp",
        "integrations",
        "ui",
    }


def test_ls_and_reflog_fit_80_columns(invoke: Invoke, family: dict[str, ckpt.Snapshot]) -> None:
    """Names and ids whole, ages short (``5m``, ``3h``), one id per reflog row: every row fits 80 columns."""
    for args in (["ls"], ["reflog"], ["tag"], ["branch"]):
        out = invoke(*args, env={"COLUMNS": "80"}).stdout
        lines = out.splitlines()
        assert all(len(line) <= 80 for line in lines), (args, [line for line in lines if len(line) > 80])
        assert all(" ago" not in line for line in lines), args
    out = invoke("ls", env={"COLUMNS": "80"}).stdout
    assert family["release"].short_id in out and "tiny-llama-2" in out  # the release's whole name
    assert any(line.rstrip().endswith(" now") for line in out.splitlines())


def test_restore_into_a_root_or_a_full_folder_is_refused_at_once(
    invoke: Invoke, store: ckpt.Store, tmp_path: Path
) -> None:
    store.save({"w": np.zeros(3, np.float32)})
    for force in ([], ["--force"]):
        result = invoke("restore", "main", "--to", "/", *force, code=1)
        assert result.stderr.startswith("error: / is the root of a file system"), result.stderr
    full = tmp_path / "full"
    (full / "deep" / ".ckpt").mkdir(parents=True)
    ckpt.init(str(full / "deep" / "inner"))  # a store deep inside: not what the error is about
    result = invoke("restore", "main", "--to", str(full), code=1)
    assert result.stderr.startswith(f"error: {full} is not empty"), result.stderr
