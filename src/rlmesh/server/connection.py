"""The server's side of each connection, and the client slots they compete for.

A connection goes through three states. Until it is *active* it holds no slot and may send
only small frames: it must say HELLO (and, when the server has a token, prove it knows the
token) within ``hello_timeout``; the sequence is :class:`~rlmesh.protocol.session.ServerHandshake`'s.
Only then does it claim one of the ``max_clients`` slots (:class:`ClientSlots`), and with it an
env of its own (the server's first env, one a client before it left, or a new one from the
factory); if every slot is held, the newcomer waits a moment (a client may be hanging up) and is
then told the server is busy. An active client that sends nothing for ``idle_timeout`` is
dropped. Its requests go to :func:`~rlmesh.server.dispatch.handle`, with its env.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ..errors import AuthenticationError, ProtocolError
from ..protocol import DEFAULT_MAX_FRAME_SIZE, MIN_FRAME_SIZE, Connection, ErrorBody, Frame, MessageType, encode_message
from ..protocol.faults import env_error
from ..protocol.session import ServerHandshake, ServerHandshakeState
from .data_plane import RegionHandover
from .dispatch import handle

if TYPE_CHECKING:
    from .core import EnvServer

__all__ = ["BUSY_GRACE", "MAX_EVICTED", "MAX_PENDING", "ClientSlots", "ServerConnection"]

log = logging.getLogger("rlmesh.server")

MAX_PENDING = 64
"""Connections that may be in their handshake at once; a newer one evicts the oldest."""
MAX_EVICTED = 256
"""Evicted connections that may still be closing (told they were dropped: busy); more are reset."""
BUSY_GRACE = 0.25
"""Seconds a newly authenticated client waits for the slot before it is told the server is busy."""


class ClientSlots:
    """Who a server serves: the active clients (at most ``capacity``), those waiting for a slot,
    those in their handshake.

    Args:
        on_vacant: Called each time the last active client leaves (a dialled server then stops).
        capacity: Clients served at once.
    """

    def __init__(self, on_vacant: Callable[[], None], capacity: int = 1) -> None:
        self.capacity = capacity
        self.active: list[ServerConnection] = []
        self.waiting: list[ServerConnection] = []
        self.pending: dict[ServerConnection, None] = {}  # in their handshake, oldest first
        self.evicted: set[ServerConnection] = set()  # evicted from pending, told why, closing
        self.vacant_since = 0.0  # loop time the slot was last freed (for a lease)
        self._on_vacant = on_vacant

    def claim(self, conn: ServerConnection) -> bool:
        """Give ``conn`` a slot if one is free (or held by a peer that hung up)."""
        if len(self.active) >= self.capacity:
            for held in list(self.active):
                if held is not conn and _peer_hung_up(held):
                    log.info("client %s hung up; freeing its slot", held.peer)
                    held.release()
        if len(self.active) < self.capacity:
            self.active.append(conn)
            return True
        return False

    def release(self, conn: ServerConnection) -> None:
        """``conn`` leaves its slot, if it held one; the next waiting client gets it."""
        if conn in self.active:
            self.active.remove(conn)
            conn.give_back_env()
            if not self.active:
                self.vacant_since = asyncio.get_running_loop().time()
                self._on_vacant()
            while self.waiting and len(self.active) < self.capacity:
                self.waiting.pop(0).promote()

    def every(self) -> list[ServerConnection]:
        """Every connection the server has, in whatever state."""
        return [*self.active, *self.waiting, *self.pending, *self.evicted]


class ServerConnection(asyncio.Protocol):
    """One connection: handshake, then (once it holds the slot) requests."""

    def __init__(self, server: EnvServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.conn = Connection(MIN_FRAME_SIZE)
        self.state = "new"  # new (-> early) -> auth -> waiting -> active -> closed
        self.handshake = ServerHandshake(server.options.token)
        self.reply_limit = DEFAULT_MAX_FRAME_SIZE
        self.peer = "client"
        self._timer: asyncio.TimerHandle | None = None
        self._last_seen = 0.0
        self.handover: RegionHandover | None = None  # the data plane's MAP exchange, once offered
        self.env: Any = None  # its own env, while it holds a slot

    # -- transport callbacks ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.peer = str(transport.get_extra_info("peername") or "unix client")
        server = self.server
        slots = server.slots
        if len(slots.pending) >= MAX_PENDING:
            # Evict the oldest: a flood of silent connections cannot lock a real client out. It is told
            # why (busy: retry later) and half-closed, so that its HELLO, still arriving, cannot turn the
            # close into a reset that discards the reason unread; at most MAX_EVICTED linger so (for
            # as long as any told peer may take to read, reading nothing), beyond that they are reset.
            oldest = next(iter(slots.pending))
            log.warning("%d connections in their handshake: dropping the oldest, %s", MAX_PENDING, oldest.peer)
            oldest._uncount()
            if oldest.transport is not None and len(slots.evicted) < MAX_EVICTED:
                slots.evicted.add(oldest)
                oldest.transport.write(ErrorBody.busy(
                    f"the server at {server.address} has {MAX_PENDING} connections in their handshake and dropped "
                    "this one, the oldest; retry later").encode(0))
                oldest._close_after_write()
            elif oldest.transport is not None:
                oldest.transport.abort()
        slots.pending[self] = None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # notice dead TCP peers
        # A peer that never finishes its handshake (a port scanner, a stuck client) must go. A
        # dialled server's one peer is its owner, and the env may take long to make: no timer.
        if not server.options.dial:
            self._timer = asyncio.get_running_loop().call_later(server.options.hello_timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.state == "closed":
            return
        try:
            frames = self.conn.receive_data(data)
            for i, frame in enumerate(frames):
                if self.state == "active":
                    if frame.type is MessageType.MAP:
                        self._map(frame, sole=i == len(frames) - 1 and not self.conn.buffered)
                        continue
                    handover = self.handover
                    region = None if handover is None else handover.region
                    transport.write(handle(self.env, frame, self.reply_limit, region))
                    if frame.type is MessageType.CLOSE:
                        self.release()
                        transport.close()
                        return
                else:
                    self._handshake(frame)
                if transport.is_closing() or self.state == "closed":
                    return
            if self.state == "active":
                self._last_seen = self._loop_time()
        except ProtocolError as exc:
            self._drop("protocol", str(exc))

    def pause_writing(self) -> None:
        # Backpressure: a client that sends requests without reading replies stops being read.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.handover is not None:
            self.handover.close()
        self._uncount()
        slots = self.server.slots
        slots.evicted.discard(self)
        if self in slots.waiting:
            slots.waiting.remove(self)
        self.release()
        self.state = "closed"
        self.transport = None
        if self.server.options.dial:
            self.server.stop()  # the one connection of a dialled server ended

    # -- the data plane ----------------------------------------------------
    def _map(self, frame: Frame, *, sole: bool) -> None:
        # A region offered (then checked) by a client on this host: see server/data_plane.py.
        transport, layout = self.transport, self.server.layout
        assert transport is not None
        body = frame.value()
        rid = frame.request_id
        if layout is None:
            raise ProtocolError("MAP before the env is made")
        if self.handover is None:
            self.handover = RegionHandover(layout, transport, lambda: self._drop(
                "protocol", "the region's descriptor did not come after its MAP offer"))
        handover = self.handover
        if type(body) is dict and "check" in body:
            answer = handover.check(body)
        else:
            declined = handover.offer(body, sole)
            answer = {"ready": layout.size} if declined is None else declined
        if isinstance(answer, str):
            transport.write(ErrorBody.bad_request(f"no shared region: {answer}").encode(rid))
        else:
            transport.write(encode_message(MessageType.MAP, rid, answer))

    # -- handshake ---------------------------------------------------------
    def _handshake(self, frame: Frame) -> None:
        # The sequence is protocol.session's; this decides when to answer (the env made, the slot free).
        server = self.server
        handshake = self.handshake
        if self.state not in ("new", "auth"):
            raise ProtocolError(f"unexpected {frame.type.name} while waiting for the server to be free")
        try:
            handshake.receive(frame)
        except AuthenticationError as exc:
            log.warning("authentication failed for %s: wrong token", self.peer)
            self._drop("auth", str(exc))
            return
        if self.state == "new":
            assert handshake.hello is not None
            self.reply_limit = handshake.hello.max_frame_size
            if server.startup_error is not None:  # the env could not be made: say why, then end
                self._report_startup_error()
                return
            if server.hello_parts is None:
                # Dialling, the client's HELLO can arrive while the env is still being made
                # (uvloop reads right after connecting): it is answered once the env is there.
                self.state = "early"
                return
        self._answer_hello()

    def _answer_hello(self) -> None:
        # The HELLO is in (and the env made): challenge, or go on to the slot.
        if self.handshake.state is ServerHandshakeState.AUTH:
            self.state = "auth"
            assert self.transport is not None
            self.transport.write(self.handshake.challenge())
        else:
            self._authenticated()

    def _authenticated(self) -> None:
        self._cancel_timer()
        if self.server.slots.claim(self):
            self._activate()
            return
        self.state = "waiting"
        self.server.slots.waiting.append(self)
        self._timer = asyncio.get_running_loop().call_later(BUSY_GRACE, self._busy)

    def _report_startup_error(self) -> None:
        assert self.transport is not None and self.server.startup_error is not None
        self.transport.write(env_error(self.server.startup_error).encode(self.handshake.reply_id))
        self._close_after_write()
        self.server.stop()

    def env_ready(self) -> None:
        """A dialled server made its env (or failed to): answer a HELLO that came before."""
        if self.state != "early" or self.transport is None:
            return
        self.state = "new"
        if self.server.startup_error is not None:
            self._report_startup_error()
        else:
            self._answer_hello()

    def promote(self) -> None:
        """Called by the server when a slot frees while this connection waits for one."""
        self._cancel_timer()
        if self.transport is None or self.transport.is_closing():
            return
        self.server.slots.active.append(self)
        self._activate()

    def give_back_env(self) -> None:
        """Return this client's env to the server (the next client gets it)."""
        env, self.env = self.env, None
        if env is not None:
            self.server.give_back_env(env)

    def _activate(self) -> None:
        server = self.server
        try:
            self.env = server.lend_env(self.handshake.hello.render_mode if self.handshake.hello else None)
        except Exception as exc:  # another env could not be made: this client hears why
            log.warning("could not make an env for %s: %s: %s", self.peer, type(exc).__name__, exc)
            server.slots.release(self)
            assert self.transport is not None
            self.transport.write(env_error(exc).encode(self.handshake.reply_id))
            self._close_after_write()
            return
        self.state = "active"
        self._uncount()
        self.conn.max_frame_size = server.options.max_frame_size
        assert self.transport is not None and server.hello_parts is not None
        self.transport.write(self.handshake.accept(server.hello_for(self.env)))
        log.info("serving client %s", self.peer)
        if server.options.idle_timeout is not None:
            self._last_seen = self._loop_time()
            self._timer = asyncio.get_running_loop().call_later(server.options.idle_timeout / 4, self._check_idle)

    def _busy(self) -> None:
        if self in self.server.slots.waiting:
            self.server.slots.waiting.remove(self)
        capacity = self.server.slots.capacity
        log.warning("rejecting %s: already serving %d client(s)", self.peer, capacity)
        assert self.transport is not None
        if capacity == 1:
            what = "already serves a client; it serves one client at a time"
        else:
            what = f"already serves {capacity} clients, its max_clients (rlmesh serve --max-clients N serves more)"
        self.transport.write(ErrorBody.busy(f"the server at {self.server.address} {what}").encode(0))
        self._close_after_write()

    # -- timers and teardown -------------------------------------------------
    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.state in ("new", "auth") and self.transport is not None:
            self._drop("protocol", f"no HELLO (and authentication) within {self.server.options.hello_timeout:g}s")

    def _check_idle(self) -> None:
        timeout = self.server.options.idle_timeout
        if self.state != "active" or self.transport is None or timeout is None:
            return
        idle = self._loop_time() - self._last_seen
        if idle >= timeout:
            log.warning("dropping %s: idle for %.0fs (idle_timeout=%gs)", self.peer, idle, timeout)
            self._drop("idle", f"the server dropped this client after {timeout:g}s without a request "
                               "(its idle_timeout); reconnect to go on")
            return
        self._timer = asyncio.get_running_loop().call_later(min(timeout - idle, timeout / 4) + 0.01, self._check_idle)

    def _drop(self, kind: str, reason: str) -> None:
        log.warning("closing connection from %s: %s", self.peer, reason)
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(ErrorBody.closing(kind, reason).encode(0))
        self.release()
        self._close_after_write()

    def _close_after_write(self) -> None:
        # Half-close instead of close: closing with the peer's data unread resets the
        # connection, and the peer would see "connection reset" instead of the reason.
        # The peer hangs up once it has read it; the timer bounds one that does not.
        assert self.transport is not None
        self.state = "closed"
        self._cancel_timer()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(5.0, transport.abort)
        else:
            transport.close()

    def release(self) -> None:
        """Give up the slot (if held); the next waiting client gets it."""
        self.server.slots.release(self)

    def _uncount(self) -> None:
        self.server.slots.pending.pop(self, None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()


def _peer_hung_up(proto: ServerConnection) -> bool:
    """Whether the active client's socket has reached end of stream (it hung up)."""
    transport = proto.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:  # uvloop hands out a pseudo-socket
            return dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
