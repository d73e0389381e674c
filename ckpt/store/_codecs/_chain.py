"""Decode a chunk through its delta chain, bounded, and name the damaged link when the bytes are wrong."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

import blake3
import numpy as np

from ckpt.errors import CorruptChunkError, MissingObjectError
from ckpt.store._codecs._chunk import decode_into, delta_reference
from ckpt.store._codecs._framing import (
    CODEC_GROUPED,
    CODEC_RAW,
    DEFAULT_MAX_DEPTH,
    DELTA_PREFIX,
    OP_ADD,
    corrupt,
)
from ckpt.store._codecs._grouped import BodyPlan, Buffer, Mode, plan_body

__all__ = ["Fetch", "decode_chain", "hash_raw"]

#: Reads one stored chunk by digest: ``(codec, raw length from its header, payload)``. Raises
#: ``MissingObjectError`` when it is not in the store, ``CorruptChunkError`` when its header is bad.
Fetch = Callable[[str], tuple[int, int, Buffer]]

_BIG = 1 << 20


def hash_raw(data: Buffer) -> str:
    """BLAKE3 hex digest of raw bytes (multi-threaded above 1 MiB), the address of a chunk."""
    view = memoryview(data)
    h = blake3.blake3(max_threads=blake3.blake3.AUTO) if view.nbytes >= _BIG else blake3.blake3()
    h.update(view)
    return h.hexdigest()


def _fetch(fetch: Fetch, ref: str, dependent: str, n: int) -> tuple[int, Buffer]:
    try:
        codec, raw_length, payload = fetch(ref)
    except MissingObjectError as e:
        if ref == dependent:
            raise
        raise MissingObjectError(
            f"chunk {dependent[:12]} cannot be decoded: its delta reference {ref[:12]} is missing from the store",
            hint="run `ckpt verify`; `ckpt repair --from URL` can put the reference back from a good copy",
        ) from e
    if raw_length != n:
        raise corrupt(f"its delta chain reaches chunk {ref[:12]}, which holds {raw_length} bytes, not {n}", dependent)
    return codec, payload


def decode_chain(
    digest: str,
    out: Buffer,
    fetch: Fetch,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    verify: bool = True,
    executor: Executor | None = None,
) -> int:
    """Decode chunk ``digest`` into ``out`` through its delta chain; returns the chain's depth (0: no delta).

    The chain is read from the chunk down to its keyframe (one ``fetch`` per link), then decoded from the
    keyframe up, each residual applied to ``out`` in place: memory beyond ``out`` is the chain's payloads
    (stored bytes, at most ``max_depth + 1`` of them). Every delta names its depth, which must fall at each
    link (by one as written; by more where a link was repaired whole, i.e. stored again as a keyframe) and end at
    a keyframe, so a chain can never loop nor grow past ``max_depth``, whatever a damaged store holds.

    Args:
        digest: the chunk's address.
        out: its raw length, writable.
        fetch: reads a stored chunk (see ``Fetch``).
        max_depth: the deepest chain accepted.
        verify: check the decoded bytes against ``digest``; on a mismatch every link is decoded and checked
            again, so that the error names the damaged one.
        executor: decodes blocks in parallel when given (the caller must not be one of its threads).

    Raises:
        CorruptChunkError: a link breaks the format, the chain is deeper than ``max_depth`` or its depths do not
            fall by one, or the bytes do not hash to ``digest``; the message names the damaged link (a damaged
            reference is damage of every chunk that depends on it).
        MissingObjectError: the chunk or a reference is not in the store.
        FormatVersionError: a link uses a codec or variant this ckpt does not know.

    Example:
        >>> from ckpt.store._codecs import encode_chunk, hash_raw
        >>> key = bytes(range(256)) * 4096
        >>> new = key[1:] + key[:1]
        >>> enc = encode_chunk(new, reference=key, reference_digest=hash_raw(key))
        >>> stored = {hash_raw(key): (0, len(key), key), hash_raw(new): (enc.codec, len(new), b"".join(enc.parts))}
        >>> out = bytearray(len(new))
        >>> decode_chain(hash_raw(new), out, stored.__getitem__), bytes(out) == new
        (1, True)
    """
    n = memoryview(out).nbytes
    links: list[tuple[str, int, Buffer]] = []
    current = digest
    expected: int | None = None  # the deepest the next link may be (a repaired link may be shallower)
    while True:
        codec, payload = _fetch(fetch, current, digest, n)
        delta = delta_reference(codec, payload, current)
        links.append((current, codec, payload))
        if delta is None:  # a keyframe ends a chain at any depth (a reference repaired whole is one)
            break
        if expected is None:
            if delta.depth > max_depth:
                raise CorruptChunkError(
                    f"chunk {digest[:12]} is a delta {delta.depth} links deep, more than the {max_depth} allowed",
                    digest=digest,
                    hint="raise the chain limit only for a store you trust",
                )
        elif delta.depth > expected:
            raise corrupt(
                f"its delta chain expects chunk {current[:12]} at depth {expected} or less, not {delta.depth}", digest
            )
        expected = delta.depth - 1
        current = delta.reference
    _apply(links, out, digest, executor, check=False)
    if verify and hash_raw(out) != digest:
        _apply(links, out, digest, executor, check=True)
        raise corrupt("its bytes do not match its digest", digest)  # the store changed between the two passes
    return len(links) - 1


def _plans(links: list[tuple[str, int, Buffer]], n: int) -> list[BodyPlan | memoryview] | None:
    """Every link's checked plan, keyframe first (a raw keyframe: its payload), when they all cut the chunk into
    blocks of one size, so that the chain can be decoded block-major; else ``None``."""
    plans: list[BodyPlan | memoryview] = []
    for link, codec, payload in reversed(links):
        view = memoryview(payload).cast("B") if memoryview(payload).format != "B" else memoryview(payload)
        if codec == CODEC_RAW:
            if view.nbytes != n:
                return None  # decoded link by link, which names the damage
            plans.append(view)
        elif codec == CODEC_GROUPED:
            plans.append(plan_body(view, n, digest=link))
        else:
            delta = delta_reference(codec, view, link)
            assert delta is not None
            mode: Mode = "add" if delta.op == OP_ADD else "xor"
            plans.append(plan_body(view[DELTA_PREFIX:], n, mode=mode, digest=link))
    logs = {p.block_log for p in plans if isinstance(p, BodyPlan)}
    return plans if len(logs) == 1 else None


def _apply_blocks(plans: list[BodyPlan | memoryview], out: Buffer, executor: Executor | None) -> None:
    """Decode a chain block-major: block ``j`` of every link, keyframe first, while it is in cache; blocks in
    parallel on ``executor``. Memory beyond ``out``: one block's planes per task."""
    target = np.frombuffer(memoryview(out).cast("B") if memoryview(out).format != "B" else out, dtype=np.uint8)
    first = next(p for p in plans if isinstance(p, BodyPlan))
    block, nblocks = 1 << first.block_log, first.nblocks

    def task(j: int) -> None:
        lo = j * block
        for plan in plans:
            if isinstance(plan, BodyPlan):
                plan.decode_block(j, target)
            else:
                hi = min(lo + block, plan.nbytes)
                target[lo:hi] = np.frombuffer(plan[lo:hi], dtype=np.uint8)

    if executor is None or nblocks < 2:
        for j in range(nblocks):
            task(j)
    else:
        for _ in executor.map(task, range(nblocks)):
            pass
    for plan in plans:  # the trailing n mod k bytes of each body (a raw keyframe's are in its last block)
        if isinstance(plan, BodyPlan):
            plan.finish(target)


def _apply(
    links: list[tuple[str, int, Buffer]], out: Buffer, digest: str, executor: Executor | None, *, check: bool
) -> None:
    """Decode a chain from its keyframe up into ``out``; with ``check``, raise at the first link whose bytes
    do not hash to its address, naming it."""
    if not check and len(links) > 1:
        plans = _plans(links, memoryview(out).nbytes)
        if plans is not None:
            _apply_blocks(plans, out, executor)
            return
    for i, (link, codec, payload) in enumerate(reversed(links)):
        decode_into(codec, payload, out, digest=link, executor=executor)
        if check and hash_raw(out) != link:
            below = len(links) - 1 - i
            if link == digest:
                raise corrupt("its bytes do not match its digest", digest)
            s = "s" if below > 1 else ""
            raise corrupt(f"its delta reference {link[:12]} ({below} link{s} down its chain) is damaged", digest)
