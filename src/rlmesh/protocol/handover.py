"""The client's side of the data plane's MAP exchange, sans-I/O (beside :mod:`.session`).

The exchange (``docs/protocol.md``, feature ``shm1``)::

    client -> server  MAP {"size": n, "probe": 32 hex digits, "layout": digest}
    server -> client  MAP {"ready": n}                 (the server stopped reading its socket)
    client -> server  one byte "M" with the descriptor (SCM_RIGHTS), outside frames
    client -> server  MAP {"check": n}
    server -> client  MAP {"mapped": n, "probe": the 32 hex digits it read from the region}

:class:`ClientHandover` says what to send next and judges each reply; the connection
(:mod:`rlmesh.client.data_plane`) only moves bytes, and the descriptor. An ERROR answer is a
decline: the server keeps reading its socket, the stream stays in step, and the socket path
serves. Anything else that does not match is a :class:`~rlmesh.errors.ProtocolError`, after
which the connection must close (what the server waits for is unknown).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError
from .data_plane import PROBE_SIZE, Layout
from .faults import ErrorBody
from .framing import Frame, MessageType

__all__ = ["ClientHandover", "Declined", "HandoverStep"]


class HandoverStep(enum.Enum):
    """What the client does after a MAP reply that was not a decline."""

    SEND_DESCRIPTOR = "send_descriptor"
    """Send one byte ``M`` with the region's descriptor, then :meth:`ClientHandover.check`."""
    MAPPED = "mapped"
    """Both sides proved their writes reach the other: the region is in use."""


@dataclass(frozen=True)
class Declined:
    """The server declined (an ERROR answer): use the socket. The stream is in step."""

    reason: str


class ClientHandover:
    """The client's side: :meth:`offer` to send, :meth:`receive` each MAP reply, :meth:`check`.

    Args:
        layout: The region's layout, computed by the client from the handshake's spaces.
        probe: The client's probe (``PROBE_SIZE`` random bytes, written at offset 0 of the region).
    """

    def __init__(self, layout: Layout, probe: bytes) -> None:
        if len(probe) != PROBE_SIZE:
            raise ValueError(f"a probe is {PROBE_SIZE} bytes")
        self.size = layout.size
        self.probe = probe
        self._fingerprint = layout.fingerprint()
        self._state = "new"

    def offer(self) -> dict[str, Any]:
        """The first MAP body."""
        self._expect("new", "offered")
        return {"size": self.size, "probe": self.probe.hex(), "layout": self._fingerprint}

    def check(self) -> dict[str, Any]:
        """The MAP body that follows the descriptor."""
        self._expect("ready", "checking")
        return {"check": self.size}

    def receive(self, frame: Frame, echoed: bytes = b"") -> HandoverStep | Declined:
        """Judge a MAP reply. ``echoed``: for the answer to :meth:`check`, the bytes the region
        holds at ``PROBE_SIZE`` (the server writes the client's probe there, reversed).

        Raises:
            ProtocolError: A reply out of order, or one that does not match what was handed over.
        """
        if frame.type is MessageType.ERROR:
            if self._state not in ("offered", "checking"):
                raise ProtocolError(f"a MAP reply while the handover was {self._state}")
            self._state = "declined"
            return Declined(ErrorBody.decode(frame).message)
        if frame.type is not MessageType.MAP:
            raise ProtocolError(f"the server answered a MAP request with {frame.type.name}")
        answer = frame.value()
        if self._state == "offered":
            if not _answers(answer, {"ready": self.size}):
                raise ProtocolError(f"the server answered a {self.size}-byte region with {answer!r:.100}")
            self._state = "ready"
            return HandoverStep.SEND_DESCRIPTOR
        if self._state == "checking":
            if not _answers(answer, {"mapped": self.size, "probe": self.probe.hex()}) or echoed != self.probe[::-1]:
                raise ProtocolError(
                    f"the server's answer to the shared region does not match what was handed over ({answer!r:.120})")
            self._state = "mapped"
            return HandoverStep.MAPPED
        raise ProtocolError(f"a MAP reply while the handover was {self._state}")

    def _expect(self, state: str, then: str) -> None:
        if self._state != state:
            raise ProtocolError(f"the handover is {self._state}, not {state}")
        self._state = then


def _answers(answer: Any, expected: dict[str, Any]) -> bool:
    # Compared key by key and type by type: a hostile body may hold arrays, which == would not
    # answer with a bool.
    return (type(answer) is dict and answer.keys() == expected.keys()
            and all(type(answer[k]) is type(v) and answer[k] == v for k, v in expected.items()))
