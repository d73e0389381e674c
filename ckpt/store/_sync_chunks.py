"""The chunks of a sync: each copied as it is stored when the destination can decode it, checked on the way.

A chunk is copied as its stored object (raw, grouped or delta: its encoded bytes, so the destination keeps the
source's compression and deltas) after it is decoded and hashed at the source: damage is never copied. A delta
is copied as it is only where the destination can decode it:

- the destination's format holds deltas (2.0, ``delta_depth`` > 0) and the delta's depth is within its
  ``delta_depth``;
- its reference is whole at the destination already, at a lower depth there, or is copied by the same sync
  first (references are sent before the chunks that need them: a reference that no snapshot of the sync names,
  as a pruned parent's chunk, is copied too).

Otherwise it is stored whole at the destination (a keyframe): grouped when the destination's format has codec 1
(1.3 and later) and that pays, else raw. A grouped chunk sent to a store older than 1.3 is sent raw, since
that store's readers know no codec 1.

Chains are copied from their first chunk to send up: each link is decoded once, against the raw bytes of the
link below it (held while its dependents are sent), so a chain of *d* deltas costs *d* + 1 decodes, not
*d*² / 2.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ckpt.errors import CkptError
from ckpt.store._chunk_format import CHUNK_HEADER_SIZE, CODEC_RAW, chunk_header
from ckpt.store._codecs._framing import CODEC_DELTA, CODEC_GROUPED, DELTA_PREFIX
from ckpt.store._encoded import delta_depth, encode
from ckpt.store._layout import chunk_path
from ckpt.store._parts import StoreParts
from ckpt.store._types import Progress

__all__ = ["Need", "copy_chunks"]


@dataclass(frozen=True)
class Need:
    """A chunk a sync must copy: a tensor or file that uses it (for messages and the byte-grouping), the
    snapshot that holds it, and its raw length in bytes."""

    name: str
    snapshot: str
    length: int
    dtype: str | None


def _link(parts: StoreParts, digest: str) -> tuple[int, str | None, int]:
    """``(codec, delta reference or None, depth)`` of a stored chunk, from its first 50 bytes; a chunk that
    cannot be read so is taken as no delta (reading it whole says what is wrong with it)."""
    try:
        head = parts.backend.read(chunk_path(digest), 0, CHUNK_HEADER_SIZE + DELTA_PREFIX)
        codec = head[5] if len(head) > 5 and head[:4] == b"ckpt" else CODEC_RAW
        if codec != CODEC_DELTA:
            return codec, None, 0
        ref, depth = delta_depth(codec, head[CHUNK_HEADER_SIZE:], digest)
        return codec, ref, depth
    except CkptError:
        return CODEC_RAW, None, 0


def copy_chunks(
    src: StoreParts,
    dst: StoreParts,
    missing: dict[str, Need],
    pool: ThreadPoolExecutor,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Copy the chunks ``missing`` (not whole at the destination), and the references they need, from ``src``
    to ``dst``; returns the bytes written per chunk copied (0: another writer stored it meanwhile).

    Raises:
        CorruptChunkError, MissingObjectError: a chunk or a link of its chain is damaged or missing at the
            source (that chunk and the chunks that need it are not copied).
    """
    version = tuple(int(x) for x in dst.config.format_version.split("."))
    grouped_ok = version >= (1, 3)
    max_depth = dst.config.delta_depth if version >= (2, 0) else 0
    todo = dict(missing)
    links: dict[str, tuple[int, str | None, int]] = {}
    at_dst: dict[str, int] = {}  # a reference whole at the destination already: its depth there
    wave = list(todo)
    while wave:  # read each chunk's link; a reference neither copied nor whole at the destination is copied
        links.update(zip(wave, pool.map(lambda d: _link(src, d), wave), strict=True))
        refs = {r: todo[d] for d in wave if (r := links[d][1]) is not None and r not in todo and r not in at_dst}
        checks = pool.map(dst.objects.chunk_whole, list(refs), [n.length for n in refs.values()])
        whole = dict(zip(refs, checks, strict=True))
        for r, there in whole.items():
            if there:
                at_dst[r] = _link(dst, r)[2]
        wave = [r for r, there in whole.items() if not there]
        todo.update({r: refs[r] for r in wave})

    def as_stored(digest: str) -> bool:
        codec, ref, depth = links[digest]
        if codec == CODEC_GROUPED:
            return grouped_ok
        if codec != CODEC_DELTA:
            return True
        if depth > max_depth or ref is None:
            return False
        return ref in todo or at_dst.get(ref, depth) < depth

    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for d in todo:
        ref = links[d][1]
        if ref is not None and ref in todo and ref != d:
            children.setdefault(ref, []).append(d)
        else:
            roots.append(d)

    def send(digest: str, below: tuple[str, memoryview] | None) -> tuple[memoryview, int]:
        need = todo[digest]
        codec, data = src.objects.read_object(digest, need.length, tensor=need.name, snapshot=need.snapshot)
        # checked before anything is written: damage is never copied (a raw chunk is hashed where it lies)
        raw = src.objects.decode_object(
            digest, codec, data, need.length, known=below, tensor=need.name, snapshot=need.snapshot
        )
        if as_stored(digest):
            written = dst.objects.put_stored(digest, data, need.length)
        else:  # the destination cannot decode it as stored: a keyframe
            enc = encode(raw, need.dtype) if grouped_ok else None
            body: list[bytes | bytearray | memoryview] = (
                [chunk_header(need.length, enc.codec), *enc.parts] if enc else [chunk_header(need.length), raw]
            )
            written = dst.objects.put_stored(digest, body, need.length)
        if progress and digest in missing:
            progress(need.length)
        return raw, written

    def tree(root: str) -> dict[str, int]:
        out: dict[str, int] = {}
        stack: list[tuple[str, tuple[str, memoryview] | None]] = [(root, None)]
        while stack:
            digest, below = stack.pop()
            if digest in out:  # a cycle of references: damage, refused when decoded
                continue
            raw, out[digest] = send(digest, below)
            stack.extend((child, (digest, raw)) for child in children.get(digest, ()))
        return out

    written: dict[str, int] = {}
    for part in pool.map(tree, roots):
        written.update(part)
    left = set(todo) - set(written)
    if left:  # a cycle of references (damage: depths must fall): each is read, decoded and refused on its own
        for part in pool.map(tree, sorted(left)):
            written.update(part)
    return written
