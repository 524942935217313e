"""The data plane's MAP exchange, client side, sans-I/O (rlmesh.protocol.handover): bytes in, steps out."""

from __future__ import annotations

import os

import numpy as np
import pytest
from gymnasium import spaces

from rlmesh.errors import ProtocolError
from rlmesh.protocol import Connection, ErrorBody, MessageType, encode_message
from rlmesh.protocol.data_plane import PROBE_SIZE, Layout
from rlmesh.protocol.handover import ClientHandover, Declined, HandoverStep

LAYOUT = Layout(spaces.Box(-1, 1, (4,), np.float32), None)


def _frame(data: bytes) -> object:
    (frame,) = Connection().receive_data(data)
    return frame


def _map(body: object, rid: int = 1) -> object:
    return _frame(encode_message(MessageType.MAP, rid, body))


def _error(message: str) -> object:
    return _frame(ErrorBody("bad_request", "InvalidArgumentError", message).encode(1))


def _handover() -> ClientHandover:
    return ClientHandover(LAYOUT, os.urandom(PROBE_SIZE))


def test_the_whole_exchange() -> None:
    h = _handover()
    offer = h.offer()
    assert offer == {"size": LAYOUT.size, "probe": h.probe.hex(), "layout": LAYOUT.fingerprint()}
    assert h.receive(_map({"ready": LAYOUT.size})) is HandoverStep.SEND_DESCRIPTOR
    assert h.check() == {"check": LAYOUT.size}
    mapped = _map({"mapped": LAYOUT.size, "probe": h.probe.hex()})
    assert h.receive(mapped, h.probe[::-1]) is HandoverStep.MAPPED


def test_an_error_answer_is_a_decline() -> None:
    h = _handover()
    h.offer()
    step = h.receive(_error("no shared region here"))
    assert isinstance(step, Declined) and step.reason == "no shared region here"


def test_an_error_answer_to_the_check_is_a_decline_too() -> None:
    h = _handover()
    h.offer()
    h.receive(_map({"ready": LAYOUT.size}))
    h.check()
    assert isinstance(h.receive(_error("could not map")), Declined)


@pytest.mark.parametrize("answer", [{"ready": 4096 * 2}, {"ready": str(LAYOUT.size)}, {"ready": LAYOUT.size, "x": 1},
                                    [LAYOUT.size], {"ready": np.zeros(3).tolist()}])
def test_a_ready_of_another_size_or_shape_is_a_protocol_error(answer: object) -> None:
    h = _handover()
    h.offer()
    with pytest.raises(ProtocolError):
        h.receive(_map(answer))


def test_a_probe_the_server_could_not_have_read_is_a_protocol_error() -> None:
    h = _handover()
    h.offer()
    h.receive(_map({"ready": LAYOUT.size}))
    h.check()
    with pytest.raises(ProtocolError, match="does not match"):
        h.receive(_map({"mapped": LAYOUT.size, "probe": h.probe.hex()}), echoed=bytes(PROBE_SIZE))


def test_replies_out_of_order_are_protocol_errors() -> None:
    h = _handover()
    with pytest.raises(ProtocolError):
        h.receive(_map({"ready": LAYOUT.size}))  # nothing offered yet
    with pytest.raises(ProtocolError):
        h.check()  # no descriptor sent yet
    h.offer()
    with pytest.raises(ProtocolError):
        h.offer()
    with pytest.raises(ProtocolError, match="answered a MAP request with STEP"):
        h.receive(_frame(encode_message(MessageType.STEP, 1, None)))


def test_a_probe_must_be_probe_sized() -> None:
    with pytest.raises(ValueError):
        ClientHandover(LAYOUT, b"short")


def test_layout_arithmetic_never_wraps() -> None:
    huge = Layout(spaces.MultiBinary([2**32, 2**32]), None)
    assert huge.leaves[0].nbytes == 2**64 and huge.size > 2**64
    with pytest.raises(ValueError, match="need more than 4096 bytes"):
        Layout(spaces.MultiBinary([2**32, 2**32]), None, max_size=4096)
    with pytest.raises(ValueError, match="need more than"):
        Layout(spaces.Dict({"a": spaces.Box(0, 1, (100,)), "b": spaces.Box(0, 1, (100,))}), None, max_size=600)
    assert Layout(spaces.Box(0, 1, (100,)), None, max_size=4096).size == 4096
    with pytest.raises(ValueError, match="4096 bytes, more than 1000"):  # the rounded size counts too
        Layout(spaces.Box(0, 1, (100,)), None, max_size=1000)
