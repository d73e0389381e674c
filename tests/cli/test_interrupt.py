"""Ctrl-C during a command that writes chunks stops at the chunks in flight and commits nothing."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

import ckpt
from ckpt.store._objects import Objects

from .conftest import Invoke, parse

THREADS = 2
#: Chunks each test's command queues (64 chunks of 4 KiB): Ctrl-C comes once they all are.
QUEUED = 64


@pytest.fixture
def ctrl_c_after_first_chunk(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A real SIGINT to this process once the first chunk is written. Every later chunk waits until the pool
    that runs it has been told to stop (its queue dropped, or not), so what is written after the first chunk
    is exactly what was in flight then, plus whatever the pool still runs after Ctrl-C. Yields one entry per
    chunk written."""
    yield from _ctrl_c_after_first(monkeypatch, "put_chunk")


@pytest.fixture
def ctrl_c_after_first_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The same, for the chunks ``verify`` reads and checks."""
    yield from _ctrl_c_after_first(monkeypatch, "check_chunk")


def _ctrl_c_after_first(monkeypatch: pytest.MonkeyPatch, method: str) -> Iterator[list[str]]:
    monkeypatch.setenv("CKPT_THREADS", str(THREADS))
    written: list[str] = []
    claimed: list[bool] = []
    lock = threading.Lock()
    received = threading.Event()  # the main thread got SIGINT
    stopping = threading.Event()  # ... and a pool was shut down after it
    real_call = getattr(Objects, method)
    real_shutdown = ThreadPoolExecutor.shutdown
    real_submit = ThreadPoolExecutor.submit
    queued = threading.Condition()
    per_pool: dict[int, int] = {}  # jobs handed to each pool

    def hooked(self: Objects, *args: Any, **kwargs: Any) -> Any:
        with lock:
            first = not claimed
            claimed.append(first)
        if first:  # Ctrl-C once every chunk is queued: what follows shows whether the queue is dropped
            with queued:
                assert queued.wait_for(lambda: max(per_pool.values(), default=0) >= QUEUED, 60), "never all queued"
        else:
            assert stopping.wait(60), "no pool was shut down after SIGINT"
        out = real_call(self, *args, **kwargs)
        with lock:
            written.append(str(args[0])[:64])
        if first:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    def shutdown(self: ThreadPoolExecutor, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if received.is_set() and not stopping.is_set():
            real_shutdown(self, wait=False, cancel_futures=cancel_futures)  # drop the queue (or not) first
            stopping.set()  # then let the chunks in flight finish
        real_shutdown(self, wait=wait, cancel_futures=cancel_futures)

    def submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future = real_submit(self, fn, *args, **kwargs)
        with queued:
            per_pool[id(self)] = per_pool.get(id(self), 0) + 1
            queued.notify_all()
        return future

    def on_sigint(signum: int, frame: Any) -> None:
        received.set()
        raise KeyboardInterrupt

    monkeypatch.setattr(Objects, method, hooked)
    monkeypatch.setattr(ThreadPoolExecutor, "shutdown", shutdown)
    monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield written
    finally:
        signal.signal(signal.SIGINT, previous)
        stopping.set()


def test_ctrl_c_during_import_stops_promptly_and_commits_nothing(
    invoke: Invoke, store: ckpt.Store, tmp_path: Path, ctrl_c_after_first_chunk: list[str]
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    rng = np.random.default_rng(0)
    weights = {f"layers.{i}.w": rng.standard_normal((64, 256)).astype(np.float32) for i in range(4)}
    save_file(weights, str(folder / "model.safetensors"))  # 256 KiB: 64 chunks of 4 KiB
    (folder / "config.json").write_text('{"model_type": "llama"}')

    result = invoke("import", str(folder), "--model", "tiny", code=130)
    assert "interrupted: nothing was committed and the branch did not move" in result.stderr
    assert "Traceback" not in result.output
    # the first chunk, then at most one more per worker thread (those in flight): not the 63 still queued
    assert 1 <= len(ctrl_c_after_first_chunk) <= 1 + THREADS, len(ctrl_c_after_first_chunk)

    # nothing half-committed: no branch, no record, and the store verifies clean
    assert store.branches() == {} and store.snapshots() == []
    assert parse(invoke("log", "--json")) == []
    assert store.verify().ok
    # the rerun finishes, and gc later frees nothing that a snapshot needs
    invoke("import", str(folder), "--model", "tiny")
    snap = store.resolve("main")
    assert snap.tensor_count == 4 and snap.model == "tiny"
    store.gc(grace=timedelta(0))
    assert store.verify().ok
    loaded = store.load("main", framework="numpy")["model"]
    for name, w in weights.items():
        np.testing.assert_array_equal(loaded[name], w)


@pytest.fixture
def saved(store: ckpt.Store) -> ckpt.Store:
    """A snapshot of 64 chunks of 4 KiB, saved before Ctrl-C is armed."""
    rng = np.random.default_rng(1)
    store.save({"w": rng.standard_normal(64 * 1024).astype(np.float32)})
    return store


def test_ctrl_c_during_verify_stops_promptly(
    invoke: Invoke, saved: ckpt.Store, ctrl_c_after_first_check: list[str]
) -> None:
    result = invoke("verify", code=130)
    assert "interrupted before every object was checked; nothing was changed" in result.stderr
    assert 1 <= len(ctrl_c_after_first_check) <= 1 + THREADS, len(ctrl_c_after_first_check)
