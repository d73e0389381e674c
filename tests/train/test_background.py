"""The background save thread: errors are never lost, Ctrl-C is never swallowed nor leaves a save hanging,
a dropped or forked ``Checkpointer`` cleans up after itself, a branch moved under a save is reported."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

import ckpt
from ckpt.errors import CkptError, RefConflictError
from ckpt.storage import FaultyBackend, InjectedFault
from ckpt.train import Checkpointer

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``, run on a helper thread: fails (instead of hanging the suite) if it takes longer than ``seconds``."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


@contextmanager
def _refs_held(store: ckpt.Store, at_most: float = 120.0) -> Iterator[threading.Event]:
    """Hold the store's ref lock on another thread (saves write everything, then wait to move the branch) until
    the yielded event is set; ``at_most`` seconds is only a safety net, so that a test that goes wrong fails
    instead of hanging (no test waits for it)."""
    root = store.backend.local_path("")
    assert root is not None
    path = Path(root) / "locks" / "refs.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held.set()
            release.wait(at_most)
        finally:
            os.close(fd)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    held.wait()
    try:
        yield release
    finally:
        release.set()
        t.join()


def _parked_in_futures_wait(thread_id: int) -> bool:
    """Whether a thread is blocked inside ``concurrent.futures.wait``, on the lock of its waiter's event."""
    frame = sys._current_frames().get(thread_id)
    stack = []
    while frame is not None:
        stack.append((frame.f_code.co_filename, frame.f_code.co_name))
        frame = frame.f_back
    if not stack or stack[0][1] != "wait" or not stack[0][0].endswith("threading.py"):
        return False
    return any(
        name == "wait" and file.endswith(os.path.join("concurrent", "futures", "_base.py")) for file, name in stack
    )


def _until_waiting_for_the_lock(store: ckpt.Store, step: int) -> None:
    """Return once the save of ``step`` has written its record: it then waits for the ref lock to commit."""
    while not any(s.step == step for s in store.snapshots()):
        threading.Event().wait(0.005)


@contextmanager
def _ctrl_c_once_waiting() -> Iterator[None]:
    """Ctrl-C, as the terminal sends it, once this thread is blocked waiting for the saves in flight.

    The Checkpointer waits with ``concurrent.futures.wait``; a helper thread watches this thread's stack and
    sends SIGINT when it is parked there (the event, not a delay), so the KeyboardInterrupt lands inside
    ``wait()``/``close()``, where a user's Ctrl-C would.
    """
    main = threading.get_ident()
    done = threading.Event()

    def send() -> None:
        while not done.is_set():
            if _parked_in_futures_wait(main):
                os.kill(os.getpid(), signal.SIGINT)
                return
            done.wait(0.001)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield
    finally:
        done.set()  # a block that never waited must not leave a Ctrl-C pending for another test
        sender.join()


class _Gated:
    """A backend whose writes wait until ``open`` is set: the saves of a test fail only once all are issued."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.open = threading.Event()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in ("put_if_absent", "replace", "compare_and_swap", "delete"):
            return attr

        def gated(*args: Any, **kwargs: Any) -> Any:
            self.open.wait()
            return attr(*args, **kwargs)

        return gated


def _failing(store: ckpt.Store) -> tuple[ckpt.Store, threading.Event]:
    """A store on which every write fails, once the returned event is set (writes wait for it)."""
    store.save({"w": torch.zeros(10)}, step=0)
    gate = _Gated(FaultyBackend(store.backend, fail_after=0))
    return ckpt.Store(gate, store.config), gate.open  # type: ignore[arg-type]


def test_every_failed_save_is_raised_once(local_store: ckpt.Store) -> None:
    failing, fail = _failing(local_store)
    ckpts = Checkpointer(failing, "main", max_pending=3)
    for i in (1, 2):
        ckpts.save({"w": torch.full((10,), float(i))}, step=i)  # none failed yet: save() raises nothing
    fail.set()
    raised = []
    for _ in range(3):
        try:
            ckpts.wait()
        except InjectedFault as e:
            raised.append(e)
    assert len(raised) == 2 and raised[0] is not raised[1]  # one per call, oldest first: neither lost
    ckpts.close()


def test_close_raises_with_every_other_failure_attached(local_store: ckpt.Store) -> None:
    failing, fail = _failing(local_store)
    ckpts = Checkpointer(failing, "main", max_pending=3)
    for i in (1, 2, 3):
        ckpts.save({"w": torch.full((10,), float(i))}, step=i)  # none failed yet: save() raises nothing
    fail.set()
    with pytest.raises(InjectedFault) as info:
        ckpts.close()  # waits for all three
    notes = getattr(info.value, "__notes__", [])
    assert sum("another background save failed too" in n for n in notes) == 2
    ckpts.close()  # closed: nothing more to say


def test_ctrl_c_interrupts_wait(local_store: ckpt.Store) -> None:
    ckpts = Checkpointer(local_store, "main")
    with _refs_held(local_store) as release:
        handle = ckpts.save({"w": torch.ones(1000)}, step=1)  # cannot commit while the lock is held
        with _ctrl_c_once_waiting(), pytest.raises(KeyboardInterrupt):
            ckpts.wait()
        assert not handle.done()  # interrupted, not ended by the save (the lock is still held)
        release.set()
    assert handle.result(timeout=30).step == 1  # the save itself goes on
    ckpts.close()


def test_ctrl_c_while_closing_cancels_the_saves_not_started(local_store: ckpt.Store) -> None:
    ckpts = Checkpointer(local_store, "main", max_pending=2)
    with _refs_held(local_store) as release:
        writing = ckpts.save({"w": torch.ones(1000)}, step=1)
        queued = ckpts.save({"w": torch.ones(1000) * 2}, step=2)
        _until_waiting_for_the_lock(local_store, 1)  # the first save is being written, the second queued
        with _ctrl_c_once_waiting(), pytest.raises(KeyboardInterrupt):
            ckpts.close()  # e.g. a second Ctrl-C while leaving the with block
        assert not writing.done()  # interrupted while the save waited for the lock
        release.set()
    assert writing.result(timeout=30).step == 1  # the save being written finishes
    with pytest.raises(CancelledError):
        queued.result(timeout=30)
    assert queued.done()
    with pytest.raises(CkptError, match="closed"):
        ckpts.save({"w": torch.ones(3)}, step=3)
    ckpts.close()
    assert [s.step for s in local_store.log("main")] == [1] and local_store.verify().ok


def _save_interrupted_at(ckpts: Checkpointer, line: int, state: dict[str, Any], step: int) -> bool:
    """``ckpts.save(...)`` with a KeyboardInterrupt raised before the ``line``-th line it runs, as a signal
    would be; returns whether it was interrupted (``False``: it ran fewer lines and returned)."""
    code = Checkpointer.save.__code__
    seen = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal seen
        if event == "line":
            seen += 1
            if seen == line:
                raise KeyboardInterrupt
        return local

    sys.settrace(lambda frame, event, arg: local if frame.f_code is code else None)
    try:
        ckpts.save(state, step=step)
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    return False


def test_ctrl_c_anywhere_in_save_leaves_nothing_hanging(local_store: ckpt.Store) -> None:
    """Ctrl-C before any line of ``save()``: afterwards ``wait()`` returns, the single staging slot is free
    again (the next save does not block forever), and the store is whole."""
    line = 0
    while True:
        line += 1
        branch = f"b{line}"
        ckpts = Checkpointer(local_store, branch, max_pending=1)
        ckpts.save({"w": torch.zeros(1000)}, step=0).result()
        interrupted = _save_interrupted_at(ckpts, line, {"w": torch.ones(1000)}, 1)
        _within(10, ckpts.wait)
        handle = _within(10, lambda c=ckpts: c.save({"w": torch.full((1000,), 2.0)}, step=2))  # type: ignore[misc]
        assert handle.result(timeout=30).step == 2, line
        ckpts.close()
        assert {s.step for s in local_store.log(branch)} <= {0, 1, 2}, line
        if not interrupted:
            break
    assert line > 10  # it went through every line of save()
    assert local_store.verify().ok


def _save_threads(branch: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"ckpt-save-{branch}" and t.is_alive()]


def test_a_dropped_checkpointer_is_collected_with_its_thread(local_store: ckpt.Store) -> None:
    """Without close(), a Checkpointer that is no longer referenced goes, with its staging memory and thread,
    once its saves are committed."""
    ckpts = Checkpointer(local_store, "dropped")
    ckpts.save({"w": torch.randn(1000)}, step=1).result()
    (thread,) = _save_threads("dropped")
    with _refs_held(local_store) as release:
        handle = ckpts.save({"w": torch.randn(1000)}, step=2)
        ref = weakref.ref(ckpts)
        collected = threading.Event()
        weakref.finalize(ckpts, collected.set)
        del ckpts
        gc.collect()
        assert ref() is not None  # a save still queued keeps it alive
        release.set()
    assert handle.result(timeout=60).step == 2
    assert local_store.resolve("dropped").step == 2  # the save was not lost
    while not collected.is_set():  # the background thread lets go of it once its save is committed
        gc.collect()
        collected.wait(0.01)
    assert ref() is None
    thread.join(60)
    assert not thread.is_alive()


def test_a_forked_child_cannot_save_with_its_parents_checkpointer(tmp_path: Path) -> None:
    """In a fork the background thread does not exist: save() says so instead of queueing forever."""
    url = str(tmp_path / "store")
    ckpt.init(url)
    script = """
import os, signal, sys, torch, ckpt
from ckpt.train import Checkpointer
ckpts = Checkpointer(ckpt.open(sys.argv[1]), "main")
ckpts.save({"w": torch.zeros(10)}, step=0).result()
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a child that hangs must not outlive the test
    try:
        ckpts.save({"w": torch.ones(10)}, step=1)
        ckpts.wait()
        print("child saved", flush=True)
    except ckpt.CkptError as e:
        print("child refused:", e.message, flush=True)
    ckpts.close()
    os._exit(0)
os.waitpid(pid, 0)
ckpts.save({"w": torch.ones(10)}, step=2).result()
ckpts.close()
print("parent saved", flush=True)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("child refused:") and "another process" in lines[0]
    assert lines[1] == "parent saved"
    assert [s.step for s in ckpt.open(url).log("main")] == [2, 0]


def test_a_branch_moved_under_a_background_save(local_store: ckpt.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer moves the branch while a save is being written: the save's RefConflictError is raised at
    the next call, its snapshot is in the reflog, and the run carries on from the branch's new head."""
    store = local_store
    other = ckpt.open(str(store.url))
    cas = store.backend.compare_and_swap
    raced: list[ckpt.Snapshot] = []

    def racing(path: str, expected: bytes | None, new: bytes | None) -> Any:
        if not raced and path.endswith("heads/main"):
            raced.append(other.save({"w": torch.full((10,), -1.0)}, "main", step=99, message="the other writer"))
        return cas(path, expected, new)

    with Checkpointer(store, "main", monitor="val_loss") as ckpts:
        ckpts.save({"w": torch.zeros(10)}, step=1, metrics={"val_loss": 1.0}).result()
        monkeypatch.setattr(store.backend, "compare_and_swap", racing)
        lost = ckpts.save({"w": torch.ones(10)}, step=2, metrics={"val_loss": 0.5})
        with pytest.raises(RefConflictError) as info:
            ckpts.wait()
        with pytest.raises(RefConflictError):
            lost.result()
        assert info.value.snapshot is not None
        assert any(e.new == info.value.snapshot and e.action == "conflict" for e in store.reflog("refs/heads/main"))
        assert not ckpts.should_stop(patience=1)  # the failed save is not judged: 1.0 only
        monkeypatch.undo()
        ckpts.save({"w": torch.full((10,), 3.0)}, step=3, metrics={"val_loss": 0.9}).result()
    assert [s.step for s in store.log("main")] == [3, 99, 1]
    assert store.verify().ok
