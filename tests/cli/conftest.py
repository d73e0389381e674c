"""Fixtures for the command-line tests: a runner, stores, a family of models, the installed executable."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import ckpt
from ckpt.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    """A click runner (stdout and stderr kept apart: ``result.stdout``, ``result.stderr``)."""
    return CliRunner()


Invoke = Callable[..., Result]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where the test store lives: ``<tmp>/.ckpt`` (also what walking up from ``<tmp>`` finds)."""
    return tmp_path / ".ckpt"


@pytest.fixture
def store(store_path: Path) -> ckpt.Store:
    """A new empty local store with 4 KiB chunks, compressed, without deltas: each save whole, so that pruning
    one frees its chunks (deltas: tests/store/test_codecs_deltas.py)."""
    return ckpt.init(str(store_path), chunk_size=4096, delta_depth=0)


@pytest.fixture
def invoke(runner: CliRunner, store_path: Path) -> Invoke:
    """Run ``ckpt --store <store_path> ARGS…``; ``code=`` checks the exit status (default 0)."""

    def run(*args: str, code: int | None = 0, store: bool = True, env: dict[str, str] | None = None) -> Result:
        argv = ["--store", str(store_path), *args] if store else list(args)
        result = runner.invoke(cli, argv, env=env, catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, (argv, result.exit_code, result.output)
        return result

    return run


def parse(result: Result) -> Any:
    """The JSON a ``--json`` command printed on stdout."""
    return json.loads(result.stdout)


def weights(seed: int, names: Sequence[str] = ("layers.0.w", "layers.1.w", "embed.weight")) -> dict[str, Any]:
    """A small model state dict of float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((32, 32)).astype(np.float32) for n in names}


@pytest.fixture
def family(store: ckpt.Store) -> dict[str, ckpt.Snapshot]:
    """A store holding a model family.

    main: a (import, pruned) → b (tag ``best``) → c (frozen ``tiny-llama-2026-…``, head of main);
    retry: b → r; instruct: c → i1 (finetune, new model) → i2 (continue, layers.0 cast to float16);
    lora: i2 → l (adapter, base i2).
    """
    sd = weights(0)
    snaps: dict[str, ckpt.Snapshot] = {}
    for key, step in (("a", 0), ("b", 100), ("c", 200)):
        sd = {k: v + np.float32(0.01) for k, v in sd.items()}
        snaps[key] = store.save(
            {"model": sd, "step": step},
            step=step,
            epoch=step // 100,
            model="tiny-llama",
            metrics={"val_loss": 1.0 / (step + 1)},
            message=f"epoch {step // 100}",
        )
    snaps["release"] = snaps["c"]
    store.freeze(snaps["c"].id)
    store.tag("best", snaps["b"].id)
    store.branch("retry", at=snaps["b"].id)
    snaps["r"] = store.save({"model": {k: v * 0.5 for k, v in sd.items()}}, branch="retry", step=150, message="lr/2")
    inst = dict(sd)
    inst["layers.1.w"] = inst["layers.1.w"] * np.float32(1.1)
    snaps["i1"] = store.derive(snaps["c"].id, {"model": inst}, branch="instruct", model="tiny-llama-instruct")
    inst2 = {k: v.astype(np.float16) if k == "layers.0.w" else v for k, v in inst.items()}
    snaps["i2"] = store.save(
        {"model": inst2}, branch="instruct", step=10, message="more sft", files={"config.json": b"{}"}
    )
    snaps["l"] = store.save(
        {"lora": {"layers.1.lora_A": np.ones((4, 32), np.float32)}},
        branch="lora",
        parents=["instruct"],
        relation="adapter",
        base="instruct",
        model="tiny-lora",
        message="adapter",
    )
    store.prune(snaps["a"].id)
    return snaps


def ckpt_executable() -> str:
    """The installed ``ckpt`` console script of this Python."""
    candidate = Path(sysconfig.get_path("scripts")) / ("ckpt.exe" if os.name == "nt" else "ckpt")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ckpt")
    if found is None:
        pytest.skip("the ckpt executable is not installed (pip install -e .)")
    return found


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: no CKPT_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_")}
    env.update(extra)
    return env
