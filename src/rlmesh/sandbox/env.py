"""AsyncSandboxEnv and AsyncSandboxVectorEnv: an env in a container rlmesh owns.

A sandbox resolves its image (building it when needed), starts a container
whose server listens on a Unix socket in a private host directory, then
connects the async remote-env core to it. ``close()`` stops and removes the
container and the directory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..client.env import AsyncRemoteEnv, AsyncRemoteVectorEnv, _AsyncRemoteBase
from ..errors import EnvClosedError, InvalidArgumentError
from ..server.loader import VECTORIZATION_MODES, parse_autoreset_mode
from ._docker import docker_client
from .container import ContainerOptions, Sandbox
from .image import ImageSpec, ensure_image

__all__ = ["AsyncSandboxEnv", "AsyncSandboxVectorEnv"]

log = logging.getLogger("rlmesh.sandbox")


class _SandboxMixin(_AsyncRemoteBase):
    """Image, container and connection lifecycle shared by both sandbox kinds."""

    def __init__(
        self,
        source: str,
        *,
        packages: Sequence[str] = (),
        imports: Sequence[str] = (),
        base_image: str | None = None,
        rebuild: bool = False,
        network: bool = False,
        memory: int | str | None = None,
        cpus: float | None = None,
        pids_limit: int | None = None,
        environment: Mapping[str, str] | None = None,
        connect_timeout: float | None = 60.0,
        request_timeout: float | None = None,
        num_envs: int | None = None,
        vectorization_mode: str = "sync",
        autoreset_mode: str = "next_step",
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(None, connect_timeout=connect_timeout, request_timeout=request_timeout)
        if not isinstance(source, str) or not source:
            raise InvalidArgumentError(f"source must be a non-empty string, got {source!r}")
        if vectorization_mode not in VECTORIZATION_MODES:
            raise InvalidArgumentError(
                f"vectorization_mode must be one of {VECTORIZATION_MODES}, got {vectorization_mode!r}"
            )
        for name, seq in (("packages", packages), ("imports", imports)):
            if isinstance(seq, (str, bytes)):
                raise InvalidArgumentError(f"{name} must be a list of strings, e.g. {name}=[{seq!r}]")
        self.source = source
        self.image_spec = ImageSpec(packages=tuple(packages), imports=tuple(imports))
        self.base_image = base_image
        self.rebuild = rebuild
        self.options = ContainerOptions(
            network=network, memory=memory, cpus=cpus, pids_limit=pids_limit,
            environment=dict(environment or {}),
        )
        self.env_kwargs = dict(env_kwargs or {})
        try:
            kwargs_json = orjson.dumps(self.env_kwargs).decode()
        except TypeError as exc:
            raise InvalidArgumentError(
                f"env kwargs must be JSON-serialisable to reach the sandbox: {exc}"
            ) from exc
        command = [source, "--kwargs-json", kwargs_json]
        if num_envs is not None:
            command += [
                "--num-envs", str(num_envs), "--vectorization-mode", vectorization_mode,
                "--autoreset-mode", parse_autoreset_mode(autoreset_mode).name.lower(),
            ]
        for module in self.image_spec.imports:
            command += ["--import", module]
        self._command = command
        self.image: str | None = None
        self._sandbox: Sandbox | None = None
        self._start_task: asyncio.Task[Any] | None = None

    @property
    def container_id(self) -> str | None:
        """The running container's id, or None."""
        return self._sandbox.container_id if self._sandbox is not None else None

    async def start(self) -> Any:
        """Build or reuse the image, start the container and connect; returns ``self``.

        Raises:
            DockerUnavailableError: No Docker engine is reachable.
            BaseImageError: No base image; the message names ``rlmesh image bootstrap``.
            ImageBuildError: The image build failed (with the failing step's output).
            SandboxStartError: The container exited before it was ready (exit code, logs).
            RLMeshTimeoutError: It was not ready within ``connect_timeout``.
        """
        if self._closed:
            raise EnvClosedError("this sandbox was closed; create a new one")
        if self._conn is not None:
            return self
        self._start_task = asyncio.current_task()
        try:
            async with docker_client() as docker:
                self.image = await ensure_image(
                    docker, self.image_spec, base_image=self.base_image, rebuild=self.rebuild
                )
                self._sandbox = Sandbox(self.image, self._command, self.options, self.source)
                self.address = await self._sandbox.start(self.connect_timeout)
            await self.connect()
        except BaseException:
            await asyncio.shield(self._teardown())
            raise
        finally:
            self._start_task = None
        return self

    async def _teardown(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            await sandbox.close()

    async def connect(self) -> Any:
        """Connect to the started sandbox (``start()`` calls this)."""
        if self.address is None:
            return await self.start()
        return await super().connect()

    async def close(self) -> None:
        """Close the connection, stop and remove the container and its socket dir. Idempotent."""
        task = self._start_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()  # an interrupted start cleans up after itself
            await asyncio.gather(task, return_exceptions=True)
        try:
            await super().close()
        finally:
            await asyncio.shield(self._teardown())

    async def __aenter__(self) -> Any:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise


class AsyncSandboxEnv(_SandboxMixin, AsyncRemoteEnv):
    """A single env in a Docker container that rlmesh builds, starts, owns and removes.

    Example::

        async with AsyncSandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:
            obs, info = await env.reset(seed=0)

    Args:
        source: A Gymnasium id (``CartPole-v1``, ``module:Env-v0``) or ``module:factory``.
        packages: pip requirements, local wheels or project dirs installed in the image.
        imports: Modules checked at build time and again at start.
        base_image: The base image (default ``python:X.Y-slim``, or ``RLMESH_BASE_IMAGE``).
        rebuild: Build the image even if it exists.
        network: Give the container a network (off by default).
        memory: Memory limit (bytes or ``"2g"``).
        cpus: CPU limit.
        pids_limit: Process limit.
        environment: Extra environment variables for the container.
        connect_timeout: Seconds allowed from container start to a connected env.
        request_timeout: Seconds allowed for each reply; None waits forever.
        **env_kwargs: Passed to the env's constructor (must be JSON-serialisable).
    """

    def __init__(self, source: str, *, packages: Sequence[str] = (), imports: Sequence[str] = (),
                 base_image: str | None = None, rebuild: bool = False, network: bool = False,
                 memory: int | str | None = None, cpus: float | None = None, pids_limit: int | None = None,
                 environment: Mapping[str, str] | None = None, connect_timeout: float | None = 60.0,
                 request_timeout: float | None = None, **env_kwargs: Any) -> None:
        super().__init__(
            source, packages=packages, imports=imports, base_image=base_image, rebuild=rebuild,
            network=network, memory=memory, cpus=cpus, pids_limit=pids_limit, environment=environment,
            connect_timeout=connect_timeout, request_timeout=request_timeout, env_kwargs=env_kwargs,
        )


class AsyncSandboxVectorEnv(_SandboxMixin, AsyncRemoteVectorEnv):
    """A vector env (``num_envs`` lanes) in a Docker container that rlmesh owns.

    Example::

        async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=8) as envs:
            obs, info = await envs.reset(seed=0)
            obs, rewards, terminations, truncations, infos = await envs.step(envs.action_space.sample())

    Args:
        source: A Gymnasium id or ``module:factory``.
        num_envs: Number of lanes.
        vectorization_mode: ``sync``, ``async`` or ``vector``, as in ``gymnasium.make_vec``.
        autoreset_mode: ``next_step`` (default), ``same_step`` or ``disabled``.
        packages, imports, base_image, rebuild, network, memory, cpus, pids_limit,
        environment, connect_timeout, request_timeout: As for :class:`AsyncSandboxEnv`.
        **env_kwargs: Passed to each env's constructor (must be JSON-serialisable).
    """

    def __init__(self, source: str, num_envs: int = 1, *, vectorization_mode: str = "sync",
                 autoreset_mode: str = "next_step", packages: Sequence[str] = (),
                 imports: Sequence[str] = (), base_image: str | None = None, rebuild: bool = False,
                 network: bool = False, memory: int | str | None = None, cpus: float | None = None,
                 pids_limit: int | None = None, environment: Mapping[str, str] | None = None,
                 connect_timeout: float | None = 60.0, request_timeout: float | None = None,
                 **env_kwargs: Any) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise InvalidArgumentError(f"num_envs must be a positive int, got {num_envs!r}")
        super().__init__(
            source, packages=packages, imports=imports, base_image=base_image, rebuild=rebuild,
            network=network, memory=memory, cpus=cpus, pids_limit=pids_limit, environment=environment,
            connect_timeout=connect_timeout, request_timeout=request_timeout, num_envs=num_envs,
            vectorization_mode=vectorization_mode, autoreset_mode=autoreset_mode, env_kwargs=env_kwargs,
        )
