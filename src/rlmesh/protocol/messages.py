"""The typed message bodies: each one built and checked in one place.

Every ``decode`` here takes a :class:`~rlmesh.protocol.framing.Frame` from the
peer and either returns a well-formed body or raises
:class:`~rlmesh.errors.ProtocolError` (``InvalidArgumentError`` for a request
the server can refuse and still serve). ``docs/protocol.md`` describes the same
bodies for other languages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode

from ..errors import InvalidArgumentError, ProtocolError
from .auth import valid_nonce
from .framing import MIN_FRAME_SIZE, PROTOCOL_VERSION, Frame, MessageType, encode_frame, encode_message
from .spaces import decode_space, encode_space
from .values import encode_value

__all__ = [
    "AuthChallenge",
    "AuthProof",
    "CallRequest",
    "ClientHello",
    "ResetRequest",
    "ServerHello",
    "SpecData",
    "decode_lane_values",
    "decode_reset_reply",
    "decode_step_reply",
]

_AUTORESET_VALUES = frozenset(mode.value for mode in AutoresetMode)
_BAD = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError)


def _require_dict(frame: Frame) -> dict[str, Any]:
    if frame.arrays or type(frame.tree) is not dict:
        raise ProtocolError(f"malformed {frame.type.name} body: expected a plain object")
    return frame.tree


RENDER_MODE = re.compile(r"[\w.-]{1,64}")
"""A render mode a client may ask for (``rgb_array``, ``ansi``, ``rgb_array_list``)."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The client's first message: its protocol version, a fresh nonce, and the largest
    reply frame it accepts (the server answers an error instead of a bigger reply)."""

    version: int
    nonce: str
    max_frame_size: int
    render_mode: str | None = None  # asked of a server that makes each client's env (None: its own)

    def encode(self, request_id: int) -> bytes:
        """The HELLO frame."""
        body: dict[str, Any] = {"version": self.version, "nonce": self.nonce, "max_frame_size": self.max_frame_size}
        if self.render_mode is not None:
            body["render_mode"] = self.render_mode
        return encode_message(MessageType.HELLO, request_id, body)

    @classmethod
    def decode(cls, frame: Frame) -> ClientHello:
        """Read a client's HELLO.

        Raises:
            ProtocolError: Malformed, or another protocol version.
        """
        body = _require_dict(frame)
        version, nonce, limit = body.get("version"), body.get("nonce"), body.get("max_frame_size")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"client speaks protocol version {version!r:.20}, server {PROTOCOL_VERSION}")
        if not valid_nonce(nonce):
            raise ProtocolError("malformed HELLO: the nonce must be 64 hex digits")
        if type(limit) is not int or limit < MIN_FRAME_SIZE:
            raise ProtocolError(f"malformed HELLO: max_frame_size must be an int of at least {MIN_FRAME_SIZE}")
        render_mode = body.get("render_mode")
        if render_mode is not None and not (isinstance(render_mode, str) and RENDER_MODE.fullmatch(render_mode)):
            raise ProtocolError("malformed HELLO: render_mode must be a name of at most 64 letters, digits, _ . -")
        return cls(version, nonce, limit, render_mode)  # type: ignore[arg-type]  # each checked above


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """The server's nonce, sent when it requires a token."""

    nonce: str

    def encode(self, request_id: int) -> bytes:
        """The AUTH frame."""
        return encode_message(MessageType.AUTH, request_id, {"nonce": self.nonce})

    @classmethod
    def decode(cls, frame: Frame) -> AuthChallenge:
        """Read the server's challenge."""
        nonce = _require_dict(frame).get("nonce")
        if not valid_nonce(nonce):
            raise ProtocolError("malformed AUTH challenge: the nonce must be 64 hex digits")
        return cls(nonce)  # type: ignore[arg-type]  # checked above (mypy cannot narrow .get())


@dataclass(frozen=True, slots=True)
class AuthProof:
    """The client's proof that it knows the token."""

    proof: str

    def encode(self, request_id: int) -> bytes:
        """The AUTH frame."""
        return encode_message(MessageType.AUTH, request_id, {"proof": self.proof})

    @classmethod
    def decode(cls, frame: Frame) -> AuthProof:
        """Read the client's proof."""
        proof = _require_dict(frame).get("proof")
        if not isinstance(proof, str) or len(proof) != 64:
            raise ProtocolError("malformed AUTH proof")
        return cls(proof)


_SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "entry_point": (str, type(None)),
    "vector_entry_point": (str, type(None)),
    "reward_threshold": (float, int, type(None)),
    "nondeterministic": (bool,),
    "max_episode_steps": (int, type(None)),
    "order_enforce": (bool,),
    "disable_env_checker": (bool,),
}


@dataclass(frozen=True)
class SpecData:
    """The served env's ``EnvSpec``, as plain data: names are strings, never callables.

    The host never imports or calls anything named here. It is what the server
    says about its env; :attr:`kwargs` holds decoded values, not code.
    """

    id: str
    entry_point: str | None = None
    vector_entry_point: str | None = None
    reward_threshold: float | None = None
    nondeterministic: bool = False
    max_episode_steps: int | None = None
    order_enforce: bool = True
    disable_env_checker: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: EnvSpec) -> SpecData:
        """Describe a spec (callable entry points become ``module:qualname`` strings)."""
        names = {}
        for name in ("entry_point", "vector_entry_point"):
            value = getattr(spec, name)
            if value is not None and not isinstance(value, str):
                value = f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
            names[name] = value
        return cls(
            id=spec.id, reward_threshold=spec.reward_threshold, nondeterministic=spec.nondeterministic,
            max_episode_steps=spec.max_episode_steps, order_enforce=spec.order_enforce,
            disable_env_checker=spec.disable_env_checker, kwargs=dict(spec.kwargs), **names,
        )

    def to_tree(self, buffers: list[np.ndarray[Any, Any]]) -> dict[str, Any]:
        """The wire form."""
        tree = {name: getattr(self, name) for name in _SPEC_TYPES}
        tree["kwargs"] = encode_value(self.kwargs, buffers)
        return tree

    @classmethod
    def from_tree(cls, tree: Any, decoder: Any) -> SpecData:
        """Check and read the wire form.

        Raises:
            ValueError: A field is missing or of the wrong type.
        """
        if type(tree) is not dict:
            raise ValueError("spec must be an object")
        values: dict[str, Any] = {}
        for name, types in _SPEC_TYPES.items():
            value = tree.get(name)
            if type(value) not in types or (type(value) is str and len(value) > 1000):
                raise ValueError(f"spec field {name} is malformed")
            values[name] = value
        if type(values["reward_threshold"]) is int:
            values["reward_threshold"] = float(values["reward_threshold"])
        kwargs = decoder.value(tree.get("kwargs"))
        if type(kwargs) is not dict:
            raise ValueError("spec kwargs must be a dict")
        return cls(kwargs=kwargs, **values)


@dataclass(frozen=True)
class ServerHello:
    """What the server serves: the reply to a client's HELLO.

    Attributes:
        vector: Whether the env is a vector env.
        num_envs: The number of lanes (vector envs), else None.
        observation_space: The (batched, for vector envs) observation space.
        action_space: The (batched) action space.
        single_observation_space: One lane's observation space (vector envs).
        single_action_space: One lane's action space (vector envs).
        metadata: The env's metadata, without ``autoreset_mode``.
        render_mode: The env's render mode.
        spec: The env's spec as plain data, or None.
        autoreset_mode: The vector env's autoreset mode value (``"NextStep"`` ...), or None.
        proof: The server's authentication proof, when the client had to authenticate.
        features: Optional parts of the protocol the server supports (``"shm1"``: the shared-memory
            data plane); an older server names none, and a client uses none it did not name.
    """

    vector: bool
    num_envs: int | None
    observation_space: spaces.Space[Any]
    action_space: spaces.Space[Any]
    single_observation_space: spaces.Space[Any] | None
    single_action_space: spaces.Space[Any] | None
    metadata: dict[str, Any]
    render_mode: str | None
    spec: SpecData | None
    autoreset_mode: str | None
    proof: str | None = None
    features: tuple[str, ...] = ()

    def encode_parts(self) -> tuple[dict[str, Any], list[np.ndarray[Any, Any]]]:
        """The body tree (without ``proof``) and its buffers; the server encodes them once."""
        buffers: list[np.ndarray[Any, Any]] = []
        body: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "vector": self.vector,
            "num_envs": self.num_envs,
            "observation_space": encode_space(self.observation_space, buffers),
            "action_space": encode_space(self.action_space, buffers),
            "metadata": encode_value(self.metadata, buffers),
            "render_mode": self.render_mode,
            "spec": None if self.spec is None else self.spec.to_tree(buffers),
            "autoreset_mode": self.autoreset_mode,
            "features": list(self.features),
        }
        if self.vector:
            assert self.single_observation_space is not None and self.single_action_space is not None
            body["single_observation_space"] = encode_space(self.single_observation_space, buffers)
            body["single_action_space"] = encode_space(self.single_action_space, buffers)
        return body, buffers

    @staticmethod
    def frame(parts: tuple[dict[str, Any], list[np.ndarray[Any, Any]]], request_id: int, proof: str | None) -> bytes:
        """Frame the parts from :meth:`encode_parts`, with the server's proof if any."""
        body, buffers = parts
        return encode_frame(MessageType.HELLO, request_id, {**body, "proof": proof}, buffers)

    @classmethod
    def decode(cls, frame: Frame) -> ServerHello:
        """Check and read the server's HELLO.

        Raises:
            ProtocolError: Malformed or out of contract.
        """
        tree = frame.tree
        try:
            if type(tree) is not dict:
                raise ValueError("expected an object")
            if tree.get("version") != PROTOCOL_VERSION:
                raise ValueError(f"server speaks protocol version {tree.get('version')!r:.20}")
            vector = tree.get("vector")
            if type(vector) is not bool:
                raise ValueError("vector must be a bool")
            num_envs = tree.get("num_envs")
            if vector and (type(num_envs) is not int or num_envs < 1):
                raise ValueError("num_envs must be a positive int")
            if not vector and num_envs is not None:
                raise ValueError("a single env has no num_envs")
            decoder = frame.decoder()
            obs_space = decode_space(tree.get("observation_space"), decoder)
            act_space = decode_space(tree.get("action_space"), decoder)
            metadata = decoder.value(tree.get("metadata"))
            if type(metadata) is not dict:
                raise ValueError("metadata must be a dict")
            spec_tree = tree.get("spec")
            spec = None if spec_tree is None else SpecData.from_tree(spec_tree, decoder)
            single_obs = single_act = None
            if vector:
                single_obs = decode_space(tree.get("single_observation_space"), decoder)
                single_act = decode_space(tree.get("single_action_space"), decoder)
            decoder.finish()
            render_mode, autoreset, proof = tree.get("render_mode"), tree.get("autoreset_mode"), tree.get("proof")
            for name, value in (("render_mode", render_mode), ("autoreset_mode", autoreset), ("proof", proof)):
                if value is not None and (type(value) is not str or len(value) > 100):
                    raise ValueError(f"{name} must be a short string or null")
            if autoreset is not None and autoreset not in _AUTORESET_VALUES:
                raise ValueError(f"unknown autoreset mode {autoreset!r:.40}")
            features = tree.get("features", [])  # absent from an older server
            if type(features) is not list or len(features) > 32 or not all(
                type(f) is str and len(f) <= 32 for f in features
            ):
                raise ValueError("features must be a list of short strings")
        except ProtocolError:
            raise
        except _BAD as exc:
            raise ProtocolError(f"malformed handshake from the server: {type(exc).__name__}: {exc}") from exc
        return cls(vector, num_envs, obs_space, act_space, single_obs, single_act, metadata, render_mode,
                   spec, autoreset, proof, tuple(features))


@dataclass(frozen=True, slots=True)
class ResetRequest:
    """A RESET request: ``seed`` (an int, None, or per lane for vector envs) and ``options``."""

    seed: Any
    options: dict[str, Any] | None

    def encode(self, request_id: int) -> bytes:
        """The RESET frame."""
        return encode_message(MessageType.RESET, request_id, {"seed": self.seed, "options": self.options})

    @classmethod
    def decode(cls, frame: Frame) -> ResetRequest:
        """Read a RESET request.

        Raises:
            ProtocolError: The frame is malformed.
            InvalidArgumentError: ``seed`` or ``options`` are of the wrong type (the connection stays usable).
        """
        body = frame.value()
        if type(body) is not dict or set(body) != {"seed", "options"}:
            raise ProtocolError("malformed RESET body: expected {seed, options}")
        seed, options = body["seed"], body["options"]
        ok_seed = seed is None or type(seed) is int or (
            type(seed) is list and all(s is None or type(s) is int for s in seed)
        )
        if not ok_seed:
            raise InvalidArgumentError(f"reset seed must be an int, None or a list of them, got {type(seed).__name__}")
        if options is not None and type(options) is not dict:
            raise InvalidArgumentError(f"reset options must be a dict or None, got {type(options).__name__}")
        return cls(seed, options)


CALL_OPS = ("call", "get_attr", "set_attr", "space")
SPACE_NAMES = ("observation_space", "action_space", "single_observation_space", "single_action_space")
SPACE_METHODS = ("sample", "contains", "seed")


@dataclass(frozen=True, slots=True)
class CallRequest:
    """A CALL request: call a method, or get or set an attribute, of the served env.

    Attributes:
        op: ``call``, ``get_attr``, ``set_attr``, or ``space`` (an opaque space's ``sample``,
            ``contains`` or ``seed``: ``name`` is the space, ``args`` its path, the method and
            the method's argument).
        name: The method or attribute name (a public identifier).
        args: Positional arguments (``call``), or the value(s) to set (``set_attr``: one item).
        kwargs: Keyword arguments (``call``).
    """

    op: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def encode(self, request_id: int) -> bytes:
        """The CALL frame."""
        body = {"op": self.op, "name": self.name, "args": list(self.args), "kwargs": self.kwargs}
        return encode_message(MessageType.CALL, request_id, body)

    @classmethod
    def decode(cls, frame: Frame) -> CallRequest:
        """Read a CALL request.

        Raises:
            ProtocolError: The frame is malformed.
            InvalidArgumentError: The operation or name is not allowed (the connection stays usable).
        """
        body = frame.value()
        if type(body) is not dict or set(body) != {"op", "name", "args", "kwargs"}:
            raise ProtocolError("malformed CALL body")
        op, name, args, kwargs = body["op"], body["name"], body["args"], body["kwargs"]
        if op not in CALL_OPS or type(args) is not list or type(kwargs) is not dict:
            raise ProtocolError("malformed CALL body")
        check_attribute_name(name)
        if op == "space" and (name not in SPACE_NAMES or len(args) < 2 or type(args[0]) is not list
                              or args[1] not in SPACE_METHODS):
            raise InvalidArgumentError("a space request names a space, a path and sample, contains or seed")
        if not all(type(k) is str for k in kwargs):
            raise InvalidArgumentError("call keyword names must be strings")
        return cls(op, name, tuple(args), kwargs)


def check_attribute_name(name: Any) -> str:
    """A public attribute name: an identifier that does not start with ``_``.

    Raises:
        InvalidArgumentError: Anything else.
    """
    if type(name) is not str or not name.isidentifier() or name.startswith("_"):
        raise InvalidArgumentError(f"{name!r:.80} is not a public attribute name")
    return name


def decode_reset_reply(frame: Frame, fill: Fill | None = None) -> tuple[Any, dict[str, Any]]:
    """Check and read a RESET reply: ``(obs, info)``.

    Args:
        frame: The reply.
        fill: For a ``RESET_SHARED`` reply, puts the region's arrays where the body has ``None``.

    Raises:
        ProtocolError: Malformed (the caller closes the connection).
    """
    body = frame.value()
    if type(body) is not tuple or len(body) != 2 or type(body[1]) is not dict:
        raise ProtocolError(f"malformed RESET reply: expected (obs, info), got {_kind(body)}")
    return body if fill is None else fill(body)


Fill = Callable[[tuple[Any, ...]], tuple[Any, ...]]


def decode_step_reply(frame: Frame, num_envs: int | None, fill: Fill | None = None) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """Check and read a STEP reply: ``(obs, reward, terminated, truncated, info)``.

    For vector envs, rewards, terminations and truncations must be arrays of
    ``num_envs`` items.

    Args:
        frame: The reply.
        num_envs: The number of lanes (vector envs), else None.
        fill: For a ``STEP_SHARED`` reply, puts the region's arrays where the body has ``None``.

    Raises:
        ProtocolError: Malformed (the caller closes the connection).
    """
    body: tuple[Any, Any, Any, Any, dict[str, Any]] = _plain_step(frame) or frame.value()
    if type(body) is not tuple or len(body) != 5 or type(body[4]) is not dict:
        raise ProtocolError(f"malformed STEP reply: expected (obs, reward, terminated, truncated, info), got {_kind(body)}")
    if fill is not None:
        body = fill(body)
    if num_envs is None:
        reward = body[1]
        if not isinstance(reward, (int, float, np.number)) or isinstance(reward, np.complexfloating):
            raise ProtocolError(f"malformed STEP reply: reward is a {type(reward).__name__}")
        return body
    for name, value in (("rewards", body[1]), ("terminations", body[2]), ("truncations", body[3])):
        if type(value) is not np.ndarray or value.shape != (num_envs,):
            raise ProtocolError(f"malformed STEP reply: {name} must be an array of {num_envs} values")
    return body


_LEAVES = (type(None), bool, int, float, str)


def _plain_step(frame: Frame) -> Any:
    """A step body with no buffers, plain leaves and an empty info (a shared-memory reply, mostly),
    read without the general decoder; None for any other."""
    tree = frame.tree
    if frame.arrays or type(tree) is not dict or len(tree) != 1:
        return None
    items = tree.get("__t__")
    if type(items) is not list or len(items) != 5 or items[4] != {} or type(items[4]) is not dict:
        return None
    a, b, c, d, _ = items
    if type(a) in _LEAVES and type(b) in _LEAVES and type(c) in _LEAVES and type(d) in _LEAVES:
        return (a, b, c, d, {})
    return None


def _kind(body: Any) -> str:
    if type(body) is tuple:
        return f"a {len(body)}-tuple"
    return f"a {type(body).__name__}"


def decode_lane_values(frame: Frame, num_envs: int) -> tuple[Any, ...]:
    """A vector env's CALL reply: one value per lane.

    Raises:
        ProtocolError: Not a list of ``num_envs`` values.
    """
    value = frame.value()
    if type(value) not in (tuple, list) or len(value) != num_envs:
        raise ProtocolError(f"malformed CALL reply: expected {num_envs} per-lane values")
    return tuple(value)
