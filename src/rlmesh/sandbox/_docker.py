"""The Docker boundary: the only module that imports aiodocker.

Every engine call goes through :class:`DockerClient`, which translates aiodocker
and aiohttp exceptions into rlmesh's at one place (:func:`_map_errors`). There
is one client per event loop, shared by every sandbox on that loop and closed
on that loop when the last user releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import warnings
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import IO, Any, TypeVar

import aiodocker
import aiohttp
import anyio
from aiodocker.jsonstream import json_stream_stream
from aiodocker.multiplexed import multiplexed_result_stream

from ..errors import DockerUnavailableError, ImageBuildError, SandboxError
from .output_tail import OutputTail

__all__ = ["DockerClient", "acquire_docker", "docker_client", "not_found", "release_docker"]

T = TypeVar("T")

_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
_HOW_TO_START = (
    "Start a Docker engine (on Debian: `apt-get install -y docker.io && dockerd &`, "
    "or `systemctl start docker`), or point DOCKER_HOST at a running one."
)


@contextlib.contextmanager
def _map_errors(what: str) -> Iterator[None]:
    try:
        yield
    except aiodocker.DockerError as exc:
        if exc.status == 900:  # aiodocker's code for "cannot connect to the engine"
            raise DockerUnavailableError(
                f"no Docker engine is reachable (while trying to {what}): {exc.message}. {_HOW_TO_START}"
            ) from exc
        raise SandboxError(f"Docker failed to {what}: {exc.message} (HTTP {exc.status})") from exc
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
        host = os.environ.get("DOCKER_HOST") or "the default socket"
        raise DockerUnavailableError(
            f"no Docker engine is reachable at {host} (while trying to {what}): {exc}. {_HOW_TO_START}"
        ) from exc
    except ValueError as exc:  # aiodocker raises it when no socket can be found at all
        if "docker" in str(exc).lower() or "DOCKER_HOST" in str(exc):
            raise DockerUnavailableError(f"no Docker engine found: {exc}. {_HOW_TO_START}") from exc
        raise


def not_found(exc: BaseException) -> bool:
    """Whether an error from :class:`DockerClient` is the engine's "no such container or image" (HTTP 404)."""
    cause = exc.__cause__
    return isinstance(cause, aiodocker.DockerError) and cause.status == 404


async def _complete(aw: Awaitable[T]) -> T:
    """Run a short engine request to its end even when the caller is cancelled.

    aiodocker never releases the HTTP response of a request cancelled in flight (its
    ``_query`` leaves that to the caller), which leaks a connection; a request of a few
    milliseconds is allowed to finish, then the cancellation goes on.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _finish(task)
        raise


async def _finish(task: asyncio.Future[Any]) -> None:
    # Wait for ``task`` however often this waiter is cancelled (anyio re-delivers cancellation).
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


class DockerClient:
    """A thin, typed facade over one ``aiodocker.Docker`` bound to one loop."""

    def __init__(self, host: str | None = None) -> None:
        with _map_errors("connect"):
            self._docker = aiodocker.Docker(url=host)
        # Each sandbox holds two requests for its whole life (its exit watcher and its output):
        # with aiohttp's default pool of 100 connections, every further request (a 51st start,
        # a removal) waited forever once 50 sandboxes shared this client. The engine is ours to
        # load; its connections are not a resource to ration here.
        connector = self._docker.session.connector
        if connector is not None and isinstance(getattr(connector, "_limit", None), int):
            connector._limit = 0  # aiohttp's "no limit" (BaseConnector(limit=0))
        self.host = host
        self.users = 0
        self._info: dict[str, Any] | None = None

    async def close(self) -> None:
        """Close the underlying HTTP session."""
        await self._docker.close()

    # -- images -------------------------------------------------------------
    async def image_id(self, tag: str) -> str | None:
        """The id of a local image, or None when it does not exist."""
        try:
            with _map_errors(f"inspect image {tag}"):
                info = await _complete(self._docker.images.inspect(tag))
        except SandboxError as exc:
            if isinstance(exc.__cause__, aiodocker.DockerError) and exc.__cause__.status == 404:
                return None
            raise
        return str(info["Id"])

    async def pull(self, ref: str, timeout: float) -> None:
        """Pull an image.

        Raises:
            SandboxError: The pull failed or took longer than ``timeout`` seconds.
        """
        with anyio.fail_after(timeout), _map_errors(f"pull {ref}"):
            async for event in self._docker.images.pull(ref, stream=True):
                if "error" in event:
                    raise SandboxError(f"pulling {ref} failed: {event['error']}")

    async def build(
        self,
        context: IO[bytes],
        tag: str,
        *,
        labels: Mapping[str, str],
        on_output: Callable[[str], None],
    ) -> None:
        """Build an image from a tar context (no pull: the base must exist locally).

        Build failures arrive inside the 200 OK stream; they are raised with the
        failing step's output.

        Raises:
            ImageBuildError: The build failed.
        """
        tail = OutputTail()
        with _map_errors(f"build image {tag}"):
            try:
                await self._build_stream(context, tag, labels, on_output, tail)
            except aiodocker.DockerError as exc:
                if exc.status:  # an HTTP-level failure, not a failed step
                    raise
                # aiodocker raises failed steps (found in the 200 OK stream) with status 0.
                raise ImageBuildError(
                    f"building sandbox image {tag} failed: {exc.message}", logs=tail.text()
                ) from exc

    async def _build_stream(
        self, context: IO[bytes], tag: str, labels: Mapping[str, str],
        on_output: Callable[[str], None], tail: OutputTail,
    ) -> None:
        # aiodocker's images.build cannot set the build's network mode; this is its query with
        # `networkmode=none`: builds install from wheels resolved on the host and need no network.
        params = {"t": tag, "rm": "1", "forcerm": "1", "networkmode": "none", "labels": json.dumps(dict(labels))}
        created: list[str] = []
        cached = False
        try:
            async with self._docker._query(
                "build", "POST", params=params, data=context, timeout=aiohttp.ClientTimeout(),
                headers={"content-type": "application/x-tar", "Content-Encoding": "identity"},
            ) as response:
                try:
                    async for event in json_stream_stream(response, raise_on_error=False):
                        text = event.get("stream") or event.get("status") or ""
                        for line in text.rstrip("\n").splitlines():
                            if line.startswith("Step "):
                                tail.clear()
                                cached = False
                            elif line.strip() == "---> Using cache":
                                cached = True
                            else:
                                m = _STEP_IMAGE.match(line)
                                if m and not cached:
                                    created.append(m.group(1))
                            tail.add(line)
                            on_output(line)
                        if "error" in event or "errorDetail" in event:
                            message = event.get("error") or (event.get("errorDetail") or {}).get("message", "")
                            raise ImageBuildError(f"building sandbox image {tag} failed: {message}",
                                                  logs=tail.text())
                finally:
                    response.close()
        except BaseException:
            # A failed or interrupted build leaves no image: remove the layers it committed.
            await asyncio.shield(self._remove_images(reversed(created)))
            raise

    async def _remove_images(self, image_ids: Iterable[str]) -> None:
        for image_id in image_ids:
            with contextlib.suppress(Exception):  # shared by another image, or gone: not ours to force
                await _complete(self._docker.images.delete(image_id, noprune=False))

    async def remove_image(self, ref: str) -> bool:
        """Remove an image; returns False when it is gone already or still needed (by a child image).

        Raises:
            SandboxError: The engine failed otherwise.
        """
        try:
            with _map_errors(f"remove image {ref}"):
                await _complete(self._docker.images.delete(ref))
        except SandboxError as exc:
            cause = exc.__cause__
            if isinstance(cause, aiodocker.DockerError) and cause.status in (404, 409):
                return False
            raise
        return True

    async def list_images(self, labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        """Images carrying all ``labels`` (a None value matches any), dangling ones included; not
        the intermediate layers of a build (they go with their image)."""
        filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        with _map_errors("list images"), warnings.catch_warnings():
            # A JSON string is the form every aiodocker from 0.23 takes; 0.27 deprecates it for a mapping.
            warnings.filterwarnings("ignore", "Passing `filters` as a pre-encoded JSON string", DeprecationWarning)
            found = await _complete(self._docker.images.list(all=False, filters=json.dumps({"label": filters})))
        return [dict(i) for i in found]

    # -- containers ---------------------------------------------------------
    async def create(self, config: dict[str, Any], name: str | None = None) -> str:
        """Create a container (never pulls); returns its id.

        Raises:
            SandboxError: Creation failed.
        """
        # A create cancelled in flight still creates the container and its id would be lost:
        # the request finishes, and what it made is removed before the cancellation goes on.
        create = asyncio.ensure_future(self._docker.containers.create(config, name=name))
        try:
            with _map_errors("create the sandbox container"):
                container = await asyncio.shield(create)
        except asyncio.CancelledError:
            await _finish(create)
            if not create.cancelled() and create.exception() is None:
                removal = asyncio.ensure_future(self.remove(create.result().id, grace=0))
                await _finish(removal)
            raise
        return str(container.id)

    async def start(self, container_id: str) -> None:
        """Start a created container (it is removed if that fails).

        Raises:
            SandboxError: The engine could not start it (a bad runtime, say).
        """
        try:
            with _map_errors("start the sandbox container"):
                await _complete(self._docker.containers.container(container_id).start())
        except BaseException:
            with contextlib.suppress(Exception):
                await self.remove(container_id)
            raise

    async def read_image_file(self, image: str, path: str) -> bytes:
        """The bytes of one file of an image (through a container that is created, never started).

        Raises:
            SandboxError: The engine failed, or the image has no such file.
        """
        container_id = await self.create({"Image": image, "Cmd": ["true"], "NetworkDisabled": True,
                                          "Labels": {"rlmesh.probe": "1"}})
        try:
            with _map_errors(f"read {path} from image {image}"):
                archive = await _complete(self._docker.containers.container(container_id).get_archive(path))
            with archive:
                member = archive.extractfile(os.path.basename(path))
                if member is None:
                    raise SandboxError(f"image {image} has no file {path}")
                return member.read()
        finally:
            with contextlib.suppress(SandboxError):
                await self.remove(container_id, grace=0)

    async def container_ip(self, container_id: str) -> str | None:
        """The container's address on its (bridge) network, or None."""
        with _map_errors("inspect the relay container"):
            info = await _complete(self._docker.containers.container(container_id).show())
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        for net in networks.values():
            if net.get("IPAddress"):
                return str(net["IPAddress"])
        return None

    async def published_port(self, container_id: str, port: str) -> int:
        """The host port the engine published for a container's ``port`` (``"7000/tcp"``).

        Raises:
            SandboxError: The container has no such published port.
        """
        with _map_errors("inspect the relay container"):
            info = await _complete(self._docker.containers.container(container_id).show())
        bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(port) or []
        for binding in bindings:
            if str(binding.get("HostPort", "")).isdigit():
                return int(binding["HostPort"])
        raise SandboxError(f"the engine published no host port for {port} of container {container_id[:12]}")

    async def wait_exit(self, container_id: str, registered: asyncio.Future[None] | None = None) -> int:
        """Wait for the next exit of a container (call it before the start); returns the exit code.

        It may wait for the container's whole life, so a cancellation closes the response
        (aiodocker's ``wait`` would leak it).

        Args:
            container_id: The container.
            registered: Resolved once the engine holds the wait: since API 1.30 it answers the
                headers at once, so a start after that cannot exit unseen. An engine that
                refuses the wait (the container is gone: HTTP 404) raises here, before it.

        Raises:
            SandboxError: The engine refused the wait (the container no longer exists, say).
        """
        with _map_errors("wait for the sandbox container"):
            async with self._docker._query(
                f"containers/{container_id}/wait", method="POST", params={"condition": "next-exit"},
                timeout=aiohttp.ClientTimeout(),
            ) as response:
                if registered is not None and not registered.done():
                    registered.set_result(None)
                try:
                    result = await response.json()
                finally:
                    response.close()
        return int(result.get("StatusCode", -1)) if isinstance(result, dict) else -1

    async def engine_reachable(self, timeout: float = 2.0) -> bool:
        """Whether the engine accepts a new connection now.

        A stopping engine closes its listener first and then stops its containers, while the
        connections it already has (this client's pool) are still answered: only a fresh
        connection tells that it is going away.
        """
        try:
            async with asyncio.timeout(timeout):
                with _map_errors("reach the engine"):
                    fresh = aiodocker.Docker(url=self.host)
                try:
                    with _map_errors("reach the engine"):
                        await fresh.version()
                finally:
                    await fresh.close()
        except (DockerUnavailableError, TimeoutError, OSError, ValueError):
            return False  # refused, no socket any more, or no answer
        except SandboxError:
            return True  # it answered, if with an error
        return True

    async def info(self) -> dict[str, Any]:
        """The engine's ``/info`` (memory, runtimes ...), fetched once per client."""
        if self._info is None:
            with _map_errors("read the engine's info"):
                self._info = dict(await _complete(self._docker.system.info()))
        return self._info

    async def state(self, container_id: str) -> dict[str, Any]:
        """The container's ``State`` (``Running``, ``ExitCode``, ``OOMKilled`` ...); {} if it is gone."""
        try:
            with _map_errors("inspect the sandbox container"):
                info = await _complete(self._docker.containers.container(container_id).show())
        except SandboxError:
            return {}
        return dict(info.get("State") or {})

    async def container_events(self, container_id: str, *, until: str = "die",
                               wait: float = 1.0) -> list[str] | None:
        """The actions the engine recorded for a container (``create`` ... ``oom``, ``kill``, ``die``),
        in order, up to its first ``until``.

        They come from the engine's ring of recent events (dockerd keeps the last 256), so they
        outlive an auto-removed container for a while. None when they have left the ring, or
        ``until`` did not come within ``wait`` seconds.
        """
        params = {"since": "1", "filters": json.dumps({"type": ["container"], "container": [container_id]})}
        actions: list[str] = []
        try:
            async with asyncio.timeout(wait):
                with _map_errors("read the engine's events"):
                    async with self._docker._query("events", params=params, timeout=aiohttp.ClientTimeout()) as response:
                        try:
                            async for event in json_stream_stream(response, raise_on_error=False):
                                actions.append(str(event.get("Action", "")) if isinstance(event, dict) else "")
                                if actions[-1] == until:
                                    return actions
                        finally:
                            response.close()
        except Exception:  # a hint for an error message: it must never replace the error
            pass
        return None

    async def follow_logs(self, container_id: str) -> AsyncGenerator[str, None]:
        """Yield a container's output as it comes, from the start (non-TTY containers).

        ``DockerContainer.log(follow=True)`` never releases its HTTP response when the
        reader stops early (aiodocker's ``_query`` leaves that to the caller), which leaks
        a connection. So the same query and aiodocker's own demultiplexer are used here,
        and the response is closed however the reader stops.
        """
        with _map_errors("follow container logs"):
            async with self._docker._query(
                f"containers/{container_id}/logs",
                params={"stdout": True, "stderr": True, "follow": True},
                timeout=aiohttp.ClientTimeout(),
            ) as response:
                try:
                    async for chunk in multiplexed_result_stream(response, is_tty=False):  # type: ignore[no-untyped-call]  # aiodocker leaves it untyped
                        yield chunk
                finally:
                    response.close()

    async def remove(self, container_id: str, *, grace: float = 2.0) -> None:
        """Stop (SIGTERM, then SIGKILL after ``grace`` s) and remove a container; missing is fine."""
        container = self._docker.containers.container(container_id)
        try:
            with _map_errors("stop the sandbox container"):
                await _complete(container.stop(t=int(max(grace, 0))))
        except SandboxError:
            pass
        try:
            with _map_errors("remove the sandbox container"):
                await _complete(container.delete(force=True, v=True))  # and its anonymous volumes
        except SandboxError as exc:
            cause = exc.__cause__
            if isinstance(cause, aiodocker.DockerError) and cause.status in (404, 409):
                return  # already gone, or removal already in progress
            raise

    async def wait_gone(self, container_id: str, timeout: float = 20.0) -> None:
        """Wait (at most ``timeout`` s) until the engine no longer has a container: an
        ``AutoRemove`` container may still be in removal when :meth:`remove` returns (409)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while await self.state(container_id):
                    await asyncio.sleep(0.05)

    async def list_containers(self, labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        """Containers (running or not) carrying all ``labels`` (a None value matches any)."""
        filters = [k if v is None else f"{k}={v}" for k, v in labels.items()]
        with _map_errors("list containers"):
            found = await _complete(self._docker.containers.list(all=True, filters={"label": filters}))
        return [dict(c._container) for c in found]


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, DockerClient]] = (
    weakref.WeakKeyDictionary()
)


async def acquire_docker(host: str | None = None) -> DockerClient:
    """Return this loop's shared client for an engine (created on first use); pair with :func:`release_docker`.

    Args:
        host: The engine (``tcp://HOST:PORT``, ``unix:///path``); None is the default engine
            (``DOCKER_HOST``, else the local socket).
    """
    loop = asyncio.get_running_loop()
    clients = _clients.setdefault(loop, {})
    client = clients.get(host)
    if client is None:
        client = DockerClient(host)
        clients[host] = client
    client.users += 1
    return client


async def release_docker(client: DockerClient) -> None:
    """Release a client from :func:`acquire_docker`; the last user closes it."""
    client.users -= 1
    if client.users <= 0:
        clients = _clients.get(asyncio.get_running_loop(), {})
        if clients.get(client.host) is client:
            del clients[client.host]
        await client.close()


@contextlib.asynccontextmanager
async def docker_client(host: str | None = None) -> AsyncIterator[DockerClient]:
    """``async with docker_client() as docker:`` — acquire and release this loop's client."""
    client = await acquire_docker(host)
    try:
        yield client
    finally:
        await release_docker(client)
