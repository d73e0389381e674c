"""Quickstart: save a checkpoint each epoch, go back to an earlier one, freeze the best as a release.

Run it with ``python examples/quickstart.py [STORE]``; the store defaults to ``./.ckpt`` (or ``$CKPT_STORE``).
"""

from __future__ import annotations

import sys

import torch

import ckpt


def main(url: str | None = None) -> None:
    torch.manual_seed(0)
    try:
        store = ckpt.open(url)
    except ckpt.StoreNotFoundError:
        store = ckpt.init(url)
    print(f"store: {store.url}")

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(256, 16)
    y = x[:, :1] * 2 - x[:, 1:2]
    x_val, y_val = x[:64], y[:64]
    branch = "quickstart"
    if branch in store.branches():
        store.delete_branch(branch)

    for epoch in range(5):
        for _ in range(20):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(x_val), y_val).item()
        snap = store.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
            branch,
            model="quickstart-mlp",
            epoch=epoch,
            step=(epoch + 1) * 20,
            metrics={"val_loss": val},
            message=f"epoch {epoch}",
        )
        print(f"saved {snap.short_id}  epoch {epoch}  val_loss {val:.4f}")

    print("\nhistory (newest first):")
    for s in store.log(branch):
        print(f"  {s.short_id}  epoch {s.epoch}  val_loss {s.metrics['val_loss']:.4f}  {s.message}")

    # go back two saves and restore them into a fresh model
    fresh = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    state = ckpt.restore(fresh, store, f"{branch}~2")
    print(f"\nrestored {branch}~2 (epoch {state['epoch']}) into a fresh model")

    best = min(store.log(branch), key=lambda s: s.metrics["val_loss"])
    release = f"quickstart-mlp-{best.created:%Y-%m-%d}"
    if release in store.tags():  # releases never move: a second run on the same day keeps the first
        print(f"release {release!r} exists already (frozen: it never moves)")
    else:
        release = store.freeze(best.id)  # name: <model>-<YYYY-MM-DD>
        print(f"best snapshot {best.short_id} is frozen as release {release!r}")
    report = store.verify()
    print(f"verify: {report.snapshots} snapshots, {report.chunks} chunks, {'OK' if report.ok else 'DAMAGED'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
