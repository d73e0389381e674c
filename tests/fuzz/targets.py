"""Fuzz targets: every parser that reads what a store or an imported folder holds, or what a user types.

Each ``Target`` has a hypothesis strategy of hostile inputs, built from a valid example (mutated fields,
flipped and cut bytes, values known to break parsers: deep nesting, lone surrogates, huge numbers, NUL
bytes…), and a ``run(value)`` that feeds one input to every public surface that reads it: the Python API,
the command line, export. A run may succeed or raise a ``CkptError``; anything else is a bug.

Shared by ``tests/fuzz`` (a bounded, derandomized run inside the test suite) and ``benchmarks/robustness.py``
(the long run that prints the figures). No target touches the network: URLs are drawn only from local and
in-memory schemes and made-up ones.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import json
import math
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from hypothesis import strategies as st

import ckpt
from ckpt.errors import CkptError
from ckpt.store import _layout as layout

__all__ = ["STATS", "TARGETS", "Target", "check_cli", "read_everything"]

#: Reads attempted so far in this process: ``ok`` (the reader returned) and ``refused`` (a ``CkptError``).
STATS: Counter[str] = Counter()


@dataclass(frozen=True)
class Target:
    """One parser under fuzz.

    Attributes:
        name: short name, used in test ids and the benchmark's table.
        strategy: hostile inputs.
        run: reads one input through every surface that parses it; raises only ``CkptError`` when sound.
        valid: a valid input, built on demand.
    """

    name: str
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], None]
    valid: Callable[[], Any]

    def warm_up(self) -> None:
        """Run one valid input, so that lazy imports (torch…) are done before anything is measured."""
        self.run(self.valid())


# -- hostile values ------------------------------------------------------------------------------------

_DEEP = 5000
#: Values that broke parsers before (or would): each one is tried in place of any field.
SPECIAL_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**31,
    2**63,
    2**70,
    -(2**70),
    10**300,
    1.5,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "é" * 300,
    "x" * 5000,
    "../../../etc/passwd",
    "/etc/passwd",
    "a/../../b",
    "C:\\x",
    "2026-13-45T99:99:99.000000Z",
    "2026-11-28",
    "0000-01-01T00:00:00.000000Z",
    "NaN",
    "Infinity",
    "0" * 64,
    "g" * 64,
    "A" * 64,
    [],
    {},
    [0, 2**70],
    [-1],
    [1] * 100,
    {"$dict": [[1]]},
    {"$dict": [[True, 1]]},
    {"$dict": "x"},
    {"$tensor": 5},
    {"$tensor": "nope"},
    {"$tuple": {}},
    {"$float": "nan", "x": 1},
    {"$float": "zero"},
    {"$dict": [["k", {"$tensor": "../x"}]]},
]

#: Whole documents that broke parsers before (or would).
SPECIAL_DOCS: list[bytes] = [
    b"",
    b"null",
    b"0",
    b'"a string"',
    b"[]",
    b"[" * _DEEP + b"]" * _DEEP,
    b'{"a":' * _DEEP + b"1" + b"}" * _DEEP,
    b"1" + b"0" * 5000,
    b"1e999999",
    b"NaN",
    b'{"x": NaN}',
    b"\xff\xfe\x00",
    b'"\\ud800"',
    b'{"\\ud800": 1}',
    b"\x00" * 64,
    b'{"id": "' + b"a" * 64 + b'", "id": "' + b"b" * 64 + b'"}',
]


def _json_scalars() -> st.SearchStrategy[Any]:
    return (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=12)
        | st.sampled_from(SPECIAL_VALUES).map(copy.deepcopy)  # a mutation must never reach the list itself
    )


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (and non-finite floats, lone surrogates, huge numbers)."""
    return st.recursive(
        _json_scalars(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=max_leaves,
    )


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) in a JSON value, containers first."""
    todo = [value]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                yield node, k
                todo.append(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield node, i
                todo.append(v)


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> Any:
    """``valid`` with one to three of its fields replaced, deleted, or joined by a stranger."""
    value = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(value))
        if not slots:
            return draw(json_values())
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "special", "special", "delete", "add"]))
        if action == "replace":
            container[key] = draw(json_values())
        elif action == "special":
            container[key] = draw(st.sampled_from(SPECIAL_VALUES).map(copy.deepcopy))
        elif action == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=6))] = draw(json_values(4))
        else:
            container.append(draw(json_values(4)))
    return value


def _dumps(value: Any, ascii_only: bool) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{}"


@st.composite
def byte_damage(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bytes flipped, cut, or inserted."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if not out:
            action = "insert"
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if action == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del out[at:]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


def documents(valid: Any) -> st.SearchStrategy[bytes]:
    """JSON documents near ``valid``: mutated fields, damaged bytes, known-bad documents, anything at all."""
    good = json.dumps(valid).encode()
    return st.one_of(
        st.builds(_dumps, mutated(valid), st.booleans()),
        st.builds(_dumps, mutated(valid), st.booleans()),
        byte_damage(good),
        st.sampled_from(SPECIAL_DOCS),
        st.builds(_dumps, json_values(), st.booleans()),
        st.binary(max_size=64),
    )


# -- a small store to damage ------------------------------------------------------------------------------

_TMP = Path(tempfile.mkdtemp(prefix="ckpt-fuzz-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
_counter = itertools.count()


@dataclass(frozen=True)
class _Template:
    files: dict[str, bytes]
    head: str
    older: str
    pruned: str
    table: str
    chunk: str
    signature: str
    trust: Path


_template: _Template | None = None


def template() -> _Template:
    """A small store (built once): three saves on main, a plain tag, a frozen release, a pruned snapshot."""
    global _template
    if _template is None:
        root = _TMP / "template"
        store = ckpt.init(str(root), chunk_size=16)
        state = {
            "model": {
                "w": np.arange(6, dtype=np.float32).reshape(2, 3),
                "b": np.zeros(3, dtype=np.float32),
            },
            "step": 3,
            "opt": {0: {"betas": (0.9, 0.999), "lr": math.nan}},
        }
        first = store.save(state, step=1, model="m", files={"config.json": b'{"hidden": 4}'})
        older = store.save({**state, "step": 2}, step=2, metrics={"val_loss": 0.5})
        head = store.save({**state, "step": 3}, step=3, metrics={"val_loss": 0.4}, message="third")
        store.tag("v1", "main~1")
        signer = ckpt.ReleaseSigner(_signing_key(), name="fuzz")
        store.freeze("main", name="m-2026-11-28", signer=signer)
        trust = _TMP / "trusted.pub"
        trust.write_text(signer.public_key + "\n")
        store.prune(first.id)
        table = store.table("main")
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        files = {k: v for k, v in files.items() if not k.startswith(("locks/", "tmp/"))}
        (signature,) = [p for p in files if p.startswith(layout.SIGNATURES)]
        _template = _Template(
            files, head.id, older.id, first.id, head.table, table.tensors["model/w"].chunks[0], signature, trust
        )
    return _template


def _signing_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _memory_store(files: dict[str, bytes]) -> ckpt.Store:
    root = f"/ckpt-fuzz/{next(_counter)}"
    fs = fsspec.filesystem("memory")
    for path, data in files.items():
        fs.pipe_file(f"{root}/{path}", data)
    return ckpt.open(f"memory://{root}")


def _drop_memory_store(store: ckpt.Store) -> None:
    fs = fsspec.filesystem("memory")
    root = fs._strip_protocol(store.url)
    for key in [k for k in fs.store if k.startswith(root + "/")]:
        fs.store.pop(key, None)
    fs.pseudo_dirs[:] = [d for d in fs.pseudo_dirs if not d.startswith(root)]


def _local_store(files: dict[str, bytes]) -> ckpt.Store:
    root = _TMP / f"s{next(_counter)}"
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return ckpt.open(str(root))


def _attempt(fn: Callable[[], Any]) -> Any:
    """Run one reader; a ``CkptError`` is a clean refusal, anything else propagates."""
    try:
        result = fn()
    except CkptError as e:
        STATS["refused"] += 1
        assert str(e), f"{type(e).__name__} without a message"
        return None
    STATS["ok"] += 1
    return result


def check_cli(args: list[str]) -> None:
    """Run ``ckpt ARGS`` in-process; an uncaught exception (a traceback) fails, exit codes 0-2 are fine."""
    from click.testing import CliRunner

    from ckpt.cli import cli

    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output[-500:])
    STATS["ok" if result.exit_code == 0 else "refused"] += 1


def read_everything(store: ckpt.Store, revs: tuple[str, ...] = ("main",), *, cli: bool = True) -> None:
    """Every read a user can make of a store, each allowed to refuse with a ``CkptError``."""
    _attempt(store.branches)
    _attempt(store.tags)
    _attempt(store.reflog)
    _attempt(store.snapshots)
    for rev in revs:
        _attempt(lambda rev=rev: store.log(rev))
        _attempt(lambda rev=rev: store.resolve(rev))
        _attempt(lambda rev=rev: store.table(rev))
        _attempt(lambda rev=rev: store.load(rev))
        _attempt(lambda rev=rev: store.files(rev))
        lazy = _attempt(lambda rev=rev: store.tensors(rev))
        if lazy is not None:
            for name in list(lazy)[:4]:
                _attempt(lambda name=name, lazy=lazy: lazy[name])
        _attempt(lambda rev=rev: _export(store, rev))
    _attempt(store.verify)
    _attempt(lambda: store.gc(grace=timedelta(0), dry_run=True))
    if cli:
        url = store.url
        check_cli(["--store", url, "-q", "log", "--graph", "--all"])
        check_cli(["--store", url, "-q", "ls"])
        check_cli(["--store", url, "-q", "show", revs[0]])


def _export(store: ckpt.Store, rev: str) -> None:
    from ckpt.interop import export

    out = Path(tempfile.mkdtemp(dir=_TMP))
    try:
        export(store, rev, out / "out")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _with_store(files: dict[str, bytes], revs: tuple[str, ...] = ("main",), *, local: bool = False) -> None:
    store = _local_store(files) if local else _memory_store(files)
    try:
        read_everything(store, revs)
    finally:
        if local:
            shutil.rmtree(store.url.split("://", 1)[-1], ignore_errors=True)
        else:
            _drop_memory_store(store)


# -- store targets --------------------------------------------------------------------------------------


def _config_run(data: bytes) -> None:
    files = dict(template().files)
    files[layout.CONFIG] = data
    try:
        store = _attempt(lambda: _memory_store(files))
        if store is not None:
            read_everything(store, cli=False)
            _drop_memory_store(store)
    finally:
        fs = fsspec.filesystem("memory")
        for key in [k for k in fs.store if k.startswith("/ckpt-fuzz/")]:
            fs.store.pop(key, None)


def _digest(data: bytes) -> str:
    return ckpt.model.digest_bytes(data)


def _snapshot_run(data: bytes) -> None:
    t = template()
    sid = _digest(data)
    files = dict(t.files)
    files[layout.snapshot_path(sid)] = data
    files[layout.branch_path("main")] = _branch(sid)
    _with_store(files, ("main", "main~1", sid[:8]))


def _branch(sid: str) -> bytes:
    return json.dumps({"id": sid}, separators=(",", ":")).encode()


def _table_run(data: bytes) -> None:
    t = template()
    digest = _digest(data)
    record = json.loads(t.files[layout.snapshot_path(t.head)])
    record["table"] = digest
    record_bytes = ckpt.model.canonical_json(record)
    sid = _digest(record_bytes)
    files = dict(t.files)
    files[layout.table_path(digest)] = data
    files[layout.snapshot_path(sid)] = record_bytes
    files[layout.branch_path("main")] = _branch(sid)
    _with_store(files)


def _ref_run(path: str, revs: tuple[str, ...]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        files = dict(template().files)
        files[path] = data
        _with_store(files, revs)

    return run


def _signature_run(data: bytes) -> None:
    """A release signature: checked by verify with and without trusted keys, and by ``restore --sign``'s check."""
    from ckpt.store import load_trusted_keys, require_signed_release, store_parts

    t = template()
    files = dict(t.files)
    files[t.signature] = data
    store = _memory_store(files)
    try:
        _attempt(store.verify)
        _attempt(lambda: store.verify(trust=[t.trust]))
        _attempt(lambda: require_signed_release(store_parts(store), "m-2026-11-28", load_trusted_keys([t.trust])))
        check_cli(["--store", store.url, "-q", "verify", "--trust", str(t.trust), "--json"])
    finally:
        _drop_memory_store(store)


def _reflog_run(data: bytes) -> None:
    files = dict(template().files)
    files[layout.reflog_prefix("refs/heads/main") + "99999999999999999999-ffffffff.json"] = data
    _with_store(files, ("main@{0}", "main@{1}", "main@{4}"))


def _pruned_run(value: tuple[str, bytes]) -> None:
    name, data = value
    t = template()
    files = dict(t.files)
    files[layout.PRUNED + name] = data
    files[layout.pruned_path(t.older)] = data
    _with_store(files, ("main", "main~1"))


def _chunk_run(value: tuple[bytes, bool]) -> None:
    data, local = value
    t = template()
    files = dict(t.files)
    files[layout.chunk_path(t.chunk)] = data
    _with_store(files, local=local)


def _valid_reflog() -> Any:
    t = template()
    for path, data in t.files.items():
        if path.startswith(layout.reflog_prefix("refs/heads/main")):
            return json.loads(data)
    raise AssertionError("no reflog in the template")


def _chunk_bytes() -> st.SearchStrategy[tuple[bytes, bool]]:
    payload = np.arange(4, dtype=np.float32).tobytes()
    header = struct.pack("<4sBBHQ", b"ckpt", 1, 0, 0, len(payload))
    good = header + payload
    headers = st.builds(
        lambda magic, fmt, codec, reserved, length, body: (
            struct.pack("<4sBBHQ", magic, fmt, codec, reserved, length) + body
        ),
        st.sampled_from([b"ckpt", b"CKPT", b"\0\0\0\0"]),
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 65535),
        st.sampled_from([0, 1, 15, 16, 17, 2**31, 2**63, 2**64 - 1]),
        st.sampled_from([payload, b"", payload * 2, payload[:3]]),
    )
    return st.tuples(st.one_of(headers, byte_damage(good), st.binary(max_size=40)), st.booleans())


# -- folder targets -----------------------------------------------------------------------------------


def _safetensors_file(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _valid_st_header() -> dict[str, Any]:
    return {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]},
    }


def _folder(files: dict[str, bytes]) -> Path:
    folder = Path(tempfile.mkdtemp(dir=_TMP)) / "model"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _import_and_read(files: dict[str, bytes]) -> None:
    from ckpt.interop import import_folder
    from ckpt.interop._safetensors import open_tensors, read_header

    folder = _folder(files)
    store = ckpt.init(f"memory:///ckpt-fuzz/{next(_counter)}", chunk_size=16)
    try:
        for path in folder.glob("*.safetensors"):
            _attempt(lambda path=path: read_header(path))
            _attempt(lambda path=path: open_tensors(path))
        snap = _attempt(lambda: import_folder(store, folder, model="m"))
        if snap is not None:
            read_everything(store, cli=False)
    finally:
        _drop_memory_store(store)
        shutil.rmtree(folder.parent, ignore_errors=True)


def _safetensors_run(value: tuple[bytes, bytes | None]) -> None:
    header, whole = value
    data = bytes(range(24))
    _import_and_read({"model.safetensors": whole if whole is not None else _safetensors_file(header, data)})


def _safetensors_strategy() -> st.SearchStrategy[tuple[bytes, bytes | None]]:
    good = _safetensors_file(json.dumps(_valid_st_header()).encode(), bytes(range(24)))
    return st.one_of(
        st.tuples(documents(_valid_st_header()), st.none()),
        st.tuples(st.just(b""), byte_damage(good)),
        st.tuples(
            st.just(b""),
            st.builds(
                lambda n, rest: struct.pack("<Q", n) + rest,
                st.sampled_from([0, 1, 2**40, 2**64 - 1]),
                st.binary(max_size=40),
            ),
        ),
    )


def _shard(name: str, dtype: str = "F32") -> bytes:
    header = json.dumps({name: {"dtype": dtype, "shape": [2], "data_offsets": [0, 8]}}).encode()
    return _safetensors_file(header, bytes(8))


_SHARDS = {"model-00001-of-00002.safetensors": "a", "model-00002-of-00002.safetensors": "b"}


def _valid_index() -> dict[str, Any]:
    return {"metadata": {"total_size": 16}, "weight_map": {t: f for f, t in _SHARDS.items()}}


def _index_run(data: bytes) -> None:
    files = {f: _shard(t) for f, t in _SHARDS.items()}
    files["model.safetensors.index.json"] = data
    files["config.json"] = b'{"_name_or_path": "x/m"}'
    _import_and_read(files)


_LORA_TARGET = "model.layers.0.q_proj"


def _valid_adapter_config() -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 2,
        "lora_alpha": 4,
        "target_modules": ["q_proj"],
        "alpha_pattern": {},
        "rank_pattern": {},
        "use_rslora": False,
        "fan_in_fan_out": False,
        "base_model_name_or_path": "m",
    }


def _adapter_weights() -> bytes:
    header = {
        f"base_model.model.{_LORA_TARGET}.lora_A.weight": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
        f"base_model.model.{_LORA_TARGET}.lora_B.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [32, 64]},
    }
    return _safetensors_file(json.dumps(header).encode(), np.ones(16, dtype=np.float32).tobytes())


def _adapter_run(data: bytes) -> None:
    from ckpt.interop import export_peft_folder, import_peft_folder

    folder = _folder({"adapter_config.json": data, "adapter_model.safetensors": _adapter_weights()})
    store = ckpt.init(f"memory:///ckpt-fuzz/{next(_counter)}", chunk_size=64)
    try:
        store.save({f"{_LORA_TARGET}.weight": np.eye(4, dtype=np.float32)}, model="m")
        snap = _attempt(lambda: import_peft_folder(store, folder, "main", branch="lora"))
        if snap is not None:
            _attempt(lambda: ckpt.load_merged(store, "lora", framework="numpy"))
            out = folder.parent / "out"
            _attempt(lambda: export_peft_folder(store, "lora", out))
            read_everything(store, ("lora",), cli=False)
    finally:
        _drop_memory_store(store)
        shutil.rmtree(folder.parent, ignore_errors=True)


# -- what users type ------------------------------------------------------------------------------------

_REV_PARTS = [
    "main",
    "v1",
    "m-2026-11-28",
    "~",
    "^",
    "~2",
    "^2",
    "@{1}",
    "@{",
    "}",
    "..",
    "/",
    "\x00",
    "\ud800",
    "9" * 12,
    "0" * 4,
    "abcd",
    "é",
    " ",
    ":",
    "*",
    "\n",
    "@",
    "-",
    ".lock",
]


def _revisions() -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(st.sampled_from(_REV_PARTS), min_size=1, max_size=6).map("".join),
        st.text(max_size=20),
        st.sampled_from(["main~" + "9" * 5000, "main@{" + "9" * 5000 + "}", "x" * 5000, "main" + "^" * 500]),
    )


_revision_store: ckpt.Store | None = None


def _revision_run(rev: str) -> None:
    global _revision_store
    if _revision_store is None:
        _revision_store = _local_store(template().files)
    store = _revision_store
    _attempt(lambda: store.resolve(rev))
    _attempt(lambda: store.log(rev, limit=3))
    _attempt(lambda: store.table(rev))
    check_cli(["--store", store.url, "-q", "show", rev])


def _names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=24),
        st.lists(
            st.sampled_from(["a", "b", "/", ".", "-", "é", "\ud800", "\x00", "~", "@{", "..", ".lock", " "]),
            min_size=1,
            max_size=8,
        ).map("".join),
        st.sampled_from(["é" * 120, "a" * 200, "a" * 201, "a/" * 99 + "a", "x/" + "é" * 101, "\U0001f600" * 60]),
    )


_name_store: ckpt.Store | None = None


def _name_run(name: str) -> None:
    """A name either is refused with ``InvalidNameError`` (or exists already) or works all the way through."""
    global _name_store
    if _name_store is None:
        _name_store = _local_store(template().files)
    store = _name_store
    made = _attempt(lambda: store.branch(name, at="main"))
    if made is not None:
        assert store.resolve(name).id == made.id
        assert name in store.branches()
        store.delete_branch(name)
        assert name not in store.branches()
        assert store.resolve(f"{name}@{{1}}").id == made.id
    tagged = _attempt(lambda: store.tag(name, "main"))
    if tagged is not None:
        assert store.tags()[name].id == tagged.id
        store.delete_tag(name)
    _attempt(lambda: store.delete_branch(name))
    _attempt(lambda: store.reflog(f"refs/heads/{name}"))


_SCHEMES = ["", "file://", "local://", "memory://", "bogus://", "zip://", "simplecache::memory://", "::", "memory:/"]


def _urls() -> st.SearchStrategy[str]:
    tail = st.one_of(
        st.text(max_size=16),
        st.sampled_from(["\x00", "\ud800", "a" * 300, "/" * 50, "../" * 10, "~", "?x=1", "#y", "é"]),
    )
    return st.builds(lambda scheme, rest: scheme + rest, st.sampled_from(_SCHEMES), tail)


def _url_run(url: str) -> None:
    """Open and create stores at odd URLs; local paths are kept inside a scratch folder (never ``/``)."""
    from ckpt.storage import is_local_url

    if is_local_url(url):
        scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
        scratch = _TMP / "urls"
        scratch.mkdir(exist_ok=True)
        url = f"{scheme}{sep}{scratch}/{rest.lstrip('/')}"
    fs = fsspec.filesystem("memory")
    before = set(fs.store)
    try:
        store = _attempt(lambda: ckpt.open(url))
        assert store is None or isinstance(store, ckpt.Store)
        store = _attempt(lambda: ckpt.init(url, chunk_size=16))
        if store is not None:
            _attempt(lambda: store.save({"x": np.zeros(2, dtype=np.float32)}))
            read_everything(store, cli=False)
    finally:
        for key in set(fs.store) - before:
            fs.store.pop(key, None)


def _size_run(text: Any) -> None:
    _attempt(lambda: ckpt.init(f"memory:///ckpt-fuzz/{next(_counter)}", chunk_size=text))


def _sizes() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(max_size=12),
        st.integers(),
        st.sampled_from(["64MiB", "5GB", "-1", "0", "1e400", "nan", "9" * 5000, "1" + "0" * 30 + "B", "\x00"]),
    )


# -- the list ------------------------------------------------------------------------------------------


def _lazy(build: Callable[[], st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.deferred(build)


def _valid(path_of: Callable[[_Template], str]) -> Any:
    t = template()
    return json.loads(t.files[path_of(t)])


def _doc(path_of: Callable[[_Template], str]) -> Callable[[], bytes]:
    return lambda: template().files[path_of(template())]


TARGETS: list[Target] = [
    Target(
        "store config",
        _lazy(lambda: documents(_valid(lambda t: layout.CONFIG))),
        _config_run,
        _doc(lambda t: layout.CONFIG),
    ),
    Target(
        "snapshot record",
        _lazy(lambda: documents(_valid(lambda t: layout.snapshot_path(t.head)))),
        _snapshot_run,
        _doc(lambda t: layout.snapshot_path(t.head)),
    ),
    Target(
        "tensor table",
        _lazy(lambda: documents(_valid(lambda t: layout.table_path(t.table)))),
        _table_run,
        _doc(lambda t: layout.table_path(t.table)),
    ),
    Target(
        "branch ref",
        _lazy(lambda: documents(_valid(lambda t: layout.branch_path("main")))),
        _ref_run(layout.branch_path("main"), ("main", "main~1")),
        _doc(lambda t: layout.branch_path("main")),
    ),
    Target(
        "tag ref",
        _lazy(lambda: documents(_valid(lambda t: layout.tag_path("m-2026-11-28")))),
        _ref_run(layout.tag_path("m-2026-11-28"), ("m-2026-11-28", "v1")),
        _doc(lambda t: layout.tag_path("m-2026-11-28")),
    ),
    Target(
        "release signature",
        _lazy(lambda: documents(_valid(lambda t: t.signature))),
        _signature_run,
        _doc(lambda t: t.signature),
    ),
    Target(
        "reflog entry",
        _lazy(lambda: documents(_valid_reflog())),
        _reflog_run,
        lambda: json.dumps(_valid_reflog()).encode(),
    ),
    Target(
        "pruned marker",
        _lazy(
            lambda: st.tuples(
                st.one_of(st.just("x.json"), st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s)),
                documents(_valid(lambda t: layout.pruned_path(t.pruned))),
            )
        ),
        _pruned_run,
        lambda: ("x.json", template().files[layout.pruned_path(template().pruned)]),
    ),
    Target(
        "chunk header",
        _lazy(_chunk_bytes),
        _chunk_run,
        lambda: (template().files[layout.chunk_path(template().chunk)], True),
    ),
    Target(
        "safetensors header",
        _lazy(_safetensors_strategy),
        _safetensors_run,
        lambda: (json.dumps(_valid_st_header()).encode(), None),
    ),
    Target(
        "hf index", _lazy(lambda: documents(_valid_index())), _index_run, lambda: json.dumps(_valid_index()).encode()
    ),
    Target(
        "adapter config",
        _lazy(lambda: documents(_valid_adapter_config())),
        _adapter_run,
        lambda: json.dumps(_valid_adapter_config()).encode(),
    ),
    Target("revision", _lazy(_revisions), _revision_run, lambda: "main~1"),
    Target("ref name", _lazy(_names), _name_run, lambda: "exp/lr-3e-4"),
    Target("url", _lazy(_urls), _url_run, lambda: "memory://fuzz-valid"),
    Target("size", _lazy(_sizes), _size_run, lambda: "64KiB"),
]
