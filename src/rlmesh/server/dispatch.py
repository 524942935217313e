"""Requests applied to the env: one frame in, one encoded reply out (no sockets here).

:func:`handle` answers an active client's request; :func:`describe` is the server's HELLO.
An exception the env raises becomes an ERROR reply (the connection stays usable); a request no
client may send is a :class:`~rlmesh.errors.ProtocolError`, which drops the connection.
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym

from ..errors import ProtocolError
from ..protocol import (
    CallRequest,
    ErrorBody,
    Frame,
    MessageType,
    ResetRequest,
    ServerHello,
    SpecData,
    encode_message,
    error_for_exception,
)
from ..protocol.spaces import space_at
from ..protocol.values import unencodable
from ._types import EnvLike
from .data_plane import FEATURE, ServerRegion

__all__ = ["describe", "handle"]

log = logging.getLogger("rlmesh.server")


def handle(env: EnvLike, frame: Frame, reply_limit: int, region: ServerRegion | None = None) -> bytes:
    """Apply one request to the env and return the encoded reply (an ERROR if it failed).

    ``STEP_SHARED`` and ``RESET_SHARED`` replies leave their fixed-shape arrays in the
    connection's ``region`` (the data plane).

    Raises:
        ProtocolError: A request no active client may send (the connection is dropped).
    """
    mtype = frame.type
    rid = frame.request_id
    try:
        if mtype is MessageType.STEP:
            reply = encode_message(mtype, rid, env.step(frame.value()))
        elif mtype is MessageType.RESET:
            req = ResetRequest.decode(frame)
            reply = encode_message(mtype, rid, env.reset(seed=req.seed, options=req.options))
        elif mtype is MessageType.STEP_SHARED or mtype is MessageType.RESET_SHARED:
            if region is None:
                raise ProtocolError(f"{mtype.name} without a shared region (MAP)")
            if mtype is MessageType.STEP_SHARED:
                result = region.step(env.step(frame.value()))
            else:
                req = ResetRequest.decode(frame)
                result = region.reset(env.reset(seed=req.seed, options=req.options))
            reply = encode_message(mtype, rid, result)
        elif mtype is MessageType.RENDER:
            reply = encode_message(mtype, rid, env.render())
        elif mtype is MessageType.CALL:
            reply = encode_message(mtype, rid, _call(env, CallRequest.decode(frame)))
        elif mtype is MessageType.CLOSE:
            return encode_message(mtype, rid, None)
        else:
            raise ProtocolError(f"unexpected {mtype.name} from an active client")
    except ProtocolError:
        raise
    except Exception as exc:
        log.debug("request %s failed", mtype.name, exc_info=True)
        return error_for_exception(exc).encode(rid)
    if len(reply) > reply_limit:
        return ErrorBody.bad_request(
            f"the {mtype.name} reply is {len(reply)} bytes, over the client's max_frame_size={reply_limit}; "
            "raise max_frame_size on the client").encode(rid)
    return reply


def _call(env: EnvLike, req: CallRequest) -> Any:
    if req.op == "space":  # an opaque space's question, answered by the env's own space
        path, method, *args = req.args
        space = space_at(getattr(env, req.name), path)
        if method == "sample":
            return _checked(req.name, space.sample())
        if method == "contains":
            return bool(space.contains(*args[:1]))
        return _checked(req.name, space.seed(*args[:1]))
    if isinstance(env, gym.vector.VectorEnv):
        method = getattr(env, req.op, None)  # Sync/AsyncVectorEnv have them; native vector envs may not
        if method is None:
            raise AttributeError(f"{type(env).__name__} has no {req.op}() (a native vector env)")
        if req.op == "call":
            return _checked(req.name, method(req.name, *req.args, **req.kwargs))
        if req.op == "get_attr":
            return _checked(req.name, method(req.name))
        (values,) = req.args
        method(req.name, values)
        return None
    if req.op == "call":
        attr = env.get_wrapper_attr(req.name)
        return _checked(req.name, attr(*req.args, **req.kwargs) if callable(attr) else attr)
    if req.op == "get_attr":
        return _checked(req.name, env.get_wrapper_attr(req.name))
    (value,) = req.args
    env.set_wrapper_attr(req.name, value)
    return None


def _checked(name: str, value: Any) -> Any:
    # An attribute's value must arrive as it is: never as the repr() that info dicts fall back to.
    bad = unencodable(value)
    if bad is not None:
        raise TypeError(f"the value of {name!r} holds a {bad}, which cannot cross the wire")
    return value


def describe(env: EnvLike, *, data_plane: bool = False) -> ServerHello:
    """The server's HELLO for ``env``: its spaces, metadata and spec (``data_plane``: it offers shared memory)."""
    vector = env if isinstance(env, gym.vector.VectorEnv) else None
    metadata = dict(env.metadata)
    autoreset = metadata.pop("autoreset_mode", None)
    spec: SpecData | None = None
    if env.spec is not None:
        try:
            spec = SpecData.from_spec(env.spec)
        except Exception:  # an odd spec is described as none, never a failed start
            log.warning("cannot describe the env's spec; clients see none", exc_info=True)
    return ServerHello(
        vector=vector is not None,
        num_envs=int(vector.num_envs) if vector is not None else None,
        observation_space=env.observation_space,
        action_space=env.action_space,
        single_observation_space=vector.single_observation_space if vector is not None else None,
        single_action_space=vector.single_action_space if vector is not None else None,
        metadata=metadata,
        render_mode=env.render_mode,
        spec=spec,
        autoreset_mode=None if autoreset is None else str(getattr(autoreset, "value", autoreset)),
        features=(FEATURE,) if data_plane else (),
    )
