"""Sandboxes: an env in a container that rlmesh builds, starts, owns and removes.

This package is the only place that talks to Docker (through ``_docker``). What lives here:

    env           AsyncSandboxEnv / SandboxShard: source -> image -> container -> client
    vector        AsyncSandboxVectorEnv: a vector env over one or more SandboxShards
    sync_sandbox  SandboxEnv / SandboxVectorEnv, the sync classes over them
    options       SandboxOptions, the one options model (defaults, checks, docs); ContainerOptions
    sources       source strings (Gymnasium id, module:factory, hf://, prebuilt image) and their gates
    base_image    the base an image builds on, pulls, and remembered pull failures
    image         wheels resolved on the host, cached offline builds
    debs          Debian packages resolved on the host (system_packages=)
    bootstrap     ``rlmesh image bootstrap``: a base image with no registry (debian_rootfs builds it)
    housekeeping  ``rlmesh image ls | inspect | prune``
    cache         the host's cache directory
    progress      build progress: a status line, log records or a callback
    output_tail   the last lines of a command's output, for errors
    library_hints the Debian package a missing shared library needs, for env errors
    container     one container: start, readiness, removal
    engine        Engine: which Docker engine a sandbox runs on, and how it is reached
    ownership     owners' labels, and sandboxes that end with their owner
    placement     shards placed with Ray
    hub_tasks     list_tasks: an EnvHub repository's envs, listed in a sandbox
    _docker       the Docker boundary (the only aiodocker importer)
"""

from __future__ import annotations

from .env import AsyncSandboxEnv
from .sync_sandbox import SandboxEnv, SandboxVectorEnv
from .vector import AsyncSandboxVectorEnv

__all__ = ["AsyncSandboxEnv", "AsyncSandboxVectorEnv", "SandboxEnv", "SandboxVectorEnv"]
