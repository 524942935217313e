"""AsyncSandboxEnv and SandboxShard: an env, or a vector env's lanes, in a container rlmesh owns.

A sandbox resolves its image (building it when needed), starts a container
whose server listens on a Unix socket in a private host directory, then
connects the async remote-env core to it. ``close()`` stops and removes the
container and the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import functools
import inspect
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from .._checks import check_num_envs
from ..client.env import AsyncRemoteEnv, _AsyncRemoteBase
from ..client.options import ClientOptions
from ..client.remote_shard import RemoteShard
from ..errors import EnvClosedError, InvalidArgumentError, SandboxError, SandboxExitedError, TransportError
from ..protocol import DEFAULT_MAX_FRAME_SIZE, parse_autoreset_mode, parse_vectorization_mode
from ._docker import DockerClient, docker_client
from .container import Sandbox
from .engine import Engine
from .image import ImageSpec, ensure_image, remove_replaced_image, try_pull
from .library_hints import add_sandbox_notes, sandbox_note_context
from .options import (
    BUILD_OPTIONS,
    CLIENT_OPTIONS,
    OPTION_NAMES,
    SandboxOptions,
    check_system_packages,
    option_default,
    option_fields,
    options_doc,
    wrappers_wire_form,
)
from .ownership import install_signal_handlers
from .sources import HubSource, ImageSource, Source, fetch_hub_repo, parse_source, resolve_source

__all__ = ["AsyncSandboxEnv", "SandboxArguments", "SandboxShard", "check_single_env_options"]

log = logging.getLogger("rlmesh.sandbox")


# Options that belong to a class or a kind of source; passed elsewhere they are errors,
# never silently forwarded to the env's constructor.
_VECTOR_ONLY = ("num_envs", "vectorization_mode", "autoreset_mode")
_ELSEWHERE = {
    "address": "address belongs to RemoteEnv / RemoteVectorEnv; a sandbox serves on its own socket",
    "environment": "the container's environment variables are passed as env={...}",
    "kwargs": "env kwargs are passed as keyword arguments directly, e.g. SandboxEnv(id, render_mode='rgb_array')",
}
ENVHUB_DIR = "/opt/rlmesh/envhub"
# What a keyword close to one of these names is taken for: a typo (an env kwarg that looks like
# an option goes through env_kwargs=).
_OPTION_NAMES = (*OPTION_NAMES, "env_kwargs", *_VECTOR_ONLY)


def check_single_env_options(called: str, source: Any, kwargs: Mapping[str, Any]) -> None:
    """Refuse vector options (``num_envs=`` ...) given to the single-env class ``called``.

    ``called`` is the class the user called (``SandboxEnv`` or ``AsyncSandboxEnv``); the error
    names its vector counterpart.

    Raises:
        InvalidArgumentError: A vector option was given.
    """
    for key in kwargs:
        if key in _VECTOR_ONLY:
            vector = called.replace("Env", "VectorEnv") if called.endswith("SandboxEnv") else "SandboxVectorEnv"
            lanes = kwargs.get("num_envs", 4)
            raise InvalidArgumentError(
                f"{called} runs a single env and takes no {key}=: for a vector env use {vector}, "
                f"e.g. {vector}({source!r}, num_envs={lanes!r})"
            )


def given_build_options(options: SandboxOptions) -> list[str]:
    """The options that apply only to images rlmesh builds (:data:`BUILD_OPTIONS`) that ``options``
    sets to other than their defaults."""
    return [name for name in BUILD_OPTIONS if getattr(options, name) != option_default(name)]


def check_build_options(options: SandboxOptions, source: Source) -> None:
    """Refuse build options for a prebuilt image, which is run as it is.

    Raises:
        InvalidArgumentError: A build option given with an image source.
    """
    if not isinstance(source, ImageSource):
        return
    given = given_build_options(options)
    if given:
        raise InvalidArgumentError(
            f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to images rlmesh builds; "
            f"the prebuilt image {source.ref!r} is run as it is. Bake dependencies into that image instead."
        )


@dataclasses.dataclass(frozen=True)
class SandboxArguments:
    """A sandbox's arguments, checked: its options (every check of :class:`SandboxOptions`), its
    source and its env kwargs (every keyword that is not an option).

    Attributes:
        options: The options.
        parsed_source: The source, parsed (nothing fetched yet).
        env_kwargs: The env kwargs (those given as keywords, and ``env_kwargs=``).
        kwargs_json: The env kwargs as JSON, as they reach the sandbox.
    """

    options: SandboxOptions
    parsed_source: Source
    env_kwargs: dict[str, Any]
    kwargs_json: str

    @classmethod
    def check(cls, called: str, source: str, kwargs: Mapping[str, Any], *, vector: bool) -> SandboxArguments:
        """Split and check the keywords given to the class ``called`` for ``source``.

        Raises:
            InvalidArgumentError: A bad option (typos named), a vector option given to a
                single env, an option that belongs elsewhere, or env kwargs JSON cannot carry.
            SourceError: A malformed source, or an ``hf://`` source not allowed by the options.
        """
        kwargs = dict(kwargs)
        env_kwargs_extra = kwargs.pop("env_kwargs", None)
        given = {name: kwargs.pop(name) for name in OPTION_NAMES if name in kwargs}
        if "env" in given and given["env"] is None:  # env=None: no extra variables
            del given["env"]
        if not vector:
            check_single_env_options(called, source, kwargs)
        for key in kwargs:
            if key in _ELSEWHERE:
                raise InvalidArgumentError(f"{key}= is not an env kwarg: {_ELSEWHERE[key]}")
            close = difflib.get_close_matches(key, _OPTION_NAMES, n=1, cutoff=0.8)
            if close:
                raise InvalidArgumentError(
                    f"{key}= is not an rlmesh option: did you mean {close[0]}=? (An env kwarg that happens "
                    f"to look like one goes through env_kwargs={{{key!r}: ...}}.)"
                )
        env_kwargs = kwargs
        if env_kwargs_extra is not None:
            if not isinstance(env_kwargs_extra, Mapping) or not all(isinstance(k, str) for k in env_kwargs_extra):
                raise InvalidArgumentError(f"env_kwargs must map names to values, got {env_kwargs_extra!r}")
            env_kwargs = {**env_kwargs, **env_kwargs_extra}
        options = SandboxOptions(**given)  # every option's check
        ClientOptions(**{name: getattr(options, name) for name in CLIENT_OPTIONS})  # the client's
        parsed = parse_source(source, trust_remote_code=options.trust_remote_code,
                              allow_unpinned_hf=options.allow_unpinned_hf)
        try:
            kwargs_json = orjson.dumps(env_kwargs).decode()
        except TypeError as exc:
            raise InvalidArgumentError(f"env kwargs must be JSON-serialisable to reach the sandbox: {exc}") from exc
        arguments = cls(options, parsed, env_kwargs, kwargs_json)
        arguments.engine()  # the engine's options
        check_build_options(options, parsed)
        return arguments

    def engine(self) -> Engine:
        """The engine the options name (checked)."""
        return Engine.choose(self.options.docker_host, self.options.transport)


class _AsyncSandboxBase(_AsyncRemoteBase):
    """Source, image, container and connection lifecycle shared by both sandbox kinds."""

    _entry_point = "rlmesh:SandboxEnv"
    __signature__: ClassVar[inspect.Signature]  # every option, from SandboxOptions (set below)

    _num_envs: int | None = None
    _vectorization_mode = "sync"
    _autoreset_mode = "next_step"

    def __init__(self, source: str, *, env_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        arguments = SandboxArguments.check(type(self).__name__, source, {**kwargs, "env_kwargs": env_kwargs},
                                           vector=self._vector)
        options = arguments.options
        super().__init__(None, **{name: getattr(options, name) for name in CLIENT_OPTIONS})
        self.options: SandboxOptions = options
        # What gym.make(env.spec) needs to make an equivalent sandbox: options that differ
        # from their defaults, and the env kwargs.
        self._spec_options = options.spec_kwargs()
        self.parsed_source: Source = arguments.parsed_source
        self.source = source
        self.image_spec = ImageSpec(packages=tuple(options.packages), imports=tuple(options.imports), source=source,
                                    system_packages=check_system_packages(options.system_packages), gl=options.gl,
                                    ignore_libraries=tuple(options.ignore_libraries))
        self.base_image = options.base_image
        self.rebuild = options.rebuild
        self.lease = float(options.lease)
        self.engine = arguments.engine()
        self.relay_address_host: str | None = None
        self.wrappers = wrappers_wire_form(options.wrappers)
        self.progress = options.progress
        self.env_kwargs = arguments.env_kwargs
        self._kwargs_json = arguments.kwargs_json
        self.image: str | None = None
        self.image_id: str | None = None  # the image's id (its digest), once started
        self._sandbox: Sandbox | None = None
        self._start_task: asyncio.Task[Any] | None = None
        self._replaced_image: str | None = None
        self._removal: asyncio.Task[None] | None = None

    def _spec_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"source": self.source, **self._spec_options}
        if self.env_kwargs:
            kwargs["env_kwargs"] = dict(self.env_kwargs)
        if self._num_envs is not None:
            if self._vectorization_mode != "sync":
                kwargs["vectorization_mode"] = self._vectorization_mode
            if self._autoreset_mode != "next_step":
                kwargs["autoreset_mode"] = self._autoreset_mode
        return kwargs

    @property
    def container_id(self) -> str | None:
        """The running container's id, or None."""
        return self._sandbox.container_id if self._sandbox is not None else None

    @property
    def container_logs(self) -> str:
        """The last lines the container printed (up to 100), while it runs and after: what a hung
        env said before it hung, say. Empty before the start."""
        return self._sandbox.logs if self._sandbox is not None else ""

    async def explain(self, exc: TransportError) -> Exception:
        # A lost connection usually means the container died: say how.
        sandbox = self._sandbox
        if sandbox is None or sandbox.container_id is None:
            return exc
        code, killer = await sandbox.exit_status()
        if code is None and killer is None:
            return exc
        limit = f"{sandbox.memory / (1 << 20):.0f} MiB" if sandbox.memory else "its limit"
        why = {
            "memory": f" (killed for lack of memory at {limit}: raise memory=)",
            "engine": " (killed through the Docker engine: a `docker kill`, `stop` or `rm -f` from outside rlmesh)",
            "stopped": " because its Docker engine stopped, and its containers with it: start the engine again "
                       "(`systemctl start docker`, or `dockerd`), then make the env again",
        }.get(killer or "", " (SIGKILL from outside the engine, or by the kernel)" if code == 137 else "")
        return SandboxExitedError(
            f"the sandbox container for {self.source} exited while serving{why}",
            container_id=sandbox.container_id, exit_code=code, logs=sandbox.logs, oom_killed=killer == "memory",
            killed_by=killer,
        )

    def _serve_args(self) -> list[str]:
        args = ["--kwargs-json", self._kwargs_json, "--lease", f"{self.lease:g}"]
        if self.wrappers:
            args += ["--wrappers-json", orjson.dumps(self.wrappers).decode()]
        if self.max_frame_size != DEFAULT_MAX_FRAME_SIZE:
            args += ["--max-frame-size", str(self.max_frame_size)]
        if self._num_envs is not None:
            args += [
                "--num-envs", str(self._num_envs), "--vectorization-mode", self._vectorization_mode,
                "--autoreset-mode", parse_autoreset_mode(self._autoreset_mode).name.lower(),
            ]
        for module in self.image_spec.imports:
            args += ["--import", module]
        return args

    async def _prepare(self, docker: DockerClient) -> tuple[str, list[str]]:
        """Resolve the source and the image; returns ``(image, container command)``."""
        build_options = bool(given_build_options(self.options))
        source = await resolve_source(docker, self.parsed_source, build_options=build_options)
        serve = ["python", "-m", "rlmesh.serve"]
        if isinstance(source, ImageSource):
            check_build_options(self.options, source)  # a source resolved to a prebuilt image
            self.image_id = await docker.image_id(source.ref)
            if self.image_id is None:
                error = await try_pull(docker, source.ref)
                if error is not None:
                    raise SandboxError(f"image {source.ref} is not available locally and cannot be pulled ({error})")
                self.image_id = await docker.image_id(source.ref)
            return source.ref, self._serve_args()  # appended to the image's ENTRYPOINT
        spec = self.image_spec
        if isinstance(source, HubSource):
            directory, commit = await fetch_hub_repo(source)
            target = f"{ENVHUB_DIR}/{source.repo_id.replace('/', '--')}"
            requirements = directory / "requirements.txt"
            spec = dataclasses.replace(
                spec, files={target: str(directory)},
                requirement_files=(str(requirements),) if requirements.is_file() else (),
            )
            command = [*serve, f"envhub:{target}", *self._serve_args(),
                       "--hub-source", f"hf://{source.repo_id}@{commit}" + (f":{source.entry}" if source.entry else "")]
            if source.selector:
                command += ["--selector", source.selector]
        else:
            command = [*serve, source.target, *self._serve_args()]
        image, self.image_id, self._replaced_image = await ensure_image(
            docker, spec, base_image=self.base_image, rebuild=self.rebuild, progress=self.progress)
        return image, command

    async def start(self) -> Any:
        """Build or reuse the image, start the container and connect; returns ``self``.

        Raises:
            DockerUnavailableError: No Docker engine is reachable.
            BaseImageError: No base image; the message names ``rlmesh image bootstrap``.
            ImageBuildError: The image build failed (with the failing step's output).
            SourceError: An hf:// repository cannot be fetched, or a source is malformed.
            SandboxStartError: The container exited before it was ready (exit code, logs).
            RLMeshTimeoutError: It was not ready within ``connect_timeout``.
        """
        if self._closed:
            raise EnvClosedError("this sandbox was closed; create a new one")
        if self._conn is not None:
            return self
        install_signal_handlers()
        self._start_task = asyncio.current_task()
        try:
            if self.relay_address_host is not None:  # placed by Ray: reached at the node's address
                self.engine = dataclasses.replace(self.engine, address_host=self.relay_address_host, published=True)
            async with docker_client(self.engine.host) as docker:
                self.image, command = await self._prepare(docker)
                self._sandbox = Sandbox(self.image, command, self.options, self.source, self.max_frame_size,
                                        self.engine, self.lease, self.data_plane, self.max_region_size)
                conn = await self._sandbox.start(self.connect_timeout)
            self.address = conn.address
            conn.on_env_error = functools.partial(add_sandbox_notes, **sandbox_note_context(self.options))
            self._adopt(conn)
        except BaseException:
            await asyncio.shield(self._teardown())
            raise
        finally:
            self._start_task = None
            self._remove_replaced_image()
        return self

    def _remove_replaced_image(self) -> None:
        # The image a rebuild replaced goes once the start is over (whether or not it
        # succeeded), in the background; close() awaits it, and its failures are logged there.
        replaced, self._replaced_image = self._replaced_image, None
        if replaced is not None:
            self._removal = asyncio.ensure_future(remove_replaced_image(self.engine.host, replaced))
            self._removal.add_done_callback(_log_removal_failure)

    async def detach(self) -> tuple[str, str]:
        """Close this client's connection but leave the sandbox running, for another client.

        Only for sandboxes reached through a relay (``transport="tcp"``); the sandbox then ends
        by :meth:`close` or by its lease.

        Returns:
            ``(address, token)`` to connect with.
        """
        sandbox = self._sandbox
        if sandbox is None or sandbox.address is None or sandbox.token is None:
            raise InvalidArgumentError("only a started sandbox reached through a relay (transport='tcp') can detach")
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()
        return sandbox.address, sandbox.token

    async def _teardown(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            await sandbox.close()

    async def connect(self) -> Any:
        """Start the sandbox (the same as :meth:`start`); returns ``self``."""
        return await self.start()

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
            removal, self._removal = self._removal, None
            if removal is not None:
                with contextlib.suppress(Exception):  # logged by _log_removal_failure
                    await asyncio.shield(removal)


def _log_removal_failure(task: asyncio.Task[None]) -> None:
    # Retrieves the removal's outcome, so that no failure goes unseen or unretrieved.
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not remove the image replaced by a rebuild: %r", task.exception())


OPTION_DOCS = f"""
    Args:
        source: A Gymnasium id (``CartPole-v1``, ``module:Env-v0``, ``gym://id``), a
            ``module:factory``, ``hf://owner/repo[@rev][:suite[/task]]``, or a prebuilt image
            (``docker://image:tag``, ``image://...``, bare ``name:tag``).
{options_doc()}
        env_kwargs: Env kwargs given as a mapping, for one whose name looks like an rlmesh option
            (a keyword close to an option's name, ``package=`` say, is an error naming the option).
        **kwargs: Passed to the env's constructor (must be JSON-serialisable).
"""


class AsyncSandboxEnv(_AsyncSandboxBase, AsyncRemoteEnv):
    """A single env in a Docker container that rlmesh builds, starts, owns and removes.

    ``env.spec`` makes an equivalent sandbox: ``gym.make(env.spec)`` works, and so does
    ``gym.register("My-v0", entry_point="rlmesh:SandboxEnv", kwargs={"source": ...})``.

    Example::

        async with AsyncSandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:
            obs, info = await env.reset(seed=0)
    """


class SandboxShard(_AsyncSandboxBase, RemoteShard):
    """A vector env's lanes (``num_envs``) in one container: a shard of
    :class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv`, which is made of one or more.

    Takes the arguments of :class:`~rlmesh.sandbox.vector.AsyncSandboxVectorEnv` but ``shards``
    and ``placement``.
    """

    _entry_point = "rlmesh:SandboxEnv"
    _vector_entry_point = "rlmesh:SandboxVectorEnv"

    def __init__(self, source: str, num_envs: int = 1, *, vectorization_mode: str = "sync",
                 autoreset_mode: str = "next_step", **kwargs: Any) -> None:
        check_num_envs(num_envs)
        vectorization_mode = parse_vectorization_mode(vectorization_mode)
        parse_autoreset_mode(autoreset_mode)
        self._num_envs = num_envs
        self._vectorization_mode = vectorization_mode
        self._autoreset_mode = autoreset_mode
        super().__init__(source, **kwargs)


def options_signature(*leading: inspect.Parameter) -> inspect.Signature:
    """The signature of a sandbox class: ``leading`` parameters, then every option of
    :class:`~rlmesh.sandbox.options.SandboxOptions` with its default, ``env_kwargs`` and the env kwargs."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    options = [inspect.Parameter(f.name, keyword, default=option_default(f.name), annotation=f.type)
               for f in option_fields()]
    return inspect.Signature([
        inspect.Parameter("source", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str"), *leading, *options,
        inspect.Parameter("env_kwargs", keyword, default=None, annotation="Mapping[str, Any] | None"),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD, annotation="Any"),
    ])


AsyncSandboxEnv.__doc__ = (AsyncSandboxEnv.__doc__ or "") + OPTION_DOCS
# help() and inspect.signature() show every option, though __init__ takes them as **kwargs.
AsyncSandboxEnv.__signature__ = options_signature()
