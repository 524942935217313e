"""``list_tasks``: every env of an EnvHub repository, as sources a sandbox takes.

The repository's ``make_env`` runs in a sandbox, never on the host: the image is the one a
start would build, and a one-shot container (the same confinement, labels and ownership as a
sandbox, and no socket) prints the envs and exits.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import anyio
import orjson

from .. import _portal
from ..errors import RLMeshTimeoutError, SandboxStartError, SourceError
from ..server.envhub_selector import parse_selector
from ..server.envhub_tasks import END_LINE, TASK_LINE
from . import ownership
from ._docker import acquire_docker, docker_client
from .container import Sandbox
from .env import AsyncSandboxEnv
from .output_tail import OutputTail, last_lines
from .ownership import install_signal_handlers
from .sources import HubSource, fetch_hub_repo
from .vector import AsyncSandboxVectorEnv

__all__ = ["list_tasks", "list_tasks_async"]

MAX_TASKS = 10_000  # the lines kept from the listing container (each cut to 2000 characters)


async def list_tasks_async(source: str, **sandbox_options: Any) -> list[str]:
    """Every env of an ``hf://`` repository, each as a source a sandbox takes as it is.

    For ``hf://owner/repo[@rev][:ENTRY.py]`` (no suite or task), the repository's ``make_env`` is
    called in a sandbox and every ``suite/task`` it returns is listed, pinned to the commit that
    was fetched: ``["hf://owner/repo@<sha>:suite_1/0", "hf://owner/repo@<sha>:suite_1/1", ...]``
    (with the entry file, when one was named). A suite without a task lists that suite's tasks.
    A source that already names one env (any other source, or an ``hf://`` one with suite and
    task) is returned as it is, ``[source]``, and nothing is started. The only env of a
    repository, named so that no selector can hold it (a bare env whose spec id has a namespace,
    ``ALE/Pong-v5``), is listed without a selector, which picks it.

    Args:
        source: The source, as a sandbox takes it.
        **sandbox_options: The options a sandbox takes (``trust_remote_code``, ``packages``,
            ``cfg=`` and other ``make_env`` kwargs, ``num_envs`` ...); they are checked as a
            sandbox checks them, and ``make_env`` is called with them.

    Returns:
        One source per env, in ``make_env``'s order.

    Raises:
        SourceError: A malformed or ungated source, or a suite or task name a selector cannot hold.
        SandboxStartError: ``make_env`` failed in the sandbox (exit code and log tail).
        RLMeshTimeoutError: The listing took longer than ``connect_timeout``.
    """
    vector = "num_envs" in sandbox_options
    cls = AsyncSandboxVectorEnv if vector else AsyncSandboxEnv
    probe: Any = cls(source, **sandbox_options)  # every option checked, as for a start
    hub = probe.parsed_source
    if not isinstance(hub, HubSource) or (hub.suite is not None and hub.task is not None):
        return [source]
    _, commit = await fetch_hub_repo(hub)
    pinned: Any = cls(hub.with_commit(commit, hub.suite, hub.task), **sandbox_options)
    async with docker_client(pinned.engine.host) as docker:
        image, command = await pinned._prepare(docker)
    serve = ["python", "-m", "rlmesh.serve"]
    assert command[:3] == serve, command
    listing = _Listing(image, ["python", "-m", "rlmesh.server.envhub_tasks", *command[3:]], pinned.options,
                       pinned.source, pinned.max_frame_size, pinned.engine, pinned.lease)
    code, lines = await listing.run_to_exit(pinned.connect_timeout)
    names = _read_listing(pinned.source, code, lines, listing)
    out = []
    for name in names:
        suite, _, task = name.partition("/")
        try:
            parse_selector(name)
        except SourceError as exc:
            if len(names) == 1 and hub.suite is None:  # no selector picks the only env
                return [hub.with_commit(commit)]
            raise SourceError(
                f"{pinned.source} has an env named {name!r}, which no selector can name ({exc}); "
                "rename the suite or task in the repository"
            ) from None
        out.append(hub.with_commit(commit, suite, task or None))
    return out


def list_tasks(source: str, **sandbox_options: Any) -> list[str]:
    """The blocking form of :func:`list_tasks_async` (same arguments, result and errors).

    Example::

        for task in rlmesh.list_tasks("hf://owner/repo@<sha>", trust_remote_code=True):
            with SandboxEnv(task, trust_remote_code=True) as env:
                ...
    """
    install_signal_handlers()
    return _portal.call(functools.partial(list_tasks_async, source, **sandbox_options))


def _read_listing(source: str, code: int | None, lines: list[str], listing: _Listing) -> list[str]:
    tail = last_lines(lines)
    if code != 0:
        cause = next((line.removeprefix("rlmesh: ") for line in reversed(lines) if line.startswith("rlmesh: ")),
                     "make_env failed")
        raise SandboxStartError(f"listing the envs of {source} failed: {cause}", container_id=listing.last_id,
                                exit_code=code, logs=tail)
    names: list[str] = []
    count = None
    for line in lines:
        if line.startswith(TASK_LINE):
            name = orjson.loads(line[len(TASK_LINE):])
            if isinstance(name, str):
                names.append(name)
        elif line.startswith(END_LINE):
            count = int(line[len(END_LINE):])
    if count is None or count != len(names):
        raise SandboxStartError(
            f"listing the envs of {source} gave an incomplete list ({len(names)} of {count}; at most "
            f"{MAX_TASKS} are read, and the repository's own output must not crowd them out)",
            container_id=listing.last_id, exit_code=code, logs=tail,
        )
    return names


class _Listing(Sandbox):
    """A sandbox container that runs one command to its exit (no socket, no server)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._output = OutputTail(MAX_TASKS)  # the listing: every line it may print is kept
        self.last_id: str | None = None

    async def run_to_exit(self, timeout: float | None) -> tuple[int | None, list[str]]:
        """Start the container, wait for its exit, and return ``(exit code, output lines)``.

        Raises:
            RLMeshTimeoutError: It did not exit within ``timeout`` seconds (it is removed).
        """
        self._docker = docker = await acquire_docker(self.engine.host)
        try:
            await ownership.reap_dead_owners_once(docker)
            # No socket: the command ignores --address and prints its result.
            self.last_id = await self._run(docker, await self._config(docker, socket_path=""))
            assert self._exit is not None
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._exit)
            except TimeoutError:
                raise RLMeshTimeoutError(
                    f"listing the envs of {self.source} took longer than connect_timeout={timeout}s: "
                    "raise connect_timeout, or look for a make_env that hangs"
                ) from None
            await self._drain_output()
            return self._exit_code(), self._output.lines()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()
