"""Quickstart: save a checkpoint each epoch, go back to an earlier one, branch off, freeze the best as a release.

Run it with ``python examples/quickstart.py [STORE]``; the store defaults to ``./.ckpt`` (or ``$CKPT_STORE``) and
is created if it does not exist. It leaves the store the README's commands talk about:

- ``main``: five epochs of a small MLP (``tiny-mlp``), one snapshot each, with its validation loss;
- ``retry``: a branch from two saves back (``main~2``), trained on with a lower learning rate;
- ``tiny-mlp-<today>``: the best epoch of ``main``, frozen as a dated release.

Its last lines list the commands to try next. Run it again and ``main`` resumes where it stopped (model and
optimizer restored from its head) for five more epochs; ``retry`` starts again from the new ``main~2``, and today's
release stays (a frozen release never moves).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import torch

import ckpt

MODEL = "tiny-mlp"


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def main(url: str | None = None) -> None:
    torch.manual_seed(0)
    try:
        store = ckpt.open(url)
    except ckpt.StoreNotFoundError:
        store = ckpt.init(url)
    print(f"store: {store.url}")

    x = torch.randn(256, 16)
    y = x[:, :1] * 2 - x[:, 1:2]
    x_val, y_val = x[:64], y[:64]

    def val_loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x_val), y_val).item()

    # 1. a snapshot of the whole training state after every epoch, on the branch main -----------------------------
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = 0
    if "main" in store.branches():  # a second run resumes main where the first one stopped
        first = ckpt.restore(model, store, "main", optimizer=opt)["epoch"] + 1
        print(f"\n1. resuming main at epoch {first}, a save every epoch:")
    else:
        print("\n1. training, a save every epoch on main:")
    for epoch in range(first, first + 5):
        train(model, opt, x, y)
        loss = val_loss(model)
        snap = store.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
            "main",
            model=MODEL,
            epoch=epoch,
            step=(epoch + 1) * 20,
            metrics={"val_loss": loss},
            message=f"lr 1e-2, epoch {epoch}",
        )
        print(f"   saved {snap.short_id}  epoch {epoch}  val_loss {loss:.4f}")

    # 2. go back two saves: restore them into fresh objects, and carry on from there on a branch -------------------
    fresh = make_model()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    state = ckpt.restore(fresh, store, "main~2", optimizer=fresh_opt)
    print(f"\n2. restored main~2 (epoch {state['epoch']}) into a fresh model and optimizer")
    if "retry" in store.branches():
        store.reset("retry", "main~2")  # a second run starts its retry from this run's main~2 again
    else:
        store.branch("retry", at="main~2")
    for group in fresh_opt.param_groups:
        group["lr"] = 3e-3
    for epoch in range(state["epoch"] + 1, state["epoch"] + 3):
        train(fresh, fresh_opt, x, y)
        loss = val_loss(fresh)
        snap = store.save(
            {"model": fresh.state_dict(), "optimizer": fresh_opt.state_dict(), "epoch": epoch},
            "retry",
            model=MODEL,
            epoch=epoch,
            step=(epoch + 1) * 20,
            metrics={"val_loss": loss},
            message=f"lr 3e-3, epoch {epoch}",
        )
        print(f"   saved {snap.short_id} on retry  epoch {epoch}  val_loss {loss:.4f}")

    # 3. the best epoch of main becomes a frozen, dated release ---------------------------------------------------
    best = min(store.log("main", limit=5), key=lambda s: s.metrics["val_loss"])
    release = f"{MODEL}-{datetime.now(timezone.utc):%Y-%m-%d}"
    if release in store.tags():  # a release never moves: a second run on the same day keeps the first
        print(f"\n3. the release {release} exists already (frozen: it never moves)")
    else:
        release = store.freeze(best.id)  # named <model>-<YYYY-MM-DD> (today, UTC)
        print(f"\n3. froze epoch {best.epoch} ({best.short_id}, the best val_loss) as the release {release}")

    # 4. every chunk read back and checked against its digest -----------------------------------------------------
    report = store.verify()
    verdict = "ok" if report.ok else "DAMAGED"
    print(f"\n4. verify: {report.snapshots} snapshots, {report.chunks} chunks checked: {verdict}")

    here = "" if url is None else f" --store {url}"
    print("\nnext, try (the README explains each):")
    for command in (
        "log",
        "log --graph --all",
        "show main --tensors",
        "diff main~1 main",
        f"restore {release} --to out",
        "verify",
    ):
        print(f"   ckpt{here} {command}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
