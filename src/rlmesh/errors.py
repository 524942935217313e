"""Exceptions raised by rlmesh.

Every exception rlmesh raises derives from :class:`RLMeshError`. Where the
meaning matches a builtin, the builtin is mixed in, so ``except ValueError`` and
``except TimeoutError`` keep working in user code::

    RLMeshError
    ├── InvalidArgumentError (ValueError)     bad argument on our side of the call
    │   ├── InvalidActionError                action not in the env's action space
    │   ├── UnencodableError (TypeError)      a value that cannot cross the wire
    │   ├── UnsupportedSpaceError             a space the protocol cannot describe
    │   └── SourceError                       a malformed or disallowed env source
    ├── TransportError (ConnectionError)      the byte stream failed
    │   ├── ConnectError                      could not connect to the server
    │   ├── ConnectionClosedError             the peer went away mid-session
    │   └── ServerBusyError                   the server already serves a client
    ├── AuthenticationError (PermissionError) wrong or missing token, or a server that cannot prove it
    ├── ProtocolError                         bytes on the wire broke the protocol
    ├── RLMeshTimeoutError (TimeoutError)     a deadline passed
    ├── RemoteEnvError                        the env raised; carries its traceback (and is also an
    │                                         instance of the remote builtin or gymnasium.error type)
    ├── EnvClosedError (gymnasium.error.ClosedEnvironmentError)  the env was used after close()
    └── SandboxError                          container or image trouble
        ├── DockerUnavailableError            no Docker engine is reachable
        ├── ImageBuildError                   the image build failed
        ├── BaseImageError                    no usable base image
        ├── BootstrapError                    building the base from Debian packages failed
        ├── SandboxExitedError (ConnectionClosedError)  the container died while serving
        └── SandboxStartError                 the container did not become ready

Remote errors and sandbox errors carry structured fields (``remote_type``,
``remote_traceback``, ``container_id``, ``exit_code``, ``logs``) so that a harness
can report them without parsing messages.
"""

from __future__ import annotations

import re

from gymnasium.error import ClosedEnvironmentError

__all__ = [
    "AuthenticationError",
    "BaseImageError",
    "BootstrapError",
    "ConnectError",
    "ConnectionClosedError",
    "DockerUnavailableError",
    "EnvClosedError",
    "ImageBuildError",
    "InvalidActionError",
    "InvalidArgumentError",
    "ProtocolError",
    "RLMeshError",
    "RLMeshTimeoutError",
    "RemoteEnvError",
    "SandboxError",
    "SandboxExitedError",
    "SandboxStartError",
    "ServerBusyError",
    "SourceError",
    "TransportError",
    "UnencodableError",
    "UnsupportedSpaceError",
]


class RLMeshError(Exception):
    """Root of every exception raised by rlmesh.

    Attributes:
        shard: In a vector env of several shards, the shard it came from (else absent).
        lanes: That shard's lanes, ``(first, end)``, or None if they were not known yet.
    """

    shard: int
    lanes: tuple[int, int] | None


class InvalidArgumentError(RLMeshError, ValueError):
    """An argument given to rlmesh is invalid."""


class InvalidActionError(InvalidArgumentError):
    """An action is not an element of the env's action space.

    Attributes:
        space: A description of the expected action space.
    """

    def __init__(self, message: str, *, space: str = "") -> None:
        super().__init__(message)
        self.space = space


class UnencodableError(InvalidArgumentError, TypeError):
    """A value (an action, a reset option) cannot be encoded for the wire; also a ``TypeError``."""


class UnsupportedSpaceError(InvalidArgumentError):
    """A Gymnasium space that the protocol cannot describe."""


class SourceError(InvalidArgumentError):
    """An env source string is malformed or not allowed by the given flags."""


class TransportError(RLMeshError, ConnectionError):
    """The connection to an env server failed."""


class ConnectError(TransportError):
    """Could not connect to an env server."""


class ConnectionClosedError(TransportError):
    """The env server closed the connection, or it was lost."""


class ServerBusyError(TransportError):
    """The env server already serves another client."""


class AuthenticationError(RLMeshError, PermissionError):
    """The token handshake failed: a wrong or missing token on either side.

    The server logs it, drops that connection and keeps serving.
    """


class ProtocolError(RLMeshError):
    """A peer sent bytes or a body that do not follow the rlmesh protocol.

    On the client, the connection is closed when this is raised for a reply (its
    state is unknown); the env must be reconnected or recreated.
    """


class RLMeshTimeoutError(RLMeshError, TimeoutError):
    """A connect, request, build or start-up deadline passed."""


class EnvClosedError(RLMeshError, ClosedEnvironmentError):
    """The env was used after ``close()`` (also Gymnasium's ``ClosedEnvironmentError``)."""


class RemoteEnvError(RLMeshError):
    """The env raised an exception while handling a request.

    The connection stays usable afterwards; a ``reset()`` starts a new episode.

    Attributes:
        remote_type: Qualified name of the exception type raised by the env.
        remote_message: ``str()`` of that exception.
        remote_traceback: The formatted traceback from the server process.
    """

    def __init__(
        self, remote_type: str, remote_message: str, remote_traceback: str = ""
    ) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class SandboxError(RLMeshError):
    """A sandbox container or image failed.

    Attributes:
        container_id: The container involved, when there is one.
        exit_code: The container's exit code, when it exited.
        logs: The last lines of the container's (or build's) output.
    """

    def __init__(
        self,
        message: str,
        *,
        container_id: str | None = None,
        exit_code: int | None = None,
        logs: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.container_id = container_id
        self.exit_code = exit_code
        self.logs = _ANSI_ESCAPE.sub("", logs)  # a terminal's colours (Docker's build output) are noise here

    def __str__(self) -> str:
        text = self.message
        if self.container_id:
            text += f"\n  container: {self.container_id[:12]}"
        if self.exit_code is not None:
            text += f"\n  exit code: {self.exit_code}"
        if self.logs:
            tail = "\n".join("    " + line for line in self.logs.rstrip().splitlines())
            text += f"\n  last output:\n{tail}"
        return text


class DockerUnavailableError(SandboxError):
    """No Docker engine is reachable."""


class ImageBuildError(SandboxError):
    """Building a sandbox image failed; ``logs`` holds the failing step's output."""


class BaseImageError(SandboxError):
    """No usable base image exists and none can be pulled."""


class BootstrapError(SandboxError):
    """``rlmesh image bootstrap`` failed.

    Attributes:
        step: The step that failed (``preflight``, ``debootstrap``, ``verify``, ``pack``, ``suite``).
        output: The tail of the failing command's output (also in ``logs``).
    """

    def __init__(self, message: str, *, step: str, output: str = "") -> None:
        super().__init__(message, logs=output)
        self.step = step
        self.output = output


class SandboxStartError(SandboxError):
    """The sandbox container exited or never became ready."""


class SandboxExitedError(SandboxError, ConnectionClosedError):
    """The sandbox container exited while serving (crash, ``os._exit``, out of memory).

    It is also a :class:`ConnectionClosedError`, which is what the client saw; ``exit_code``
    and ``logs`` say why.

    Attributes:
        oom_killed: Whether it was killed for lack of memory (by the engine's account, or a
            SIGKILL under the memory limit once the engine removed it).
        killed_by: Who ended it, where that is known: ``"memory"`` (the kernel's OOM killer at
            the memory limit), ``"engine"`` (a ``docker kill``, ``stop`` or ``rm -f`` from outside
            rlmesh), ``"stopped"`` (its Docker engine stopped), or None (it exited by itself, or
            nothing says). ``"engine"`` and ``"stopped"`` are not the env's doing.
    """

    def __init__(self, message: str, *, container_id: str | None = None, exit_code: int | None = None,
                 logs: str = "", oom_killed: bool = False, killed_by: str | None = None) -> None:
        super().__init__(message, container_id=container_id, exit_code=exit_code, logs=logs)
        self.oom_killed = oom_killed
        self.killed_by = killed_by
