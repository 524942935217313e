"""Connections handed over as file descriptors: how a relay gets out of the data path.

A relay container accepts a client's TCP connection and passes the connected socket to the
sandbox's server over a Unix socket (``SCM_RIGHTS``), then forgets it: every step after that
goes straight from the client to the server, with no process in between. The server treats
an adopted socket exactly as one it accepted itself (the handshake and its token, the limits
on connections still in their handshake, the one-client slot).

The handoff socket lives in the volume the two containers share. Whoever can reach it can
only give the server connections; nothing is ever sent back but end of stream. What comes in
is checked: only connected stream sockets are adopted, anything else (other kinds of file
descriptor, listening or unconnected sockets, more descriptors than asked for) is closed.

The relay holds one connection to the handoff socket for its whole life. When the server
exits (even killed), the kernel closes it, and the relay sees end of stream and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

__all__ = ["HandoffListener", "MAX_FDS_PER_MESSAGE", "MAX_HANDOFF_PEERS", "hand_off"]

log = logging.getLogger("rlmesh.server")

MAX_HANDOFF_PEERS = 4
"""Connections to the handoff socket at once (the relay needs one); more are closed."""
MAX_FDS_PER_MESSAGE = 4
"""Descriptors read per message; more are discarded by the kernel (``MSG_CTRUNC``)."""
_ADOPTABLE = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


class HandoffListener:
    """Listen on ``path`` for peers that send connected sockets; ``adopt`` each one.

    Uses the running loop's readers only (no transports), so it works the same on asyncio
    and uvloop.
    """

    def __init__(self, path: str, adopt: Callable[[socket.socket], None]) -> None:
        self.path = path
        self._adopt = adopt
        self._loop = asyncio.get_running_loop()
        self._peers: dict[int, socket.socket] = {}
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(MAX_HANDOFF_PEERS)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        self._loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("handoff socket: accept failed: %s", exc)
            return
        if len(self._peers) >= MAX_HANDOFF_PEERS:
            log.warning("handoff socket: %d peers already connected; closing a new one", MAX_HANDOFF_PEERS)
            conn.close()
            return
        conn.setblocking(False)
        self._peers[conn.fileno()] = conn
        self._loop.add_reader(conn.fileno(), self._receive, conn)

    def _receive(self, conn: socket.socket) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(conn, 64, MAX_FDS_PER_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("handoff socket: receive failed: %s", exc)
            self._drop(conn)
            return
        if flags & socket.MSG_CTRUNC:
            log.warning("handoff socket: more than %d descriptors in one message; the rest were dropped",
                        MAX_FDS_PER_MESSAGE)
        for fd in fds:
            self._take(fd)
        if not data and not fds:
            self._drop(conn)  # end of stream: the peer left

    def _take(self, fd: int) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:  # not a socket
            os.close(fd)
            log.warning("handoff socket: a descriptor that is not a socket was closed (%s)", exc)
            return
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in _ADOPTABLE:
                raise OSError(f"a {sock.family.name} {sock.type.name} socket cannot carry a client")
            sock.getpeername()  # raises unless connected
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            log.warning("handoff socket: a socket that cannot be a client was closed (%s)", exc)
            return
        try:
            self._adopt(sock)
        except Exception as exc:  # one bad socket must not stop the listener
            sock.close()
            log.warning("handoff socket: could not adopt a connection: %r", exc)

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(conn.fileno())
        self._peers.pop(conn.fileno(), None)
        conn.close()

    def close(self) -> None:
        """Stop listening, close every peer (each sees end of stream) and remove the socket."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        for conn in list(self._peers.values()):
            self._drop(conn)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def hand_off(channel: socket.socket, client: socket.socket) -> None:
    """Send ``client`` over ``channel`` (a connection to a handoff socket), then close it here.

    Raises:
        OSError: The channel cannot take it now (the server is gone, or not reading).
    """
    try:
        socket.send_fds(channel, [b"C"], [client.fileno()])
    finally:
        client.close()
