"""Who owns a sandbox, and how sandboxes end with their owner.

Each sandbox container is labelled with its owner: host name, PID namespace, pid, process
start time and a random id per process, so owners are unique across PID namespaces and a
reused pid is never mistaken for the owner. Liveness is judged only for owners on this host
and in this PID namespace; any other owner is "not ours to judge".

How a sandbox ends:

* ``close()`` removes it (see :mod:`rlmesh.sandbox.container`);
* a normal interpreter exit, SIGTERM and SIGHUP remove every sandbox of the process, then the
  signal's previous handler (or its default action) runs, so the exit status is what a
  scheduler expects;
* SIGKILL or a lost host: the server inside dials its owner's socket, so it sees the owner's
  end as end-of-stream (or, still starting, as a socket nobody listens on) and exits; the
  engine then removes the container (``AutoRemove``). That takes about a second.
* What a SIGKILL during a start leaves before the container runs (a container created but not
  started, which ``AutoRemove`` does not cover; a socket directory, which the start removes
  once the container runs) is removed by the next start's sweep on this host
  (:func:`reap_dead_owners_once`) or by ``rlmesh sandbox cleanup``.
* After ``os.fork()`` the child owns none of its parent's sandboxes (it never closes or reaps
  them) and lets go of their connections, so the parent's end still ends them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import SandboxError
from ._docker import DockerClient, docker_client

__all__ = [
    "LABEL",
    "LABEL_OWNER",
    "LABEL_SESSION",
    "LABEL_SOCKET_DIR",
    "LABEL_SOURCE",
    "SOCKET_DIR_PREFIX",
    "Owner",
    "cleanup_sandboxes",
    "install_signal_handlers",
    "list_sandboxes",
    "owner",
    "owner_alive",
    "register",
    "unregister",
]

log = logging.getLogger("rlmesh.sandbox")

LABEL = "rlmesh.sandbox"
LABEL_OWNER = "rlmesh.owner"
LABEL_SESSION = "rlmesh.session"
LABEL_SOURCE = "rlmesh.source"
LABEL_SOCKET_DIR = "rlmesh.socket-dir"
SOCKET_DIR_PREFIX = "rlmesh-sbx-"  # then the owner's pid, so a leak check can tell whose it is


def _stat_fields(pid: int) -> list[str]:
    # /proc/PID/stat after the command name: state is field 0, start time (ticks) field 19.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_ticks(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else "?"


def _pid_alive(pid: int, ticks: str) -> bool:
    """Whether process ``pid``, started at ``ticks``, still runs: not gone, not a zombie that
    its parent has yet to reap (a SIGKILLed owner is one until then), and not a reused pid."""
    fields = _stat_fields(pid)
    return len(fields) > 19 and fields[0] not in ("Z", "X") and (ticks == "?" or fields[19] == ticks)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return "?"


@dataclass(frozen=True)
class Owner:
    """This process, as recorded in a sandbox's labels."""

    host: str
    pidns: str
    pid: int
    ticks: str
    instance: str

    @property
    def label(self) -> str:
        """The ``rlmesh.owner`` label value."""
        return f"{self.host}:{self.pidns}:{self.pid}:{self.ticks}:{self.instance}"

    @property
    def session(self) -> str:
        """The ``rlmesh.session`` label value (unique per process)."""
        return self.instance


def _me() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), _pid_namespace(), pid, _start_ticks(pid), uuid.uuid4().hex[:16])


_owner = _me()


def owner() -> Owner:
    """This process's owner record (a forked child gets its own)."""
    return _owner


def owner_alive(label: str) -> bool:
    """Whether the owner named by a label is alive; True when it is not ours to judge.

    Only owners on this host and in this PID namespace are judged, by pid and process
    start time (a reused pid has another start time).
    """
    parts = label.split(":")
    if len(parts) != 5:
        return True  # an older or foreign label: not ours to judge
    host, pidns, pid_text, ticks, _ = parts
    me = _owner
    if host != me.host or pidns != me.pidns or not pid_text.isdigit():
        return True
    return _pid_alive(int(pid_text), ticks)


# -- this process's live sandboxes -------------------------------------------------
@dataclass
class _Live:
    socket_dir: str | None
    host: str | None = None  # the engine (None: the default one)
    fd: int = -1  # the sandbox's connection, let go of in a forked child


_live: dict[str, _Live] = {}
_lock = threading.RLock()  # re-entrant: a signal handler may run while the main thread holds it
_atexit_registered = False


def register(container_id: str, socket_dir: str | None, host: str | None = None) -> None:
    """Record a started sandbox container on an engine (for exit-time and signal cleanup)."""
    global _atexit_registered
    with _lock:
        _live[container_id] = _Live(socket_dir, host)
        if not _atexit_registered:
            atexit.register(remove_all_now, "exit")
            _atexit_registered = True


def set_connection_fd(container_id: str, fd: int) -> None:
    """Record the sandbox's connection fd (a forked child lets go of it)."""
    with _lock:
        entry = _live.get(container_id)
        if entry is not None:
            entry.fd = fd


def unregister(container_id: str) -> None:
    """Forget a sandbox that was removed."""
    with _lock:
        _live.pop(container_id, None)


def remove_all_now(reason: str) -> None:
    """Remove every live sandbox of this process, synchronously, on a thread of its own.

    It never raises: what it cannot remove is logged, with how to remove it by hand.
    """
    with _lock:
        leftovers = dict(_live)
        _live.clear()
    if not leftovers:
        return

    async def remove_one(cid: str, entry: _Live) -> None:
        async with docker_client(entry.host) as docker:
            await docker.remove(cid, grace=0)
            await docker.wait_gone(cid, 10.0)  # gone when the process has exited, not in removal

    async def remove_all() -> list[BaseException | None]:
        return await asyncio.gather(*(remove_one(cid, e) for cid, e in leftovers.items()), return_exceptions=True)

    results: list[Any] = []

    def run() -> None:  # a thread of its own: the caller may be inside a running event loop
        try:
            results.extend(asyncio.run(remove_all()))
        except Exception as exc:  # reported below
            results.extend([exc] * len(leftovers))

    thread = threading.Thread(target=run, name="rlmesh-cleanup", daemon=True)
    thread.start()
    thread.join(30)
    for (cid, entry), result in zip(leftovers.items(), results or [None] * len(leftovers), strict=False):
        if isinstance(result, BaseException):
            log.warning("could not remove sandbox %s at %s: %s; remove it with `docker rm -f %s` "
                        "or `rlmesh sandbox cleanup`", cid[:12], reason, result, cid[:12])
        if entry.socket_dir is not None:
            shutil.rmtree(entry.socket_dir, ignore_errors=True)
    log.info("removed %d sandbox(es) at %s", len(leftovers), reason)


# -- signals -------------------------------------------------------------------------
_previous: dict[int, Any] = {}


def install_signal_handlers() -> None:
    """On SIGTERM and SIGHUP remove this process's sandboxes, then do what was done before.

    Only from the main thread (Python's rule); a no-op elsewhere and when already installed.
    A handler the program installs later replaces this one (sandboxes still end with the
    process, by their lease).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if sig in _previous:
            continue
        with contextlib.suppress(ValueError, OSError):
            _previous[sig] = signal.signal(sig, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    remove_all_now(signal.Signals(signum).name)
    previous = _previous.pop(signum, signal.SIG_DFL)
    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action: the exit status a scheduler expects


# -- fork ----------------------------------------------------------------------------
def _after_fork_in_child() -> None:
    global _owner, _lock, _reaped
    _owner = _me()
    _lock = threading.RLock()
    _reaped = False
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for entry in _live.values():
            if entry.fd >= 0:
                # Point the inherited connection at /dev/null rather than closing the number:
                # the parent's end must end the sandbox, and a stale object closing it later
                # must not close something else of the child's.
                with contextlib.suppress(OSError):
                    os.dup2(devnull, entry.fd)
    finally:
        os.close(devnull)
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- dead owners -----------------------------------------------------------------------
REAP_INTERVAL = 30.0  # seconds between two sweeps of one process (each start asks for one)
_reaped = False
_reaped_at = 0.0


async def reap_dead_owners_once(docker: DockerClient) -> None:
    """The sweep a start makes (at most once per :data:`REAP_INTERVAL` per process): remove the
    sandboxes and socket directories whose owner (on this host and PID namespace) died.

    It covers what neither ``AutoRemove`` nor the server's end can: a container created but
    never started (its owner was killed between the two requests) and a socket directory of
    an owner killed before its container started.
    """
    global _reaped, _reaped_at
    now = time.monotonic()
    if _reaped and now - _reaped_at < REAP_INTERVAL:
        return
    _reaped, _reaped_at = True, now
    try:
        removed = await _reap(docker, only_dead=True)
    except SandboxError as exc:  # someone else's leftovers must not stop this start
        log.warning("could not remove sandboxes left by dead processes: %s", exc)
        return
    if removed:
        log.warning("removed %d sandbox container(s) left behind by dead processes", len(removed))


def socket_dir_prefix() -> str:
    """The name prefix of this process's socket directories: ``rlmesh-sbx-PID-TICKS-`` (its
    pid and start time, so a sweep tells a dead owner from a process that reused its pid)."""
    return f"{SOCKET_DIR_PREFIX}{_owner.pid}-{_owner.ticks}-"


def sweep_socket_dirs() -> int:
    """Remove socket directories left by processes of this host that died (SIGKILL); returns how many.

    A start removes its directory once the engine has started the container (the socket is
    mounted then), so what is left is of an owner killed before that moment.
    """
    root = os.environ.get("RLMESH_RUNTIME_DIR") or tempfile.gettempdir()
    swept = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            if not name.startswith(SOCKET_DIR_PREFIX):
                continue
            pid_text, _, rest = name[len(SOCKET_DIR_PREFIX):].partition("-")
            ticks = rest.split("-", 1)[0] if rest.count("-") else "?"  # older names: PID-RANDOM
            if pid_text.isdigit() and not _pid_alive(int(pid_text), ticks if ticks.isdigit() else "?"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                swept += 1
    return swept


async def _reap(docker: DockerClient, *, only_dead: bool) -> list[str]:
    sweep_socket_dirs()
    removed = []
    for info in await docker.list_containers({LABEL: "1"}):
        labels = info.get("Labels") or {}
        if only_dead and owner_alive(labels.get(LABEL_OWNER, "")):
            continue
        await docker.remove(info["Id"], grace=0)
        sock_dir = labels.get(LABEL_SOCKET_DIR)
        if sock_dir and os.path.basename(sock_dir).startswith(SOCKET_DIR_PREFIX):
            shutil.rmtree(sock_dir, ignore_errors=True)
        removed.append(str(info["Id"]))
    return removed


async def list_sandboxes() -> list[dict[str, Any]]:
    """Sandbox containers on this engine: id, state, source, owner, the owner's PID and state."""
    async with docker_client() as docker:
        rows = []
        for info in await docker.list_containers({LABEL: "1"}):
            labels = info.get("Labels") or {}
            label = labels.get(LABEL_OWNER, "")
            parts = label.split(":")
            judged = len(parts) == 5 and parts[0] == _owner.host and parts[1] == _owner.pidns
            rows.append({
                "id": str(info["Id"])[:12], "image": info.get("Image", ""), "state": info.get("State", ""),
                "status": info.get("Status", ""), "source": labels.get(LABEL_SOURCE, ""), "owner": label,
                "owner_state": ("alive" if owner_alive(label) else "dead") if judged else "elsewhere",
                "owner_pid": int(parts[2]) if len(parts) == 5 and parts[2].isdigit() else None,
                "created": info.get("Created", 0),
            })
        return rows


async def cleanup_sandboxes(*, all_owners: bool = False, dry_run: bool = False) -> list[str]:
    """Remove sandboxes whose owner process died (or every sandbox, with ``all_owners``).

    Returns the ids of the containers removed, or, with ``dry_run``, of those that would be
    (nothing is removed then).
    """
    async with docker_client() as docker:
        if dry_run:
            return [str(info["Id"]) for info in await docker.list_containers({LABEL: "1"})
                    if all_owners or not owner_alive((info.get("Labels") or {}).get(LABEL_OWNER, ""))]
        return await _reap(docker, only_dead=not all_owners)
