"""The server's side of the shared-memory data plane: take the host's region, write replies into it.

A client on the same host may hand the server a memory region (``MAP``, feature ``shm1``; see
:mod:`rlmesh.protocol.data_plane`). The server maps it only if it is what was announced: one
memfd, sealed against growing, shrinking and further sealing, of exactly the size the server's
own layout gives for its spaces, whose first bytes hold the probe the client announced (so the
memory is really shared, which it is not in a gVisor sandbox). Anything else is declined with
a ``bad_request`` ERROR, every descriptor received is closed, and the socket path goes on.

While the descriptor is awaited the connection's transport is paused, and the one byte that
carries it is read from a duplicate of the socket with the loop's reader (asyncio and uvloop
alike), so it can never be consumed as frame bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from ..protocol.data_plane import FEATURE, PROBE_SIZE, Layout

__all__ = ["FEATURE", "RegionHandover", "ServerRegion", "supported"]

log = logging.getLogger("rlmesh.server")

_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
_DESCRIPTOR_TIMEOUT = 10.0
_MAX_FDS = 4


def supported() -> bool:
    """Whether this system can take a region (memfd seals and ``SCM_RIGHTS``)."""
    return hasattr(fcntl, "F_GET_SEALS") and hasattr(socket, "recv_fds")


class ServerRegion:
    """The server's mapping of the host's region, and the writes of one connection's replies."""

    def __init__(self, layout: Layout, memory: mmap.mmap) -> None:
        self.layout = layout
        self._memory: mmap.mmap | None = memory
        self._views = layout.views(memory)
        self._vector = layout.num_envs is not None

    def step(self, result: Any) -> Any:
        """A STEP result with what fits written to the region (``None`` in its place)."""
        if type(result) is not tuple or len(result) != 5:
            return result
        if self._vector:
            return self.layout.place_flags(result, self._views)
        return (self.layout.place(result[0], self._views), *result[1:])

    def reset(self, result: Any) -> Any:
        """A RESET result with its observation's arrays written to the region where they fit."""
        if type(result) is not tuple or len(result) != 2:
            return result
        return (self.layout.place(result[0], self._views), result[1])

    def close(self) -> None:
        """Unmap (idempotent)."""
        memory, self._memory = self._memory, None
        self._views = []
        if memory is not None:
            with contextlib.suppress(BufferError):
                memory.close()


class RegionHandover:
    """One connection's ``MAP`` exchange: the offer, the descriptor, the check.

    Args:
        layout: The server's own layout for its spaces.
        transport: The connection's transport (paused while the descriptor is awaited).
        on_timeout: Called when the descriptor does not come (the caller drops the connection).
    """

    def __init__(self, layout: Layout, transport: asyncio.Transport, on_timeout: Callable[[], None]) -> None:
        self.layout = layout
        self.transport = transport
        self.region: ServerRegion | None = None
        self.error: str | None = "no region was offered"
        self._on_timeout = on_timeout
        self._probe = b""
        self._dup: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, body: Any, sole: bool) -> str | None:
        """Take a client's offer (``{"size", "probe", "layout"}``): None when the descriptor is now
        awaited (reading paused; answer ``{"ready": size}``), else why the offer is declined."""
        if type(body) is not dict or set(body) != {"size", "probe", "layout"}:
            return "a MAP offer is {size, probe, layout}"
        size, probe = body["size"], body["probe"]
        if self.region is not None or self._dup is not None:
            return "this connection has a region already"
        if not sole:
            return "a MAP offer must be the last thing sent before its answer"
        if not supported() or not self.layout.size:
            return "this server takes no region (no fixed-shape arrays, or no memfd seals here)"
        if type(size) is not int or size != self.layout.size:
            return f"a region of {size!r:.20} bytes does not fit this env's layout ({self.layout.size} bytes)"
        if body["layout"] != self.layout.fingerprint():
            return "the client places the arrays otherwise than this server (another layout of the same size)"
        try:
            self._probe = bytes.fromhex(probe) if type(probe) is str else b""
        except ValueError:
            self._probe = b""
        if len(self._probe) != PROBE_SIZE:
            return f"the probe must be {PROBE_SIZE} bytes in hex"
        sock = self.transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return "a region can only be handed over a Unix socket"
        loop = asyncio.get_running_loop()
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        dup.setblocking(False)
        self.transport.pause_reading()
        self._dup = dup
        loop.add_reader(dup.fileno(), self._readable)
        self._timer = loop.call_later(_DESCRIPTOR_TIMEOUT, self._timed_out)
        self.error = "the region's descriptor has not come"
        return None

    def check(self, body: Any) -> dict[str, Any] | str:
        """Answer the client's ``{"check": size}``: the mapping and the probe read from it, or why not."""
        if type(body) is not dict or set(body) != {"check"} or body["check"] != self.layout.size:
            return "a MAP check is {check: size}, after an offer"
        if self.region is None:
            return self.error or "no region"
        return {"mapped": self.layout.size, "probe": self._probe.hex()}

    def _readable(self) -> None:
        dup = self._dup
        if dup is None:
            return
        try:
            data, fds, flags, _ = socket.recv_fds(dup, 1, _MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, fds, flags = b"", [], 0
            self.error = f"receiving the region failed: {exc}"
        self._stop_waiting()
        try:
            if not data:
                self.error = self.error if self.error != "the region's descriptor has not come" else \
                    "the client closed the connection before the region came"
            elif data != b"M" or len(fds) != 1 or flags & getattr(socket, "MSG_CTRUNC", 0):
                self.error = f"expected one descriptor with the byte 'M', got {len(fds)} with {data!r:.10}"
            else:
                self._map(fds[0])
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def _map(self, fd: int) -> None:
        size = self.layout.size
        try:
            info = os.fstat(fd)
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            self.error = f"the descriptor is not a sealed memfd ({exc.strerror or exc})"
            return
        if not stat.S_ISREG(info.st_mode) or seals & _SEALS != _SEALS:
            self.error = "the descriptor is not a memfd sealed against growing, shrinking and sealing"
            return
        if info.st_size != size:
            self.error = f"the region is {info.st_size} bytes, not the {size} announced"
            return
        try:
            memory = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as exc:
            self.error = f"the region cannot be mapped here: {exc}"
            return
        if memory[:PROBE_SIZE] != self._probe:
            memory.close()
            self.error = "the region is not shared with the client here (a gVisor sandbox?)"
            return
        memory[PROBE_SIZE : 2 * PROBE_SIZE] = self._probe[::-1]
        self.region = ServerRegion(self.layout, memory)
        self.error = None
        log.info("data plane: shared memory (%d bytes)", size)

    def _timed_out(self) -> None:
        self._timer = None
        if self._dup is not None:
            self._stop_waiting()
            self.error = f"no descriptor within {_DESCRIPTOR_TIMEOUT:g}s"
            self._on_timeout()

    def _stop_waiting(self) -> None:
        dup, self._dup = self._dup, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if dup is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(dup.fileno())
            dup.close()

    def close(self) -> None:
        """Stop waiting and unmap (the connection ended)."""
        self._stop_waiting()
        region, self.region = self.region, None
        if region is not None:
            region.close()
