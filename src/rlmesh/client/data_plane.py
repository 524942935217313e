"""The host's side of the shared-memory data plane: a sealed memfd, handed to the server once.

For a connection over a Unix socket to a server that names the ``shm1`` feature, the host
creates a memory region sized from the handshake's spaces (:class:`~rlmesh.protocol.data_plane.Layout`),
seals it against growing, shrinking and further sealing (a server cannot resize it under the
host), and passes its descriptor over the socket (``SCM_RIGHTS``). The server then writes the
fixed-shape arrays of STEP and RESET replies there, and the frames carry the rest.

What the host returns never changes afterwards: each array is copied out of the region as the
reply is read (copy-on-return). A double buffer would hand the caller memory the server can
still write; the copy costs what the socket path's receive already did, once.

Only one request at a time may use the region (:attr:`ClientRegion.owner`): a STEP or RESET
sent while another is in flight goes as a plain request, its arrays in the frame, so a server
that runs ahead never overwrites arrays not yet copied.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import socket
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError, RLMeshError
from ..protocol import MessageType, ServerHello
from ..protocol.data_plane import FEATURE, PROBE_SIZE, Layout

if TYPE_CHECKING:
    from .connection import ClientConnection

__all__ = ["DATA_PLANES", "ClientRegion", "is_shared", "open_region"]

log = logging.getLogger("rlmesh")

DATA_PLANES = ("auto", "socket")
"""``data_plane=``: ``auto`` shares memory where it can (a Unix socket to a server that offers it),
``socket`` always sends arrays in the frames."""
_MAP_TIMEOUT = 10.0
_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


class ClientRegion:
    """The host's mapping of one connection's region, and who may use it now.

    Attributes:
        layout: Where each array lives (computed here, from the handshake's spaces).
        size: The region's size in bytes.
        owner: The request id of the one request whose reply may use the region, or 0.
    """

    def __init__(self, layout: Layout, memory: mmap.mmap) -> None:
        self.layout = layout
        self.size = layout.size
        self._memory: mmap.mmap | None = memory
        self._views = layout.views(memory)
        self._vector = layout.num_envs is not None
        self.owner = 0

    def fill_step(self, body: tuple[Any, ...], copy: bool = True) -> tuple[Any, ...]:
        """A STEP_SHARED reply's body with the region's arrays (copied; with ``copy=False``, views the
        caller copies before it frees the region) in place of its ``None``s."""
        if self._memory is None:
            raise ProtocolError("a shared-memory reply after the region was closed")
        if self._vector:
            return self.layout.fill_flags(body, self._views, copy)
        return (self.layout.fill(body[0], self._views, copy), *body[1:])

    def view_step(self, body: tuple[Any, ...]) -> tuple[Any, ...]:
        """:meth:`fill_step` with views into the region (the caller copies them, then frees it)."""
        return self.fill_step(body, False)

    def fill_reset(self, body: tuple[Any, ...]) -> tuple[Any, ...]:
        """A RESET_SHARED reply's body with the region's arrays (copied) in place of its ``None``s."""
        if self._memory is None:
            raise ProtocolError("a shared-memory reply after the region was closed")
        return (self.layout.fill(body[0], self._views, True), body[1])

    def close(self) -> None:
        """Unmap the region (idempotent)."""
        memory, self._memory = self._memory, None
        self._views = []
        if memory is not None:
            try:
                memory.close()
            except BufferError:  # a view is still alive somewhere: it unmaps when that goes
                log.debug("data plane region still referenced at close; unmapped when released")


def _create(size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("rlmesh-data-plane", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        return fd, mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise


async def open_region(conn: ClientConnection, hello: ServerHello, unix: bool, mode: str) -> tuple[ClientRegion | None, str]:
    """Set up the data plane on a handshaken connection where it can be.

    Returns:
        The region (None for the socket path), and the path chosen, in words.

    Raises:
        ProtocolError: The server broke the exchange (another size, a probe it could not have
            read); the connection is closed.
    """
    if mode == "socket":
        return None, "socket (data_plane='socket')"
    if not unix:
        return None, "socket (not a Unix socket)"
    if FEATURE not in hello.features:
        return None, "socket (the server offers no shared memory: an older rlmesh)"
    if not hasattr(os, "memfd_create"):
        return None, "socket (no memfd on this system)"
    try:
        layout = Layout(hello.observation_space, hello.num_envs)
    except ValueError as exc:
        return None, f"socket ({exc})"
    if not layout.size:
        return None, "socket (no fixed-shape arrays in the observations)"
    p = conn.protocol
    if layout.size > p.max_frame_size:
        # The region is sized from what the server announced: no bigger than a reply may be.
        return None, (f"socket (the spaces' arrays need {layout.size} bytes, more than "
                      f"max_frame_size={p.max_frame_size})")
    if p.direct is None:
        return None, "socket (no descriptor of the socket to send with)"
    try:
        fd, memory = _create(layout.size)
    except OSError as exc:  # memfds refused here (a seccomp profile, the descriptor limit)
        return None, f"socket (no shared region could be made here: {exc})"
    try:
        probe = os.urandom(PROBE_SIZE)
        memory[:PROBE_SIZE] = probe
        size = layout.size
        offer = {"size": size, "probe": probe.hex(), "layout": layout.fingerprint()}
        try:
            ready = await conn.request(MessageType.MAP, offer, _MAP_TIMEOUT)
            answer = conn.unwrap(ready, MessageType.MAP, _body)
        except RLMeshError as exc:
            if conn.is_closed:
                raise
            os.close(fd)
            fd = -1
            memory.close()
            return None, f"socket (the server declined shared memory: {exc})"
        if not _answers(answer, {"ready": size}):
            conn.abort()
            raise ProtocolError(f"the server answered a {size}-byte region with {answer!r:.100}; the connection was closed")
        with p.send_lock:
            direct = p.direct
            if direct is None or p.lost is not None:
                raise p.lost or ProtocolError("the connection closed while a region was handed over")
            # The server stopped reading its socket and waits for exactly this byte and descriptor.
            socket.send_fds(direct, [b"M"], [fd])
        os.close(fd)
        fd = -1
        frame = await conn.request(MessageType.MAP, {"check": size}, _MAP_TIMEOUT)
        try:
            answer = conn.unwrap(frame, MessageType.MAP, _body)
        except RLMeshError as exc:
            if conn.is_closed:
                raise
            memory.close()
            return None, f"socket (the server could not map the region: {exc})"
        echoed = memory[PROBE_SIZE : 2 * PROBE_SIZE]
        if not _answers(answer, {"mapped": size, "probe": probe.hex()}) or echoed != probe[::-1]:
            conn.abort()
            raise ProtocolError(
                f"the server's answer to the shared region does not match what was handed over ({answer!r:.120}); "
                "the connection was closed"
            )
        memory[: 2 * PROBE_SIZE] = bytes(2 * PROBE_SIZE)
        return ClientRegion(layout, memory), f"shared memory ({size} bytes, {len(layout.leaves)} arrays)"
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if not memory.closed:
            memory.close()
        raise


def _answers(answer: Any, expected: dict[str, Any]) -> bool:
    # Compared key by key and type by type: a hostile body may hold arrays, which == would not
    # answer with a bool.
    return (type(answer) is dict and answer.keys() == expected.keys()
            and all(type(answer[k]) is type(v) and answer[k] == v for k, v in expected.items()))


def _body(frame: Any) -> Any:
    value = frame.value()
    if type(value) is not dict:
        raise ProtocolError("malformed MAP reply")
    return value


def is_shared(mtype: MessageType) -> bool:
    """Whether a reply of this type may leave arrays in the region."""
    return mtype is MessageType.STEP_SHARED or mtype is MessageType.RESET_SHARED

