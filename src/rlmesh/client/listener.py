"""Listener: a Unix socket that one dialling server connects to."""

from __future__ import annotations

import asyncio
import socket

from ..protocol import DEFAULT_MAX_FRAME_SIZE
from ..protocol.data_plane import DEFAULT_MAX_REGION_SIZE
from .connection import ClientConnection
from .transport import ReplyProtocol, refuse_connection

__all__ = ["Listener"]


class Listener:
    """A Unix socket that one server dials into (``rlmesh serve --dial``).

    Sandboxes use this: the container gets the socket file mounted read-only, and the server's
    connection is accepted here, then handshaken by :meth:`accept`. Use :meth:`open`.
    """

    def __init__(self, path: str, max_frame_size: int) -> None:
        self.path = path
        self.address = f"unix://{path}"
        self._max_frame_size = max_frame_size
        self._server: asyncio.AbstractServer | None = None
        self._first: asyncio.Future[ReplyProtocol] | None = None
        self._sock: socket.socket | None = None
        self._adopted = False

    @classmethod
    async def open(cls, path: str, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> Listener:
        """Listen on the Unix socket ``path``."""
        listener = cls(path, max_frame_size)
        await listener.start()
        return listener

    async def start(self) -> None:
        """Bind and listen (the socket file exists when this returns)."""
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()

        def factory() -> ReplyProtocol:
            proto = ReplyProtocol(self._max_frame_size)
            assert self._first is not None
            if self._first.done():
                proto.connection_made = refuse_connection  # type: ignore[method-assign]  # one server per listener: the rest are dropped
            else:
                self._first.set_result(proto)
            return proto

        # The socket is made here, so that a start cancelled inside create_unix_server (which
        # yields once after binding) cannot leave it open.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            sock.listen(8)
            sock.setblocking(False)
            self._server = await loop.create_unix_server(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    async def accept(self, *, token: bytes | None = None, data_plane: str = "auto",
                     max_region_size: int = DEFAULT_MAX_REGION_SIZE) -> ClientConnection:
        """Wait for the server to dial in, then handshake; only the first connection counts.

        Raises:
            ProtocolError: The server broke the protocol.
            TransportError: The connection was lost during the handshake.
        """
        assert self._first is not None and self._server is not None
        proto = await asyncio.shield(self._first)
        self._server.close()  # one server per listener: nobody else gets in
        while proto.transport is None:  # connection_made runs right after the factory
            await asyncio.sleep(0)
        conn = ClientConnection(proto, self.address)
        self._adopted = True
        try:
            conn.hello = await conn._handshake(self._max_frame_size, token, False)
            await conn.open_data_plane(data_plane, max_region_size)
        except BaseException:
            conn.abort()
            raise
        return conn

    def close(self) -> None:
        """Stop listening, and drop a connection that was never handed to a ClientConnection."""
        if self._server is not None:
            self._server.close()
        if self._sock is not None:
            self._sock.close()
        first = self._first
        if first is not None and first.done() and not first.cancelled() and not self._adopted:
            transport = first.result().transport
            if transport is not None:
                transport.abort()
