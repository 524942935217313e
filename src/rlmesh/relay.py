"""``python -m rlmesh.relay``: forward TCP connections to a sandbox's Unix socket.

Runs in a small container beside a sandbox on an engine that is not this machine's (or with
``transport="tcp"``): the sandbox keeps no network, and its server listens on a Unix socket in
a volume the two containers share; the relay publishes one TCP port and forwards bytes. It
does not authenticate anyone itself: the server behind it does (a fresh token per sandbox),
with its pre-authentication limits.

It ends when its sandbox's server is gone (the socket disappears, or refuses), or when no
client has been connected for ``--lease`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
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

    def accept(self) -> _Pipe:
        pipe = _Pipe(self)
        asyncio.ensure_future(self._link(pipe))
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
    p.add_argument("--upstream", required=True, help="unix:///path of the sandbox's server")
    p.add_argument("--lease", type=float, default=60.0, help="stop after this many seconds without a client")
    args = p.parse_args(argv)
    try:
        import uvloop  # noqa: PLC0415  (optional speed-up)
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    if uvloop is None:
        asyncio.run(_serve(args.listen, args.upstream, args.lease))
    else:
        uvloop.run(_serve(args.listen, args.upstream, args.lease))
    return 0


if __name__ == "__main__":
    sys.exit(main())

