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

**Unchanged tensors are not hashed again.** An async save keeps its staging buffers from save to save, and
once a save is committed each buffer's chunk digests are known. At the next save, a CPU tensor that equals its
buffer byte for byte (every byte is compared, as bits) is neither copied nor hashed: the buffer and its digests
go to the store. Nothing else is trusted: torch's version counter does not see writes through ``.data``,
numpy views, ``torch.from_numpy`` aliases or fused kernels, so it never decides that a tensor is unchanged.
The comparison reads the tensor once (about the cost of the copy it replaces) and saves the hashing and
writing. Synchronous saves and CUDA tensors are always copied and hashed. ``digest_cache=False`` turns the
comparison off.

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
