"""A chunk that gc deletes between a save's existence check and its write is written back, checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt.errors import CorruptChunkError
from ckpt.storage import LocalBackend
from ckpt.store import _layout as layout
from ckpt.store._objects import Objects, hash_chunk


class GcBetweenCalls(LocalBackend):
    """Answers that a chunk exists, then deletes it, as a concurrent gc would."""

    def exists(self, path: str) -> bool:
        found = super().exists(path)
        if found and path.startswith(layout.CHUNKS):
            self.delete([path])
        return found


@pytest.fixture
def objects(tmp_path: Path) -> Objects:
    return Objects(GcBetweenCalls(str(tmp_path)))


def test_the_right_bytes_are_written_back(objects: Objects) -> None:
    data = b"the weights" * 100
    digest = hash_chunk(data)
    objects.backend.put_if_absent(layout.chunk_path(digest), [b"x" * 16, data])  # stored once already
    assert objects.put_chunk(memoryview(data), digest) == (digest, 16 + len(data))
    assert objects.read_chunk(digest) == data


def test_a_wrong_known_digest_never_names_other_bytes(objects: Objects) -> None:
    old, new = b"old weights" * 100, b"new weights" * 100
    stale = hash_chunk(old)
    objects.backend.put_if_absent(layout.chunk_path(stale), [b"x" * 16, old])
    digest, _ = objects.put_chunk(memoryview(new), stale)  # a stale digest cache offers the old address
    assert digest == hash_chunk(new) and objects.read_chunk(digest) == new
    with pytest.raises(Exception) as info:  # the old address holds nothing rather than the wrong bytes
        objects.read_chunk(stale)
    assert not isinstance(info.value, CorruptChunkError)
