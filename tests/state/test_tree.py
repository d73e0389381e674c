"""State trees round-trip exactly through ``Store.save`` / ``Store.load``; anything else is a clear error."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt
from ckpt import UnsupportedStateError

pytestmark = pytest.mark.torch

# -- helpers ---------------------------------------------------------------------------------------------


def raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements as bytes, C order (bit-exact, NaN payloads included)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a: Any, b: Any, path: str = "<root>") -> None:
    """Exact structural equality: same types (list ≠ tuple, int ≠ float ≠ bool), same key order, same bits."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: {type(b)} is not a tensor"
        assert (b.dtype, tuple(b.shape)) == (a.dtype, tuple(a.shape)), path
        assert raw_bytes(b) == raw_bytes(a), path
        return
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: {type(b)} is not a numpy array"
        assert (b.dtype.newbyteorder("="), b.shape) == (a.dtype.newbyteorder("="), a.shape), path
        assert (
            np.ascontiguousarray(b, dtype=b.dtype.newbyteorder("=")).tobytes()
            == np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")).tobytes()
        ), path
        return
    if isinstance(a, dict):
        assert type(b) is dict, f"{path}: {type(b)} is not a dict"
        assert list(b) == list(a), f"{path}: keys {list(b)} != {list(a)}"
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert type(ka) is type(kb), f"{path}: key {ka!r} came back as {kb!r}"
            assert_same(va, vb, f"{path}/{ka}")
        return
    assert type(b) is type(a), f"{path}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, (list, tuple)):
        assert len(b) == len(a), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert b == a and math.copysign(1.0, b) == math.copysign(1.0, a), f"{path}: {a!r} != {b!r}"
    else:
        assert b == a, f"{path}: {a!r} != {b!r}"


def roundtrip(store: ckpt.Store, state: Any) -> Any:
    snap = store.save(state)
    return store.load(snap.id)


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random bits of any dtype (floats include NaN and inf patterns; bools are 0/1)."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g, dtype=torch.uint8).bool()
    size = torch.empty((), dtype=dtype).element_size()
    return torch.randint(0, 256, (n * size,), generator=g, dtype=torch.uint8).view(dtype).reshape(shape)


DTYPES = [
    torch.bfloat16,
    torch.float16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    *[getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)],
    torch.bool,
    torch.complex64,
    torch.complex128,
    *[getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)],
]


@pytest.fixture
def mem_store(memory_url: str) -> ckpt.Store:
    """A store on fsspec's memory filesystem, 4 KiB chunks (the tree logic does not depend on the backend)."""
    return ckpt.init(memory_url, chunk_size=4096)


# -- tensors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_bit_exactly(mem_store: ckpt.Store, dtype: torch.dtype) -> None:
    state = {"model": {"w": random_tensor(dtype, (7, 5)), "scalar": random_tensor(dtype, (), seed=1)}}
    back = roundtrip(mem_store, state)
    assert_same(state, back)


def test_all_dtypes_in_one_snapshot_on_every_backend(store: ckpt.Store) -> None:
    state = {str(d): random_tensor(d, (3000,), seed=i) for i, d in enumerate(DTYPES)}  # most span chunks
    snap = store.save(state)
    assert_same(state, store.load(snap.id))
    assert {store.table(snap.id).tensors[k].dtype for k in state} >= {"BF16", "F16", "F32", "F64", "BOOL", "C64"}


def test_nan_free_floats_compare_equal(local_store: ckpt.Store) -> None:
    state = {
        "a": torch.randn(10, dtype=torch.bfloat16),
        "b": torch.randn(10, dtype=torch.float16),
        "c": torch.randn(10, dtype=torch.float64),
        "d": torch.randn(10, dtype=torch.complex64),
    }
    back = roundtrip(local_store, state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_non_contiguous_tensors_round_trip(store: ckpt.Store) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = {
        "transposed": base.t(),
        "step": torch.arange(100, dtype=torch.int64)[::3],
        "slice2d": base[::2, 1::3],
        "expanded": torch.arange(3.0).expand(4, 3),
        "permuted": torch.randn(2, 3, 4).permute(2, 0, 1),
        "conj": torch.randn(5, dtype=torch.complex64).conj(),
    }
    assert not state["transposed"].is_contiguous()
    back = roundtrip(store, state)
    for k, v in state.items():
        assert back[k].shape == v.shape, k
        assert torch.equal(back[k], v.resolve_conj()), k
        assert back[k].is_contiguous(), k


def test_zero_dim_and_empty_tensors(store: ckpt.Store) -> None:
    state = {
        "zero_dim": torch.tensor(3.5),
        "zero_dim_int": torch.tensor(-7, dtype=torch.int64),
        "empty": torch.empty(0),
        "empty_2d": torch.empty(3, 0, dtype=torch.float16),
        "empty_bool": torch.empty(0, 4, dtype=torch.bool),
    }
    snap = store.save(state)
    back = store.load(snap.id)
    assert_same(state, back)
    table = store.table(snap.id)
    assert table.tensors["empty"].chunks == ()
    assert table.tensors["empty_2d"].chunks == ()
    assert table.tensors["empty_2d"].shape == (3, 0)
    assert table.tensors["zero_dim"].shape == ()
    assert len(table.tensors["zero_dim"].chunks) == 1


def test_tensors_spanning_several_chunks(store: ckpt.Store) -> None:
    assert store.chunk_size == 4096
    exact = torch.randn(3 * 4096 // 4)  # exactly 3 chunks
    ragged = torch.randn(3000)  # 12000 bytes: 4096 + 4096 + 3808
    odd = random_tensor(torch.uint8, (4096 * 2 + 1,), seed=3)  # 2 full chunks and a 1-byte tail
    state = {"exact": exact, "ragged": ragged, "odd": odd}
    snap = store.save(state)
    table = store.table(snap.id)
    assert len(table.tensors["exact"].chunks) == 3
    assert len(table.tensors["ragged"].chunks) == 3
    assert len(table.tensors["odd"].chunks) == 3
    assert_same(state, store.load(snap.id))


def test_tensor_requiring_grad_round_trips_its_values(mem_store: ckpt.Store) -> None:
    p = torch.nn.Parameter(torch.randn(4, 3))
    leaf = torch.randn(5, requires_grad=True)
    derived = leaf * 2  # not a leaf, has a grad_fn
    back = roundtrip(mem_store, {"p": p, "leaf": leaf, "derived": derived})
    assert torch.equal(back["p"], p.detach())
    assert torch.equal(back["leaf"], leaf.detach())
    assert torch.equal(back["derived"], derived.detach())
    assert p.requires_grad and leaf.requires_grad  # saving leaves the live tensors alone


def test_numpy_arrays_come_back_as_numpy(store: ckpt.Store) -> None:
    rng = np.random.default_rng(0)
    state: dict[str, np.ndarray[Any, Any]] = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5000),  # several chunks
        "i64": np.arange(10, dtype=np.int64),
        "u16": np.arange(7, dtype=np.uint16),
        "bool": np.array([True, False, True]),
        "c128": rng.standard_normal(3) + 1j * rng.standard_normal(3),
        "empty": np.zeros((3, 0), dtype=np.int32),
        "fortran": np.asfortranarray(rng.standard_normal((4, 6))),
        "strided": np.arange(30, dtype=np.float32)[::4],
        "big_endian": np.arange(6, dtype=">i4"),
    }
    back = roundtrip(store, state)
    for k, v in state.items():
        assert isinstance(back[k], np.ndarray), k
        assert back[k].shape == v.shape, k
        assert back[k].dtype == v.dtype.newbyteorder("="), k
        np.testing.assert_array_equal(back[k], v)
    assert back["big_endian"].tolist() == [0, 1, 2, 3, 4, 5]


def test_zero_dim_numpy_array_keeps_its_shape(mem_store: ckpt.Store) -> None:
    state = {"scalar": np.array(2.5), "int_scalar": np.array(7, dtype=np.int64)}
    snap = mem_store.save(state)
    assert mem_store.table(snap.id).tensors["scalar"].shape == ()
    back = mem_store.load(snap.id)
    assert isinstance(back["scalar"], np.ndarray)
    assert back["scalar"].shape == () and back["scalar"].item() == 2.5
    assert back["int_scalar"].shape == () and back["int_scalar"].item() == 7


def test_torch_and_numpy_side_by_side(mem_store: ckpt.Store) -> None:
    state = {"t": torch.ones(3), "n": np.ones(3, dtype=np.float32)}
    back = roundtrip(mem_store, state)
    assert isinstance(back["t"], torch.Tensor)
    assert isinstance(back["n"], np.ndarray)


def test_colliding_tensor_paths_keep_every_tensor(mem_store: ckpt.Store) -> None:
    a, b, c, d = (torch.full((2,), float(i)) for i in range(4))
    state = {"x/y": a, "x": {"y": b}, 1: c, "1": d}
    back = roundtrip(mem_store, state)
    assert_same(state, back)


# -- typed JSON leaves -----------------------------------------------------------------------------------


def test_json_leaves_round_trip_exactly(store: ckpt.Store) -> None:
    state: dict[str, Any] = {
        "none": None,
        "true": True,
        "false": False,
        "zero": 0,
        "one_int": 1,
        "one_float": 1.0,
        "neg": -12,
        "huge": 2**200,
        "huge_neg": -(3**300),
        "pi": math.pi,
        "tiny": 5e-324,
        "big": 1.7976931348623157e308,
        "nan": float("nan"),
        "inf": float("inf"),
        "-inf": float("-inf"),
        "neg_zero": -0.0,
        "empty_str": "",
        "unicode": 'héllo wörld ✓ 日本語 🦙 \x00 \t\n"\\ $tensor',
        "empty_list": [],
        "empty_tuple": (),
        "empty_dict": {},
    }
    back = roundtrip(store, state)
    assert_same(state, back)
    assert back["neg_zero"] == 0.0 and math.copysign(1.0, back["neg_zero"]) == -1.0
    assert back["one_int"] is not True and type(back["true"]) is bool


def test_dict_keys_int_and_mixed_with_order(store: ckpt.Store) -> None:
    opt_like = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}, 1: {"step": torch.tensor(3.0)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "foreach": None}],
    }
    state = {
        "optimizer": opt_like,
        "mixed": {"b": 1, 2: "two", "a": 3, -5: None, 10**30: "huge key", "2": "string two"},
        "order": {"zeta": 1, "alpha": 2, "mid": 3},
    }
    back = roundtrip(store, state)
    assert_same(state, back)
    assert list(back["mixed"]) == ["b", 2, "a", -5, 10**30, "2"]
    assert list(back["order"]) == ["zeta", "alpha", "mid"]
    assert list(back["optimizer"]["state"]) == [0, 1]


def test_mappings_come_back_as_dicts_in_order(mem_store: ckpt.Store) -> None:
    sd = OrderedDict([("z", torch.ones(1)), ("a", torch.zeros(1))])
    back = roundtrip(mem_store, {"model": sd})
    assert type(back["model"]) is dict
    assert list(back["model"]) == ["z", "a"]


def test_list_and_tuple_are_distinguished_when_nested(mem_store: ckpt.Store) -> None:
    state = {
        "l": [1, [2, 3], (4, 5)],
        "t": (1, [2, (3,)], {"k": (torch.ones(2), [torch.zeros(1)])}),
        "deep": [[[[[{"x": ((((1.5,),),),)}]]]]],
    }
    back = roundtrip(mem_store, state)
    assert_same(state, back)
    assert type(back["t"][1]) is list and type(back["t"][1][1]) is tuple


def test_root_may_be_a_list_or_a_single_tensor(mem_store: ckpt.Store) -> None:
    assert_same([torch.ones(2), 3, "x"], roundtrip(mem_store, [torch.ones(2), 3, "x"]))
    assert_same(torch.arange(5), roundtrip(mem_store, torch.arange(5)))
    assert roundtrip(mem_store, 7) == 7


def test_shared_subtrees_are_not_cycles(mem_store: ckpt.Store) -> None:
    shared = {"a": [1, 2]}
    state = {"x": shared, "y": shared, "z": [shared, shared]}
    back = roundtrip(mem_store, state)
    assert_same(state, back)


# -- what cannot be stored -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "leaf",
    [{1, 2}, object(), b"raw bytes", lambda: 0, bytearray(b"x"), 1 + 2j, np.float32(1.0)],
    ids=["set", "object", "bytes", "lambda", "bytearray", "complex", "numpy-scalar"],
)
def test_unsupported_leaf_names_its_path(mem_store: ckpt.Store, leaf: Any) -> None:
    state = {"model": {"w": torch.ones(2), "extra": leaf}, "step": 1}
    with pytest.raises(UnsupportedStateError, match="model/extra") as info:
        mem_store.save(state)
    assert isinstance(info.value, ckpt.StateError) and isinstance(info.value, TypeError)
    assert info.value.hint  # says what to do
    assert "main" not in mem_store.branches()  # nothing was committed


@pytest.mark.parametrize("key", [1.5, (1, 2), None, True, b"k"], ids=["float", "tuple", "none", "bool", "bytes"])
def test_unsupported_dict_key_names_its_path(mem_store: ckpt.Store, key: Any) -> None:
    state = {"model": {"extra": {key: 1}}}
    with pytest.raises(UnsupportedStateError, match="model/extra"):
        mem_store.save(state)


def test_unsupported_leaf_deep_in_lists_names_its_path(mem_store: ckpt.Store) -> None:
    with pytest.raises(UnsupportedStateError, match="opt/groups/1/fn"):
        mem_store.save({"opt": {"groups": [{}, {"fn": print}]}})


def test_self_referencing_list_is_refused(mem_store: ckpt.Store) -> None:
    loop: list[Any] = [1, 2]
    loop.append(loop)
    with pytest.raises(UnsupportedStateError):
        mem_store.save({"model": {"extra": loop}})
    d: dict[str, Any] = {}
    d["me"] = {"again": d}
    with pytest.raises(UnsupportedStateError):
        mem_store.save(d)


def _saves_or_refuses_with_path(store: ckpt.Store, value: Any) -> None:
    """Either the value round-trips exactly, or save refuses it up front naming its path."""
    state = {"model": {"extra": value}}
    try:
        snap = store.save(state)
    except UnsupportedStateError as e:
        assert "model/extra" in str(e)
        assert "main" not in store.branches()
        return
    assert_same(state, store.load(snap.id))


def test_string_with_lone_surrogate_is_stored_or_refused_clearly(local_store: ckpt.Store) -> None:
    _saves_or_refuses_with_path(local_store, "bad \ud800 surrogate")


def test_int_beyond_json_digit_limit_is_stored_or_refused_clearly(local_store: ckpt.Store) -> None:
    _saves_or_refuses_with_path(local_store, 10**5000)


# -- property test ---------------------------------------------------------------------------------------

_SMALL_DTYPES = [torch.float32, torch.bfloat16, torch.int64, torch.uint8, torch.bool, torch.float16]


@st.composite
def small_tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(_SMALL_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    data = draw(st.binary(min_size=n, max_size=n))
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
    if dtype == torch.bool:
        return (t & 1).bool().reshape(shape)
    return t.view(dtype).reshape(shape)


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    small_tensors(),
)
_keys = st.one_of(st.text(max_size=6), st.integers(-(2**70), 2**70))
_trees = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(_keys, children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=_trees)
def test_random_trees_round_trip(memory_url: str, state: Any) -> None:
    # one store per example, a fresh root under the test's own memory root
    import uuid

    store = ckpt.init(f"{memory_url}/{uuid.uuid4().hex[:8]}", chunk_size=64)
    snap = store.save(state)
    assert_same(state, store.load(snap.id))
