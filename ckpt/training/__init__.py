"""Checkpoints inside a training loop — async saves, best-by-validation, early stopping, retention, resume.

The public names are ``ckpt.Checkpointer``, ``ckpt.CheckpointerOptions``, ``ckpt.SaveHandle``, ``ckpt.rng_state``
and ``ckpt.set_rng_state``; the retention policies are ``ckpt.KeepLast``, ``ckpt.KeepBest``, ``ckpt.KeepEvery`` and
``ckpt.AnyOf``.
One ``Checkpointer`` saves one run onto one branch::

    with ckpt.Checkpointer(store, "main", monitor="val_loss", retention=ckpt.KeepLast(3)) as ckpts:
        if (state := ckpts.resume()) is not None:          # after a crash or preemption: carry on
            model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])
            ckpt.set_rng_state(state["rng"]); start = state["epoch"] + 1
        for epoch in range(start, 100):
            train_one_epoch(); val_loss = evaluate()
            ckpts.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": ckpt.rng_state(),
                        "epoch": epoch}, step=step, epoch=epoch, metrics={"val_loss": val_loss})
            if ckpts.should_stop(patience=3):
                break
        ckpts.freeze_best(model="tiny-lm")

**What a save costs the loop.** With ``async_save=True`` (the default) ``save()`` only copies the tensors into
staging buffers and returns; chunking, hashing and writing run on a background thread. The staging buffers are
kept and reused from save to save (fresh memory costs page faults, several times the copy itself). At most
``max_pending`` saves are queued or running at once, each with its own set of staging buffers, so staging holds
at most ``max_pending`` copies of the state in host memory; a ``save()`` issued when all are busy blocks until
one finishes. The loop may change its tensors as soon as ``save()`` returns: the snapshot holds the values
they had at the call.

**Unchanged tensors cost nothing.** Each tensor's chunk digests are remembered together with its identity: its
storage, offset, shape, strides, dtype, device and torch's version counter ``_version``, which every in-place
torch operation bumps (``add_``, ``copy_``, optimizer steps, ``load_state_dict``, also under ``no_grad``). A
tensor found unchanged is neither copied nor hashed: its known digests go to the store. Writes that bypass
torch's version counter (fused optimizers, ``p.data.add_()``, writes through a numpy view or a raw pointer) are
caught by comparing a sample of each cached tensor's elements (64 of them, every element of a small tensor)
with the values it had when it was hashed; a tensor caught this way is never cached again. A write outside
the version counter that changes only elements outside the sample would go unseen: pass
``digest_cache=False`` if your code does such sparse, untracked writes.

**Everything is read from the store.** ``latest()``, ``best()``, ``should_stop()`` and retention look at the
branch's history, so a restarted process (or a second ``Checkpointer`` on the same branch) gives the same
answers. A run's history is the branch's chain of ``continue`` saves back to the snapshot that started it
(a root, or a fine-tune's first snapshot), through branch points: a branch made at ``main~2`` carries on
``main``'s run. Retention prunes only snapshots that a ``Checkpointer`` saved on this very branch (they carry
``metadata["checkpointer"]["branch"]``), never a parent line's or another branch's.

The modules (internal): ``_options`` (``CheckpointerOptions``: judging, retention, writing), ``_checkpointer``
(the ``Checkpointer``: saving and its lifecycle), ``_reading`` (what is read back from the run: latest, best,
resume, early stopping), ``_handle`` (``SaveHandle``, and the error channel that carries background failures
back to the loop), ``_commit`` (one save committed, the digest cache re-checked), ``_save_job`` (one save on its
way to the background: checked record, staged state, cancellation), ``_staging`` (copying into reused buffers),
``_digest_cache`` (unchanged tensors), ``_background`` (the save thread and the exit hook), ``_history`` (a run's
saves in the store), ``_judging`` (best and early stopping), ``_metrics`` (the numbers a framework logged) and
``_rng`` (random generator state).
"""

from ckpt.training._checkpointer import Checkpointer
from ckpt.training._handle import SaveHandle
from ckpt.training._metrics import scalar_metrics as scalar_metrics  # for ckpt.integrations; not in __all__
from ckpt.training._options import CheckpointerOptions
from ckpt.training._rng import rng_state, set_rng_state

__all__ = ["Checkpointer", "CheckpointerOptions", "SaveHandle", "rng_state", "set_rng_state"]
