"""``python -m rlmesh.relay``: bring TCP clients to a sandbox's server, which has no network.

Runs in a small container beside a sandbox on an engine that is not this machine's (or with
``transport="tcp"``): the sandbox keeps no network, and its server listens on Unix sockets in
a volume the two containers share; the relay publishes one TCP port. It does not authenticate
anyone itself: the server does (a fresh token per sandbox), with its pre-authentication limits.

``--handoff unix:///path`` (the default for sandboxes): the relay accepts each client and
passes the connected socket to the server as a file descriptor
(:mod:`rlmesh.server.handoff`), so steps go from the client to the server with nothing in
between. The relay ends when its server is gone (its connection to the handoff socket ends),
when no server appeared within ``--lease`` seconds, or when no client has been connected for
``--lease`` seconds (it counts the established connections to its port in its own network
namespace, whoever holds them).

``--upstream unix:///path``: the relay forwards bytes to the server's socket, one more hop per
step. gVisor sandboxes use it, as gVisor cannot receive a host descriptor. It ends when the
server's socket disappears, or when no client has been connected for ``--lease`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from typing import cast

__all__ = ["main"]

MAX_CONNECTIONS = 16
CHECK_EVERY = 0.5


class _Pipe(asyncio.Protocol):
    """One side of a forwarded connection: what it receives is written to its peer."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)  # the upstream is still connecting (bounded by the server's limits)
            if sum(map(len, self.pending)) > 1 << 20 and self.transport is not None:
                self.transport.pause_reading()

    def pause_writing(self) -> None:  # backpressure: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        self.relay.lost(self)


class _Relay:
    def __init__(self, upstream: str, lease: float) -> None:
        self.upstream = upstream
        self.lease = lease
        self.clients: set[_Pipe] = set()
        self.stop = asyncio.Event()
        self.vacant_since = asyncio.get_running_loop().time()
        # The loop keeps only weak references to tasks: each linking task is held here until done.
        self.linking: set[asyncio.Future[None]] = set()

    def accept(self) -> _Pipe:
        pipe = _Pipe(self)
        task = asyncio.ensure_future(self._link(pipe))
        self.linking.add(task)
        task.add_done_callback(self.linking.discard)
        return pipe

    async def _link(self, client: _Pipe) -> None:
        for _ in range(10):  # connection_made runs right after the factory
            if client.transport is not None:
                break
            await asyncio.sleep(0)
        if client.transport is None:
            return
        if len(self.clients) >= MAX_CONNECTIONS:
            client.transport.close()
            return
        self.clients.add(client)
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_unix_connection(lambda: _Pipe(self), self.upstream)
        except OSError:
            client.transport.close()
            return
        upstream.peer, client.peer = client, upstream
        if client.transport is None:  # the client left meanwhile
            if upstream.transport is not None:
                upstream.transport.close()
            return
        for chunk in client.pending:
            assert upstream.transport is not None
            upstream.transport.write(chunk)
        client.pending.clear()
        client.transport.resume_reading()

    def lost(self, pipe: _Pipe) -> None:
        if pipe in self.clients:
            self.clients.discard(pipe)
            self.vacant_since = asyncio.get_running_loop().time()

    async def watch(self) -> None:
        seen = False
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            exists = os.path.exists(self.upstream)
            seen = seen or exists
            if seen and not exists:
                print("rlmesh-relay: the sandbox's server is gone; stopping", file=sys.stderr, flush=True)
                self.stop.set()
            elif not self.clients and loop.time() - self.vacant_since > self.lease:
                print(f"rlmesh-relay: no client for {self.lease:g}s; stopping", file=sys.stderr, flush=True)
                self.stop.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_EVERY):
                    await self.stop.wait()


async def _serve_handoff(listen: str, handoff: str, lease: float) -> None:
    # Pass each accepted client to the server as a file descriptor, then forget it: the relay
    # is out of the data path. It stops when the server is gone (its one connection to the
    # handoff socket ends, even if the server was killed), when no server came within
    # ``lease``, or when no client has been connected for ``lease`` seconds. It counts its
    # clients in its own network namespace (they are its TCP connections, handed over or not),
    # so the untrusted server cannot keep it, and its published port, alive.
    from ._address import parse_address
    from .server.handoff import hand_off

    addr = parse_address(listen)
    if addr.host is None or addr.port is None:
        raise SystemExit("rlmesh-relay: --listen takes tcp://host:port")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    channel = await _connect_handoff(handoff, lease, stop)
    if channel is None:
        return

    def server_gone() -> None:
        try:
            if channel.recv(64):
                return  # the server sends nothing; ignore it if it does
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        print("rlmesh-relay: the sandbox's server is gone; stopping", file=sys.stderr, flush=True)
        stop.set()

    loop.add_reader(channel.fileno(), server_gone)
    listener = socket.create_server((addr.host, addr.port), backlog=MAX_CONNECTIONS)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    async def accept() -> None:
        while True:
            try:
                client, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors, a connection reset before accept(): go on
                print(f"rlmesh-relay: accept failed: {exc}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.1)
                continue
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                hand_off(channel, client)
            except OSError as exc:  # the server is not taking connections: this client is refused
                client.close()
                print(f"rlmesh-relay: could not hand a client over: {exc}", file=sys.stderr, flush=True)

    async def watch_lease() -> None:
        vacant_since = loop.time()
        while True:
            await asyncio.sleep(CHECK_EVERY)
            if _established(port):
                vacant_since = loop.time()
            elif loop.time() - vacant_since > lease:
                print(f"rlmesh-relay: no client for {lease:g}s; stopping", file=sys.stderr, flush=True)
                stop.set()

    tasks = {asyncio.ensure_future(accept()), asyncio.ensure_future(watch_lease())}
    print(f"rlmesh-relay ready on tcp://{addr.host}:{port} (handing clients over)", flush=True)
    try:
        done, _ = await asyncio.wait({*tasks, asyncio.ensure_future(stop.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done & tasks:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        loop.remove_reader(channel.fileno())
        listener.close()
        channel.close()


def _established(port: int) -> int:
    """TCP connections to ``port`` in this network namespace that are established (in the
    kernel's own table: they count whoever holds them, the relay or the server it handed them to)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except (OSError, ValueError):
            continue
    return count


async def _connect_handoff(path: str, lease: float, stop: asyncio.Event) -> socket.socket | None:
    # The relay starts before its sandbox: wait (at most ``lease``) for the server's handoff
    # socket. Non-blocking, so a server that never accepts cannot wedge the relay's loop.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lease
    while not stop.is_set():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(1.0):
                await loop.sock_connect(sock, path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError, BlockingIOError):
            sock.close()
        if loop.time() > deadline:
            print(f"rlmesh-relay: no server at {path} within {lease:g}s; stopping", file=sys.stderr, flush=True)
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.02):
                await stop.wait()
    return None


async def _serve(listen: str, upstream: str, lease: float) -> None:
    from ._address import parse_address

    addr = parse_address(listen)
    up = parse_address(upstream)
    if addr.host is None or addr.port is None or up.path is None:
        raise SystemExit("rlmesh-relay: --listen takes tcp://host:port and --upstream unix:///path")
    relay = _Relay(up.path, lease)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(relay.accept, addr.host, addr.port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, relay.stop.set)
    print(f"rlmesh-relay ready on {listen}", flush=True)
    try:
        await relay.watch()
    finally:
        server.close()
        for pipe in list(relay.clients):
            for side in (pipe, pipe.peer):
                if side is not None and side.transport is not None:
                    side.transport.abort()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rlmesh.relay``."""
    p = argparse.ArgumentParser(prog="rlmesh-relay", description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, help="tcp://host:port to accept clients on")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--upstream", help="unix:///path of the sandbox's server: forward bytes to it")
    where.add_argument("--handoff", help="unix:///path of the server's handoff socket: pass clients to it")
    p.add_argument("--lease", type=float, default=60.0, help="stop after this many seconds without a client")
    args = p.parse_args(argv)
    try:
        import uvloop  # optional speed-up
    except ImportError:
        uvloop = None  # type: ignore[assignment]  # the module, or None when not installed
    if args.handoff is not None:
        from ._address import parse_address

        path = parse_address(args.handoff).path
        if path is None:
            raise SystemExit("rlmesh-relay: --handoff takes unix:///path")
        main_coro = _serve_handoff(args.listen, path, args.lease)
    else:
        main_coro = _serve(args.listen, args.upstream, args.lease)
    if uvloop is None:
        asyncio.run(main_coro)
    else:
        uvloop.run(main_coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())

