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

from ..errors import ConnectionClosedError, ProtocolError, RLMeshTimeoutError
from ..protocol import Frame, MessageType, ServerHello
from ..protocol.data_plane import DEFAULT_MAX_REGION_SIZE, FEATURE, PROBE_SIZE, Layout
from ..protocol.handover import ClientHandover, Declined, HandoverStep

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


async def open_region(conn: ClientConnection, hello: ServerHello, unix: bool, mode: str,
                      max_region_size: int = DEFAULT_MAX_REGION_SIZE) -> tuple[ClientRegion | None, str]:
    """Set up the data plane on a handshaken connection where it can be: drives
    :class:`~rlmesh.protocol.handover.ClientHandover` over the connection.

    Returns:
        The region (None for the socket path), and the path chosen, in words.

    Raises:
        ProtocolError: The server broke the exchange (another size, a probe it could not have
            read); the connection is closed.
        ConnectionClosedError: The connection failed while the descriptor was handed over.
        RLMeshTimeoutError: The server did not answer within 10 s; the connection is closed (it
            may be waiting for the descriptor: the stream cannot go on).
    """
    if mode == "socket":
        return None, "socket (data_plane='socket')"
    if not unix:
        return None, "socket (not a Unix socket)"
    if FEATURE not in hello.features:
        return None, "socket (the server offers no shared memory: an older rlmesh)"
    if not hasattr(os, "memfd_create"):
        return None, "socket (no memfd on this system)"
    p = conn.protocol
    try:
        # The region is sized from what the server announced: no bigger than a reply may be, and
        # no bigger than the host agreed to pay for.
        layout = Layout(hello.observation_space, hello.num_envs, min(max_region_size, p.max_frame_size))
    except ValueError as exc:
        cap = f"max_frame_size={p.max_frame_size}" if p.max_frame_size < max_region_size else \
            f"max_region_size={max_region_size}"
        return None, f"socket ({exc}; the cap is {cap})"
    if not layout.size:
        return None, "socket (no fixed-shape arrays in the observations)"
    if p.direct is None:
        return None, "socket (no descriptor of the socket to send with)"
    try:
        fd, memory = _create(layout.size)
    except OSError as exc:  # memfds refused here (a seccomp profile, the descriptor limit)
        return None, f"socket (no shared region could be made here: {exc})"
    region = None
    try:
        probe = os.urandom(PROBE_SIZE)
        memory[:PROBE_SIZE] = probe
        handover = ClientHandover(layout, probe)
        step = _judged(conn, handover, await _ask(conn, handover.offer()))
        if isinstance(step, Declined):
            return None, f"socket (the server declined shared memory: {step.reason})"
        with p.send_lock:
            direct = p.direct
            if direct is None or p.lost is not None:
                raise p.lost or ConnectionClosedError("the connection closed while a region was handed over")
            # The server stopped reading its socket and waits for exactly this byte and descriptor.
            try:
                socket.send_fds(direct, [b"M"], [fd])
            except OSError as exc:
                conn.abort()
                raise ConnectionClosedError(
                    f"the env server's connection failed while the shared region was handed over ({exc}); "
                    "the connection was closed") from exc
        os.close(fd)
        fd = -1
        frame = await _ask(conn, handover.check())
        step = _judged(conn, handover, frame, bytes(memory[PROBE_SIZE : 2 * PROBE_SIZE]))
        if isinstance(step, Declined):
            return None, f"socket (the server could not map the region: {step.reason})"
        memory[: 2 * PROBE_SIZE] = bytes(2 * PROBE_SIZE)
        region = ClientRegion(layout, memory)
        return region, f"shared memory ({layout.size} bytes, {len(layout.leaves)} arrays)"
    finally:
        if fd >= 0:
            os.close(fd)
        if region is None:  # declined, failed or interrupted: the mapping goes too
            memory.close()


async def _ask(conn: ClientConnection, body: dict[str, Any]) -> Frame:
    # One MAP request. A server that does not answer may be waiting for the descriptor, reading
    # whatever comes next as it: the connection cannot go on, so it is closed.
    try:
        return await conn.request(MessageType.MAP, body, _MAP_TIMEOUT)
    except RLMeshTimeoutError as exc:
        conn.abort()
        raise RLMeshTimeoutError(f"the env server did not answer the shared-memory handover within {_MAP_TIMEOUT:g}s; "
                                 "the connection was closed") from exc


def _judged(conn: ClientConnection, handover: ClientHandover, frame: Frame,
            echoed: bytes = b"") -> HandoverStep | Declined:
    try:
        return handover.receive(frame, echoed)
    except ProtocolError as exc:
        conn.abort()
        raise ProtocolError(f"{exc}; the connection was closed") from exc


def is_shared(mtype: MessageType) -> bool:
    """Whether a reply of this type may leave arrays in the region."""
    return mtype is MessageType.STEP_SHARED or mtype is MessageType.RESET_SHARED

