"""Where each object lives under a store's root (normative in docs/format.md)."""

from __future__ import annotations

import re

__all__ = [
    "CHUNKS",
    "CONFIG",
    "LOGS",
    "PRUNED",
    "REFS_HEADS",
    "REFS_TAGS",
    "SIGNATURES",
    "SNAPSHOTS",
    "TABLES",
    "TMP",
    "branch_path",
    "chunk_path",
    "digest_from_path",
    "is_object_path",
    "pruned_path",
    "reflog_prefix",
    "snapshot_path",
    "table_path",
    "tag_path",
]

CONFIG = "ckpt.json"
CHUNKS = "chunks/"
TABLES = "tables/"
SNAPSHOTS = "snapshots/"
REFS_HEADS = "refs/heads/"
REFS_TAGS = "refs/tags/"
LOGS = "logs/"
PRUNED = "pruned/"
SIGNATURES = "signatures/"
TMP = "tmp/"


def chunk_path(digest: str) -> str:
    """``chunks/ab/abcdef…``"""
    return f"{CHUNKS}{digest[:2]}/{digest}"


def table_path(digest: str) -> str:
    """``tables/ab/abcdef….json``"""
    return f"{TABLES}{digest[:2]}/{digest}.json"


def snapshot_path(snapshot_id: str) -> str:
    """``snapshots/ab/abcdef….json``"""
    return f"{SNAPSHOTS}{snapshot_id[:2]}/{snapshot_id}.json"


def pruned_path(snapshot_id: str) -> str:
    """``pruned/abcdef….json``"""
    return f"{PRUNED}{snapshot_id}.json"


def branch_path(name: str) -> str:
    """``refs/heads/<name>``"""
    return f"{REFS_HEADS}{name}"


def tag_path(name: str) -> str:
    """``refs/tags/<name>``"""
    return f"{REFS_TAGS}{name}"


def reflog_prefix(ref: str) -> str:
    """``logs/refs/heads/<name>/`` for ``refs/heads/<name>``."""
    return f"{LOGS}{ref}/"


def digest_from_path(path: str) -> str:
    """The digest or id in an object path (last component, without ``.json``)."""
    name = path.rsplit("/", 1)[-1]
    return name[:-5] if name.endswith(".json") else name


_HEX64 = re.compile(r"[0-9a-f]{64}")
_TMP_NAME = re.compile(r"[0-9]+-[0-9a-f]{32}")  # what the local backend names its temporary files


def is_object_path(path: str) -> bool:
    """Whether ``path`` is named as ckpt names its collectable objects: ``chunks/ab/<digest>``,
    ``tables/ab/<digest>.json``, ``snapshots/ab/<id>.json``, ``pruned/<id>.json`` or a temporary file of
    ``tmp/``. ``gc`` and ``repair`` delete nothing else: a file of another name was not written by ckpt."""
    parts = path.split("/")
    if len(parts) == 3 and f"{parts[0]}/" in (CHUNKS, TABLES, SNAPSHOTS):
        name = parts[2]
        if f"{parts[0]}/" != CHUNKS:
            if not name.endswith(".json"):
                return False
            name = name[:-5]
        return bool(_HEX64.fullmatch(name)) and parts[1] == name[:2]
    if len(parts) == 2 and f"{parts[0]}/" == PRUNED:
        return parts[1].endswith(".json") and bool(_HEX64.fullmatch(parts[1][:-5]))
    if len(parts) == 2 and f"{parts[0]}/" == TMP:
        return bool(_TMP_NAME.fullmatch(parts[1]))
    return False
