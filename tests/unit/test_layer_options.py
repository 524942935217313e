"""ClientOptions and ServerOptions: each option checked once, with a message that says what to pass."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from rlmesh import AsyncRemoteEnv, AsyncRemoteVectorEnv, RemoteEnv, RemoteVectorEnv
from rlmesh.client.options import ClientOptions
from rlmesh.errors import InvalidArgumentError
from rlmesh.server import EnvServer
from rlmesh.server.options import IDLE_TIMEOUT, ServerOptions

TOKEN = "t" * 32


@pytest.mark.parametrize("kwargs, match", [
    ({"connect_timeout": 0}, "connect_timeout must be a positive number"),
    ({"request_timeout": True}, "request_timeout must be a positive number"),
    ({"max_info_size": -1}, "max_info_size must be a number of bytes"),
    ({"max_variable_size": 1.5}, "max_variable_size must be a number of bytes"),
    ({"strict_actions": 1}, "strict_actions must be True or False"),
    ({"data_plane": "shm"}, "data_plane must be one of"),
])
def test_each_client_option_is_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        ClientOptions(**kwargs)
    with pytest.raises(InvalidArgumentError, match=match):  # the classes check through it, before connecting
        AsyncRemoteEnv("unix:///nowhere.sock", **kwargs)


def test_the_client_spec_holds_what_differs_but_never_the_token() -> None:
    options = ClientOptions(request_timeout=5.0, token=TOKEN, data_plane="socket")
    assert options.spec_kwargs() == {"request_timeout": 5.0, "data_plane": "socket"}
    assert ClientOptions().spec_kwargs() == {}


def test_the_remote_classes_show_the_client_options() -> None:
    names = set(ClientOptions.__dataclass_fields__)
    for cls in (AsyncRemoteEnv, AsyncRemoteVectorEnv, RemoteEnv, RemoteVectorEnv):
        params = inspect.signature(cls).parameters
        assert "address" in params and names <= set(params), cls


def test_a_list_of_no_addresses_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        AsyncRemoteVectorEnv([])


@pytest.mark.parametrize("address, kwargs, match", [
    ("tcp://127.0.0.1:0", {}, "needs a token"),
    ("tcp://10.1.2.3:0", {"insecure": True}, "loopback addresses only"),
    ("unix:///tmp/x.sock", {"tls": object()}, "TLS applies to TCP"),
    ("unix:///tmp/x.sock", {"max_frame_size": 10}, "max_frame_size must be an int of at least"),
    ("unix:///tmp/x.sock", {"idle_timeout": "soon"}, "idle_timeout must be a positive number"),
    ("unix:///tmp/x.sock", {"lease": True}, "lease must be a positive number"),
    ("tcp://127.0.0.1:0", {"dial": True, "token": TOKEN}, "dial applies to Unix socket"),
    ("unix:///tmp/x.sock", {"handoff": "relative.sock"}, "handoff must be an absolute socket path"),
    ("unix:///tmp/x.sock", {"handoff": "/tmp/h.sock"}, "needs a token"),
])
def test_each_server_option_is_checked(address: str, kwargs: dict[str, Any], match: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMESH_TOKEN", raising=False)
    with pytest.raises(InvalidArgumentError, match=match):
        ServerOptions.check(address, **kwargs)
    with pytest.raises(InvalidArgumentError, match=match):  # EnvServer checks through it, before the env is made
        EnvServer(lambda: None, address, **kwargs)  # type: ignore[arg-type, return-value]  # never made


def test_server_defaults_follow_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMESH_TOKEN", raising=False)
    unix = ServerOptions.check("unix:///tmp/x.sock")
    assert unix.idle_timeout is None and unix.token is None and not unix.tcp
    tcp = ServerOptions.check("tcp://127.0.0.1:0", token=TOKEN)
    assert tcp.idle_timeout == IDLE_TIMEOUT and tcp.token == TOKEN.encode() and tcp.tcp
    monkeypatch.setenv("RLMESH_TOKEN", TOKEN)
    assert ServerOptions.check("tcp://127.0.0.1:0").token == TOKEN.encode()  # TCP reads RLMESH_TOKEN
    assert ServerOptions.check("unix:///tmp/x.sock").token is None  # a Unix socket does not


def test_env_server_shows_every_server_option() -> None:
    params = inspect.signature(EnvServer).parameters
    assert list(params)[:2] == ["env_or_factory", "address"]
    assert set(inspect.signature(ServerOptions.check).parameters) <= set(params)
