"""Delta chains across the store: which chunks the chunks gc keeps need to decode (format 2.0).

A delta (codec 2) names its reference in the first 34 bytes of its payload. A chunk gc keeps — one a live
snapshot needs, one younger than the grace period, one a save reused meanwhile — keeps its whole chain: a
pruned snapshot's chunk that a live delta needs stays until nothing needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ckpt import settings
from ckpt.errors import CkptError, IntegrityError, MissingObjectError
from ckpt.storage import Backend
from ckpt.store import _layout as layout
from ckpt.store._chunk_reads import CHUNK_HEADER_SIZE
from ckpt.store._codecs._framing import CODEC_DELTA, DELTA_PREFIX

__all__ = ["reference_closure"]


def _reference(backend: Backend, digest: str) -> tuple[str | None, str | None]:
    """``(reference or None, why it cannot be known or None)`` of one stored chunk (reads 50 bytes).

    Keeping more is always safe, so whatever 32 bytes a chunk marked as a delta names are kept, valid prefix or
    not. A chunk that is gone, not a regular file or without a chunk header needs nothing: it cannot be decoded
    as it is, and ``repair`` writes a damaged chunk back whole (a delta as its raw bytes). Only a chunk that
    cannot be read for another reason (the storage failed) leaves its reference unknown.
    """
    try:
        head = backend.read(layout.chunk_path(digest), 0, CHUNK_HEADER_SIZE + DELTA_PREFIX)
    except (MissingObjectError, IntegrityError):
        return None, None
    except CkptError as e:
        return None, e.message
    if len(head) < CHUNK_HEADER_SIZE + 32 or head[:4] != b"ckpt" or head[5] != CODEC_DELTA:
        return None, None
    return head[CHUNK_HEADER_SIZE : CHUNK_HEADER_SIZE + 32].hex(), None


def reference_closure(
    backend: Backend, digests: Iterable[str], present: set[str]
) -> tuple[set[str], list[tuple[str, str]]]:
    """Every chunk the delta chains of ``digests`` reach (references of references …), among ``present``.

    Args:
        backend: the store's.
        digests: the chunks kept (only those in ``present`` are read).
        present: the chunks the store holds (a listing).

    Returns:
        The references reached (not including ``digests`` unless reached), and ``(digest, message)`` per kept
        chunk whose header could not be read: such a chunk might be a delta whose reference is unknown, so gc must not
        delete anything it cannot prove unneeded.
    """
    seen = set(digests)
    todo = [d for d in seen if d in present]
    reached: set[str] = set()
    problems: list[tuple[str, str]] = []
    with ThreadPoolExecutor(settings.threads(), thread_name_prefix="ckpt-chains") as pool:
        while todo:
            found = list(zip(todo, pool.map(lambda d: _reference(backend, d), todo), strict=True))
            todo = []
            for digest, (ref, problem) in found:
                if problem:
                    problems.append((digest, problem))
                if ref is not None:
                    reached.add(ref)
                    if ref not in seen:
                        seen.add(ref)
                        if ref in present:
                            todo.append(ref)
    return reached, problems
