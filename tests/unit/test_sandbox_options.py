"""SandboxOptions: one model from which the signature, validation, defaults, spec kwargs, typo hints
and docs of the sandbox classes come."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, cast

import pytest

from rlmesh.errors import InvalidArgumentError
from rlmesh.numpy import AsyncSandboxEnv, AsyncSandboxVectorEnv, SandboxEnv, SandboxVectorEnv
from rlmesh.sandbox.options import (
    BUILD_OPTIONS,
    CLIENT_OPTIONS,
    OPTION_NAMES,
    ContainerOptions,
    SandboxOptions,
    option_default,
)


@pytest.mark.parametrize("cls", [AsyncSandboxEnv, AsyncSandboxVectorEnv, SandboxEnv, SandboxVectorEnv])
def test_each_sandbox_class_shows_every_option_with_its_default(cls: type) -> None:
    params = inspect.signature(cls).parameters
    for name in OPTION_NAMES:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == option_default(name)
    assert "env_kwargs" in params and list(params)[0] == "source"
    for name in OPTION_NAMES:
        assert f"\n        {name}: " in (cls.__doc__ or "") or cls in (SandboxEnv, SandboxVectorEnv)


def test_the_docs_come_from_the_fields() -> None:
    for f in dataclasses.fields(SandboxOptions):
        assert f.metadata["doc"], f.name
        assert f"        {f.name}: " in (AsyncSandboxEnv.__doc__ or "")
    container = {f.name for f in dataclasses.fields(ContainerOptions)}
    assert all(f"        {name}: " in (ContainerOptions.__doc__ or "") for name in container)
    assert "packages:" not in (ContainerOptions.__doc__ or "")


def test_groups() -> None:
    assert CLIENT_OPTIONS == ("connect_timeout", "request_timeout", "max_frame_size", "strict_actions", "data_plane",
                              "max_region_size", "max_info_size", "max_variable_size")
    assert BUILD_OPTIONS == ("packages", "system_packages", "ignore_libraries", "gl", "base_image", "rebuild")
    assert option_default("request_timeout") == 300.0 and option_default("env") == {}


def test_a_sandbox_s_options_are_its_container_s() -> None:
    env = AsyncSandboxEnv("CartPole-v1", memory="2g", env={"A": "1"}, packages=["minigrid"])
    assert isinstance(env.options, ContainerOptions) and env.options.memory == "2g"
    assert env.options.env == {"A": "1"} and env.options.packages == ["minigrid"]
    assert AsyncSandboxEnv("CartPole-v1", env=None).options.env == {}


def test_spec_kwargs_are_the_options_that_differ_from_their_defaults() -> None:
    assert SandboxOptions().spec_kwargs() == {}
    opts = SandboxOptions(memory="2g", lease=60.0, progress=False, request_timeout=None, env={"A": "1"})
    assert opts.spec_kwargs() == {"memory": "2g", "request_timeout": None, "env": {"A": "1"}}  # progress: not recorded


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"packages": "gymnasium"}, "packages must be a list of strings"),
     ({"imports": b"x"}, "imports must be a list of strings"),
     ({"system_packages": ["Bad Name"]}, "is not a Debian package name"),
     ({"lease": 0}, "lease must be a positive number"),
     ({"wrappers": "m:C"}, "wrappers must be a list"),
     ({"progress": "yes"}, "progress must be"),
     ({"cpus": True}, "cpus must be a positive number")],
)
def test_each_option_is_checked_by_the_model(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        SandboxOptions(**kwargs)


@pytest.mark.parametrize(("typo", "option"), [("wraper", "wrappers"), ("system_package", "system_packages"),
                                              ("request_timout", "request_timeout"), ("runtme", "runtime")])
def test_typo_hints_name_every_option(typo: str, option: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"did you mean {option}="):
        AsyncSandboxEnv("CartPole-v1", **cast(dict[str, Any], {typo: 1}))
