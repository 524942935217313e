"""Layer 1: the value codec, the space codec and the framing, with no I/O at all."""

from __future__ import annotations

import collections
import contextlib
import enum
import struct
import tracemalloc
from typing import Any

import numpy as np
import orjson
import pytest
from gymnasium import spaces
from gymnasium.spaces import GraphInstance
from hypothesis import given, settings
from hypothesis import strategies as st

from rlmesh.errors import ProtocolError, UnsupportedSpaceError
from rlmesh.protocol import (
    PROTOCOL_VERSION,
    Connection,
    Decoder,
    MessageType,
    decode_space,
    encode_frame,
    encode_message,
    encode_space,
)
from rlmesh.protocol.spaces import OpaqueSpace, make_discrete, opaque_spaces

from ..helpers import assert_same

# The wire header, restated here so that a change to the format fails a test.
HEADER = struct.Struct("<2sBBIII")


def roundtrip(value: Any, mtype: MessageType = MessageType.STEP, rid: int = 7) -> Any:
    conn = Connection()
    msgs = conn.receive_data(encode_message(mtype, rid, value))
    assert len(msgs) == 1 and conn.buffered == 0
    assert msgs[0].type is mtype and msgs[0].request_id == rid
    return msgs[0].value()


def raw_frame(
    js: bytes,
    payload: bytes = b"",
    *,
    magic: bytes = b"RL",
    version: int = PROTOCOL_VERSION,
    mtype: int = MessageType.STEP,
    rid: int = 1,
    jlen: int | None = None,
    plen: int | None = None,
    pad: bool = True,
) -> bytes:
    if pad:
        js += b" " * (-len(js) % 8)
    head = HEADER.pack(
        magic, version, mtype, rid, len(js) if jlen is None else jlen, len(payload) if plen is None else plen
    )
    return head + js + payload


# --------------------------------------------------------------------------- values

_I64, _U64 = np.iinfo(np.int64), np.iinfo(np.uint64)
ARRAYS = {
    "bool": np.array([[True, False, True]]),
    "int8": np.array([-128, 0, 127], np.int8),
    "int16": np.array([-(2**15), 2**15 - 1], np.int16),
    "int32": np.array([-(2**31), 2**31 - 1], np.int32),
    "int64": np.array([_I64.min, -1, _I64.max], np.int64),
    "uint8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "uint16": np.array([0, 2**16 - 1], np.uint16),
    "uint32": np.array([0, 2**32 - 1], np.uint32),
    "uint64": np.array([0, 1, _U64.max], np.uint64),
    "float16": np.array([65504, -65504, 6e-8, np.nan, np.inf, -0.0], np.float16),
    "float32": np.array([1.5, np.nan, -np.inf, np.finfo(np.float32).tiny], np.float32),
    "float64": np.array([np.pi, np.nan, np.inf, -0.0, 5e-324]),
    "longdouble": np.array([1.25, -3.0], np.longdouble),
    "complex64": np.array([1 + 2j, np.nan - 1j], np.complex64),
    "complex128": np.array([[1e300 + 1j]], np.complex128),
    "bytes": np.array([b"ab", b"\x00cdef"], "S5"),
    "unicode": np.array(["a", "xyz", "ü✓"], "U3"),
    "datetime": np.array(["2020-01-01T00:00:00", "NaT"], "M8[ns]"),
    "timedelta": np.array([5, -7], "m8[s]"),
    "zero_d": np.array(3.5),
    "zero_d_uint64": np.array(_U64.max, np.uint64),
    "zero_d_str": np.array("x"),
    "empty": np.zeros((0,), np.float32),
    "empty_3d": np.zeros((3, 0, 2), np.int64),
    "empty_str": np.array([], "U1"),
    "big_endian_int": np.arange(5, dtype=">i4"),
    "big_endian_float": np.array([1.5, np.nan, -2.0], ">f8"),
    "big_endian_0d": np.array(7, ">u2"),
}


@pytest.mark.parametrize("arr", ARRAYS.values(), ids=ARRAYS.keys())
def test_array_roundtrip(arr: np.ndarray[Any, Any]) -> None:
    out = roundtrip(arr)
    assert_same(out, arr)
    assert out.dtype.str == arr.dtype.str  # byte order included
    assert out.flags.writeable


@pytest.mark.parametrize(
    "view",
    [
        lambda a: a[:, ::2],
        lambda a: a.T,
        lambda a: np.asfortranarray(a),
        lambda a: a[::-1, 1:4],
        lambda a: np.broadcast_to(a[0], (5, 6)),
    ],
    ids=["strided", "transposed", "fortran", "reversed", "broadcast"],
)
def test_non_contiguous_arrays(view: Any) -> None:
    arr = view(np.arange(24, dtype=np.float64).reshape(4, 6))
    out = roundtrip(arr)
    assert_same(out, np.ascontiguousarray(arr))
    assert out.flags.c_contiguous


SCALARS = [
    np.float16(1.5), np.float32(-0.0), np.float64(np.nan), np.longdouble(2.5),
    np.int8(-128), np.int16(7), np.int32(-1), np.int64(_I64.min), np.uint8(255), np.uint64(_U64.max),
    np.bool_(True), np.bool_(False), np.complex64(1 + 2j), np.complex128(-1j),
    np.str_("ü"), np.bytes_(b"\x00a"), np.datetime64("2021-03-04"), np.timedelta64(5, "s"),
]  # fmt: skip


@pytest.mark.parametrize("scalar", SCALARS, ids=lambda s: type(s).__name__)
def test_numpy_scalars_keep_their_type(scalar: np.generic) -> None:
    out = roundtrip(scalar)
    assert type(out) is type(scalar)
    assert_same(out, scalar)


PLAIN = {
    "none": None,
    "bools": [True, False],
    "str": "héllo\x00wörld",
    "ints": [0, -5, 2**63 - 1, -(2**63), 2**64 - 1],
    "big_ints": [2**64, -(2**63) - 1, 10**40, -(10**40)],
    "floats": [1.5, -0.0, 5e-324, 1.7976931348623157e308],
    "non_finite": [float("nan"), float("inf"), float("-inf")],
    "tuple_vs_list": (1, [2, (3,), []], (), [()]),
    "bytes": [b"", b"\x00\xffdata", b"x" * 1000],
    "empty_containers": [{}, [], ()],
    "non_str_keys": {1: "a", 2.5: {None: [1]}, (1, "x"): {"s": True}, b"k": 3, (): "empty tuple key"},
    "tag_lookalikes": [
        {"__nd__": 0}, {"__t__": [1, 2]}, {"__d__": [[1, 2]]}, {"__f__": "nan"},
        {"__i__": "5"}, {"__by__": 0}, {"__no__": [[1], [2]]}, {"__g__": [1, 2, 3]}, {"__ns__": 0},
    ],
    "tag_key_among_others": {"__nd__": 0, "other": 1},
    "nested_tag_lookalike": {"a": {"__by__": 0}, "b": [{"__t__": []}], 3: {"__d__": None}},
    "deep": {"a": [{"b": ({"c": [np.arange(3)]},)}]},
}  # fmt: skip


@pytest.mark.parametrize("value", PLAIN.values(), ids=PLAIN.keys())
def test_plain_value_roundtrip(value: Any) -> None:
    assert_same(roundtrip(value), value)


def test_object_arrays() -> None:
    grid = np.array([[1, "a"], [None, np.float32(2)]], dtype=object)
    assert_same(roundtrip(grid), grid)
    # The shape of SAME_STEP's info["final_obs"]: arrays and None in a 1-d object array.
    final = np.empty(4, dtype=object)
    final[0], final[2] = np.arange(3, dtype=np.float32), {"k": (1, 2)}
    out = roundtrip(final)
    assert_same(out, final)
    assert out[1] is None and out[3] is None
    zero_d = np.empty((), dtype=object)
    zero_d[()] = [1, 2]
    assert_same(roundtrip(zero_d), zero_d)


def test_graph_instances() -> None:
    with_edges = GraphInstance(
        nodes=np.random.default_rng(0).random((3, 2)).astype(np.float32),
        edges=np.array([0, 1]),
        edge_links=np.array([[0, 1], [1, 2]], np.int32),
    )
    for value in (with_edges, GraphInstance(np.arange(4), None, None)):
        out = roundtrip(value)
        assert type(out) is GraphInstance
        assert_same(out, value)


class _Colour(enum.IntEnum):
    RED = 3


def test_builtin_subclasses_become_builtins() -> None:
    point = collections.namedtuple("point", "x y")
    value = [collections.OrderedDict(b=1, a=2), _Colour.RED, point(1, 2), bytearray(b"ab"), memoryview(b"cd")]
    assert_same(roundtrip(value), [{"b": 1, "a": 2}, 3, (1, 2), b"ab", b"cd"])


def test_unknown_objects_become_repr_strings() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "Thing<42>"

    structured = np.zeros(2, dtype=[("a", "i4"), ("b", "f8")])
    out = roundtrip({"thing": Thing(), "set": {1}, "structured": structured, "fn": len})
    assert out == {"thing": "Thing<42>", "set": "{1}", "structured": repr(structured), "fn": repr(len)}


def test_request_id_extremes() -> None:
    for rid in (0, 1, 2**32 - 1):
        assert roundtrip("x", MessageType.RESET, rid) == "x"


def _root(arr: np.ndarray[Any, Any]) -> Any:
    base: Any = arr
    while isinstance(base, np.ndarray):
        base = base.base
    # np.frombuffer keeps a memoryview of the buffer it maps.
    return base.obj if isinstance(base, memoryview) else base


def test_decoded_arrays_share_the_frame_buffer_and_are_writable() -> None:
    body = {"a": np.arange(3, dtype=np.uint8), "b": np.linspace(0, 1, 10), "c": np.ones((4, 4), np.int32)}
    out = roundtrip(body)
    roots = [_root(out[k]) for k in body]
    assert isinstance(roots[0], bytearray)
    assert all(r is roots[0] for r in roots), "every array views one payload buffer"
    payload = np.frombuffer(roots[0], dtype=np.uint8)
    for k, v in body.items():
        arr = out[k]
        assert np.shares_memory(arr, payload), f"{k} was copied out of the frame"
        assert arr.flags.writeable and arr.flags.aligned
        assert arr.ctypes.data % 8 == 0
        arr[...] = 0
        assert not arr.any()
        assert_same(v.dtype, arr.dtype)


def test_a_frame_never_shares_memory_with_the_arrays_it_carries() -> None:
    # The sender may overwrite its arrays (an env reusing its observation buffer) while the
    # transport still holds unsent bytes: a frame is its own copy.
    arr = np.arange(100_000, dtype=np.float64)
    frame = encode_message(MessageType.STEP, 1, {"obs": arr})
    assert type(frame) is bytes
    arr[:] = -1
    assert_same(Connection().receive_data(frame)[0].value(), {"obs": np.arange(100_000, dtype=np.float64)})


# --------------------------------------------------------------------------- spaces

class _Custom(spaces.Space[int]):
    def contains(self, x: Any) -> bool:
        return True


class _MyBox(spaces.Box):
    pass


ALL_SPACES = {
    "box_f16": spaces.Box(np.float16(-65504), np.float16(65504), (2, 3), np.float16),
    "box_f16_inf": spaces.Box(-np.inf, np.inf, (2,), np.float16),
    "box_f32_mixed": spaces.Box(np.array([-1, -np.inf, 0], np.float32), np.array([1, 5, np.inf], np.float32)),
    "box_i64_extremes": spaces.Box(_I64.min, _I64.max, (3,), np.int64),
    "box_u64_extremes": spaces.Box(0, _U64.max, (2,), np.uint64),
    "box_uint8_image": spaces.Box(0, 255, (16, 16, 3), np.uint8),
    "box_scalar": spaces.Box(-1.0, 1.0, (), np.float64),
    "box_bool": spaces.Box(0, 1, (3,), np.bool_),
    "box_empty": spaces.Box(-1, 1, (0,)),
    "discrete": spaces.Discrete(5),
    "discrete_uint8": make_discrete(3, dtype=np.uint8),
    "discrete_huge": spaces.Discrete(2**62, start=-(2**62)),
    "discrete_start_dtype": make_discrete(7, start=-3, dtype=np.int32),
    "multidiscrete_nd_start": spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[-1, 0], [1, 2]])),
    "multidiscrete_int32": spaces.MultiDiscrete([3, 4], dtype=np.int32),
    "multibinary": spaces.MultiBinary(4),
    "multibinary_tuple": spaces.MultiBinary((2, 3)),
    "text": spaces.Text(8, min_length=2, charset="zyx-ab"),
    "dict": spaces.Dict({"z": spaces.Discrete(2), "a": spaces.Box(-1, 1, (2,)), "m": spaces.MultiBinary(3)}),
    "dict_tag_like_key": spaces.Dict({"__nd__": spaces.Discrete(2)}),
    "empty_dict_and_tuple": spaces.Tuple((spaces.Dict({}), spaces.Tuple(()))),
    "tuple": spaces.Tuple((spaces.Discrete(2), spaces.Tuple((spaces.Text(3), spaces.Discrete(3, start=1))))),
    "sequence": spaces.Sequence(spaces.Box(-1, 1, (2,)), stack=False),
    "sequence_stacked": spaces.Sequence(spaces.Discrete(4), stack=True),
    "graph_edges": spaces.Graph(node_space=spaces.Box(-1, 1, (3,)), edge_space=spaces.Discrete(3)),
    "graph_no_edges": spaces.Graph(node_space=spaces.Discrete(4), edge_space=None),
    "oneof": spaces.OneOf([spaces.Discrete(2), spaces.Box(-1, 1, (2,), np.float32)]),
    "nested": spaces.Dict({
        "t": spaces.Tuple((spaces.Sequence(spaces.Dict({"x": spaces.Discrete(2, start=5)})), spaces.OneOf([spaces.Text(2)]))),
        "g": spaces.Graph(node_space=spaces.Discrete(3), edge_space=spaces.Box(0, 1, (1,))),
    }),
}  # fmt: skip


def space_roundtrip(space: spaces.Space[Any]) -> spaces.Space[Any]:
    buffers: list[np.ndarray[Any, Any]] = []
    tree = encode_space(space, buffers)
    frame = Connection().receive_data(encode_frame(MessageType.HELLO, 0, {"space": tree}, buffers))[0]
    decoder = frame.decoder()
    space = decode_space(frame.tree["space"], decoder)
    decoder.finish()
    return space


def _same_structure(a: spaces.Space[Any], b: spaces.Space[Any]) -> None:
    assert type(a) is type(b) and a == b
    if isinstance(a, spaces.Box):
        assert a.dtype == b.dtype
        assert_same(a.low, b.low)
        assert_same(a.high, b.high)
    if isinstance(a, spaces.MultiDiscrete):
        assert_same(a.nvec, b.nvec)
        assert_same(a.start, b.start)
    if isinstance(a, spaces.Text):
        assert a.character_list == b.character_list  # the order decides sample()
    if isinstance(a, spaces.Dict):
        assert list(a.spaces) == list(b.spaces)


@pytest.mark.parametrize("space", ALL_SPACES.values(), ids=ALL_SPACES.keys())
def test_space_roundtrip(space: spaces.Space[Any]) -> None:
    out = space_roundtrip(space)
    _same_structure(out, space)
    if isinstance(space, (spaces.Dict, spaces.Tuple, spaces.OneOf)):
        for sub_a, sub_b in zip(space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces,
                                out.spaces.values() if isinstance(out, spaces.Dict) else out.spaces, strict=True):
            _same_structure(sub_b, sub_a)
    # Equal spaces with equal seeds sample identical values, dtypes included.
    space.seed(123)
    out.seed(123)
    for _ in range(3):
        assert_same(out.sample(), space.sample())


@pytest.mark.parametrize(
    "space",
    [_Custom(), _MyBox(-1, 1, (2,)), spaces.Dict({"ok": spaces.Discrete(2), "bad": spaces.Tuple((_Custom(),))})],
    ids=["custom", "box_subclass", "nested_custom"],
)
def test_custom_spaces_cross_as_opaque_spaces(space: spaces.Space[Any]) -> None:
    out = space_roundtrip(space)
    found = opaque_spaces(out)
    assert len(found) == 1 and isinstance(found[0], OpaqueSpace)
    assert "_Custom" in found[0].type_name or "_MyBox" in found[0].type_name
    if isinstance(space, spaces.Box):
        assert found[0].shape == (2,) and found[0].dtype == np.float32
    with pytest.raises(UnsupportedSpaceError, match="not bound"):
        found[0].sample()  # answered by a server, and there is none here


def test_unknown_space_description() -> None:
    with pytest.raises(UnsupportedSpaceError, match="Nope"):
        decode_space({"type": "Nope"}, Decoder([]))


# --------------------------------------------------------------------------- framing

SAMPLE_BODY = {"obs": np.arange(5, dtype=np.float32), "r": 1.5, "t": (True, b"\x01"), "s": "x"}


def sample_frame(rid: int = 3) -> bytes:
    return encode_message(MessageType.STEP, rid, SAMPLE_BODY)


def test_byte_by_byte_feeding() -> None:
    data = sample_frame() + sample_frame(4)
    conn = Connection()
    got = []
    for i in range(len(data)):
        got += conn.receive_data(data[i : i + 1])
        assert conn.buffered == (i + 1) - sum(len(sample_frame()) for _ in got)
    assert [m.request_id for m in got] == [3, 4]
    for m in got:
        assert_same(m.value(), SAMPLE_BODY)


def test_several_frames_in_one_chunk_and_a_partial_tail() -> None:
    frame = sample_frame()
    conn = Connection()
    msgs = conn.receive_data(memoryview(frame * 3 + frame[:10]))
    assert len(msgs) == 3 and conn.buffered == 10
    assert [m.value()["s"] for m in conn.receive_data(frame[10:])] == ["x"]
    assert conn.buffered == 0


# Frames the stream parser refuses: the stream is out of sync and the connection fails.
BAD_FRAMES = {
    "bad_magic": raw_frame(b"[null,[]]", magic=b"XX"),
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "wrong_version": raw_frame(b"[null,[]]", version=PROTOCOL_VERSION + 1),
    "unknown_type": raw_frame(b"[null,[]]", mtype=99),
    "oversized": raw_frame(b"", jlen=8, plen=2**31),
    "oversized_json": raw_frame(b"", jlen=128 << 20, plen=0),
    "misaligned_json_len": raw_frame(b"[null,[]]", pad=False),
    "misaligned_payload_len": raw_frame(b"[null,[]]", b"\0" * 3),
    "empty_json": raw_frame(b""),
    "truncated_json": raw_frame(b'[{"a": [1, 2'),
    "malformed_json": raw_frame(b"[nul,[]]"),
    "not_a_pair": raw_frame(b"[1,2,3]"),
    "not_a_list": raw_frame(b'{"a":1}'),
    "meta_not_a_list": raw_frame(b"[1,{}]"),
    "nan_token": raw_frame(b"[NaN,[]]"),
    "buffer_too_short": raw_frame(b'[{"__nd__":0},[["<f8",[4]]]]', b"\0" * 8),
    "payload_too_long": raw_frame(b'[{"__nd__":0},[["<f8",[1]]]]', b"\0" * 16),
    "payload_without_meta": raw_frame(b"[null,[]]", b"\0" * 8),
    "object_dtype": raw_frame(b'[{"__nd__":0},[["|O",[1]]]]', b"\0" * 8),
    "bad_dtype": raw_frame(b'[{"__nd__":0},[["<q9",[1]]]]', b"\0" * 8),
    "structured_dtype": raw_frame(b'[{"__nd__":0},[["(2,)<f8",[1]]]]', b"\0" * 16),
    "huge_void_dtype": raw_frame(b'[{"__nd__":0},[["|V999999999",[0]]]]'),
    "negative_shape": raw_frame(b'[{"__nd__":0},[["<f8",[-1,-1]]]]', b"\0" * 8),
    "too_many_dims": raw_frame(b'[{"__nd__":0},[["<f8",[' + b",".join([b"1"] * 40) + b']]]]', b"\0" * 8),
    "meta_item_not_a_pair": raw_frame(b'[null,[["<f8"]]]'),
}

# Frames well framed but whose body is malformed: the frame's value() raises, the stream is fine.
BAD_BODIES = {
    "missing_buffer": raw_frame(b'[{"__nd__":0},[]]'),
    "bad_float_tag": raw_frame(b'[{"__f__":"1.5"},[]]'),
    "unhashable_key": raw_frame(b'[{"__d__":[[[1],2]]},[]]'),
    "bad_dict_tag": raw_frame(b'[{"__d__":[[1,2,3]]},[]]'),
    "bad_graph": raw_frame(b'[{"__g__":[1]},[]]'),
    "huge_int_tag": raw_frame(b'[{"__i__":"' + b"9" * 5000 + b'"},[]]'),
    "int_tag_not_a_string": raw_frame(b'[{"__i__":5},[]]'),
    "scalar_tag_on_an_array": raw_frame(b'[{"__ns__":0},[["<f8",[2]]]]', b"\0" * 16),
    "buffer_used_twice": raw_frame(b'[[{"__nd__":0},{"__nd__":0}],[["<f8",[1]]]]', b"\0" * 8),
    "bytes_buffer_used_twice": raw_frame(b'[[{"__by__":0},{"__by__":0}],[["|u1",[8]]]]', b"\0" * 8),
    "buffer_never_used": raw_frame(b'[null,[["<f8",[1]]]]', b"\0" * 8),
    "buffer_index_not_an_int": raw_frame(b'[{"__nd__":"0"},[["<f8",[1]]]]', b"\0" * 8),
    "too_deep": raw_frame(b"[" + b"[" * 150 + b"]" * 150 + b",[]]"),
    "object_array_bad_shape": raw_frame(b'[{"__no__":[[3],[1,2]]},[]]'),
    "object_array_not_a_pair": raw_frame(b'[{"__no__":[1]},[]]'),
}


@pytest.mark.parametrize("data", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frames_raise_protocol_error(data: bytes) -> None:
    conn = Connection(max_frame_size=1 << 20)
    with pytest.raises(ProtocolError):
        conn.receive_data(data)
    assert conn.failed and conn.buffered == 0
    # The stream is out of sync for good: even a valid frame is refused now.
    with pytest.raises(ProtocolError):
        conn.receive_data(sample_frame())


@pytest.mark.parametrize("data", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_raise_protocol_error(data: bytes) -> None:
    conn = Connection(max_frame_size=1 << 20)
    (frame,) = conn.receive_data(data)
    with pytest.raises(ProtocolError, match="malformed STEP body"):
        frame.value()
    assert_same(conn.receive_data(sample_frame())[0].value(), SAMPLE_BODY)


def test_amplification_by_reused_buffers_is_refused() -> None:
    # One 1 MiB buffer referenced 1000 times would decode into 1 GB of bytes objects.
    tree = [{"__by__": 0}] * 1000
    frame = raw_frame(orjson.dumps([tree, [["|u1", [1 << 20]]]]), bytes(1 << 20))
    (msg,) = Connection().receive_data(frame)
    with pytest.raises(ProtocolError, match="referenced twice"):
        msg.value()


def test_receiving_a_frame_costs_its_size_once() -> None:
    # A frame's bytes land in one buffer of exactly its declared size, which the arrays view.
    arr = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    frame = encode_message(MessageType.STEP, 1, arr)
    conn = Connection()
    tracemalloc.start()
    try:
        for i in range(0, len(frame), 1 << 18):
            msgs = conn.receive_data(frame[i : i + (1 << 18)])
        out = msgs[0].value()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_same(out, arr)
    assert peak < 1.2 * len(frame), f"peak {peak} for a frame of {len(frame)}"


def test_bad_header_fails_before_the_body_arrives() -> None:
    # Only the 16 header bytes: a huge declared length is refused without buffering.
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        Connection(max_frame_size=1024).receive_data(HEADER.pack(b"RL", PROTOCOL_VERSION, 3, 1, 8, 4096))
    with pytest.raises(ProtocolError, match="version"):
        Connection().receive_data(HEADER.pack(b"RL", 99, 3, 1, 8, 0))


def test_frame_within_the_limit_is_accepted() -> None:
    frame = sample_frame()
    assert len(Connection(max_frame_size=len(frame)).receive_data(frame)) == 1  # the header counts
    with pytest.raises(ProtocolError):
        Connection(max_frame_size=len(frame) - 1).receive_data(frame)


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, database=None)


def _feed(chunks: list[bytes]) -> None:
    conn = Connection(max_frame_size=1 << 16)
    for chunk in chunks:
        try:
            msgs = conn.receive_data(chunk)
        except ProtocolError:
            return
        for m in msgs:
            assert m.type in MessageType
            with contextlib.suppress(ProtocolError):
                m.value()


@FUZZ
@given(st.lists(st.binary(max_size=256), max_size=4))
def test_fuzz_random_bytes(chunks: list[bytes]) -> None:
    _feed(chunks)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_fuzz_random_bytes_after_a_valid_header(chunks: list[bytes]) -> None:
    _feed([b"RL" + bytes([PROTOCOL_VERSION]), *chunks])


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 200),
    st.integers(1, 64),
)
def test_fuzz_mutated_valid_frame(edits: list[tuple[int, int]], cut: int, step: int) -> None:
    frame = bytearray(sample_frame())
    for pos, byte in edits:
        frame[pos % len(frame)] = byte
    data = bytes(frame[: len(frame) - cut % len(frame)]) + sample_frame()
    _feed([data[i : i + step] for i in range(0, len(data), step)])


_KEYS = st.sampled_from(["__nd__", "__ns__", "__no__", "__t__", "__f__", "__i__", "__by__", "__d__", "__g__", "k"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=2),
    max_leaves=20,
)
_META = st.lists(
    st.tuples(st.sampled_from(["<f8", "|u1", "<i4", ">f2", "|b1", "<U2", "|S3", "<M8[s]", "|V2"]),
              st.lists(st.integers(-2, 5), max_size=3)),
    max_size=3,
)


@FUZZ
@given(_JSON, _META, st.binary(max_size=96))
def test_fuzz_structured_bodies(tree: Any, meta: list[Any], payload: bytes) -> None:
    payload += b"\0" * (-len(payload) % 8)
    _feed([raw_frame(orjson.dumps([tree, meta]), payload)])
