"""The base a sandbox image builds on, and pulls: which base, and what rlmesh remembers of failures.

``base_image=`` (or ``RLMESH_BASE_IMAGE``) wins; otherwise ``python:X.Y-slim`` for the host's
Python, pulled when missing unless ``RLMESH_PULL_POLICY=never``; without a registry, the base
that ``rlmesh image bootstrap`` built from Debian packages. A failed pull is remembered for the
process, and on this machine for ``RLMESH_PULL_RETRY`` seconds, so that an air-gapped machine
does not try (and warn) on every start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from ..errors import BaseImageError, InvalidArgumentError, SandboxError
from ._docker import DockerClient
from .cache import cache_dir

__all__ = ["PY_VERSION", "bootstrap_tag", "default_base_image", "resolve_base_image", "try_pull"]

log = logging.getLogger("rlmesh.sandbox.image")  # the records users know, from where they always came

PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def default_base_image() -> str:
    """``python:X.Y-slim`` for the host's Python."""
    return f"python:{PY_VERSION}-slim"


def bootstrap_tag() -> str:
    """The tag ``rlmesh image bootstrap`` gives the base it builds from Debian packages."""
    return f"rlmesh/base:py{PY_VERSION}"


_pull_failures: dict[str, str] = {}
_fallback_warned: set[str] = set()


async def resolve_base_image(docker: DockerClient, base_image: str | None = None) -> tuple[str, str]:
    """Choose the base image and return ``(reference, image id)``.

    ``base_image`` (or ``RLMESH_BASE_IMAGE``) wins; otherwise ``python:X.Y-slim``,
    pulled when missing (unless ``RLMESH_PULL_POLICY=never``); when it cannot be pulled, the base built by
    ``rlmesh image bootstrap`` is used, and a warning says so.

    Raises:
        BaseImageError: No usable base image exists.
    """
    explicit = base_image or os.environ.get("RLMESH_BASE_IMAGE") or None
    candidate = explicit or default_base_image()
    image_id = await docker.image_id(candidate)
    if image_id is not None:
        return candidate, image_id
    error = await try_pull(docker, candidate)
    if error is None:
        image_id = await docker.image_id(candidate)
        if image_id is not None:
            return candidate, image_id
        error = "the pull reported success but the image is not there"
    boot = bootstrap_tag()
    if explicit is None:
        boot_id = await docker.image_id(boot)
        if boot_id is not None:
            if candidate not in _fallback_warned:
                _fallback_warned.add(candidate)
                # A warning, unless the user forbade pulls: then this is what they asked for.
                never = os.environ.get("RLMESH_PULL_POLICY") == "never"
                log.log(logging.INFO if never else logging.WARNING,
                        "base image %s is not available (%s); using %s, built by `rlmesh image bootstrap`",
                        candidate, error, boot)
            return boot, boot_id
    raise BaseImageError(
        f"base image {candidate} is not available locally and cannot be pulled ({error}). "
        + (
            f"Build {explicit} locally or pick another base_image."
            if explicit
            else f"Without a registry, build one from Debian packages with `rlmesh image bootstrap` "
            f"(it creates {boot}), or pass base_image= / set RLMESH_BASE_IMAGE."
        )
    )


async def try_pull(docker: DockerClient, ref: str) -> str | None:
    """Pull ``ref`` unless ``RLMESH_PULL_POLICY=never``; returns None, or why it is not available.

    A failure is remembered for the rest of the process, and on this machine for
    ``RLMESH_PULL_RETRY`` seconds (default 3600), so an air-gapped machine does not try (and
    warn) on every start.
    """
    if ref in _pull_failures:
        return _pull_failures[ref]
    remembered = _remembered_failure(ref)
    if remembered is not None:
        _pull_failures[ref] = remembered
        _fallback_warned.add(ref)  # it was said when the pull failed
        log.info("not pulling %s: it failed %s", ref, remembered)
        return remembered
    policy = os.environ.get("RLMESH_PULL_POLICY", "missing")
    if policy == "never":
        return "RLMESH_PULL_POLICY=never forbids pulling"
    if policy != "missing":
        raise InvalidArgumentError(f"RLMESH_PULL_POLICY must be 'missing' or 'never', got {policy!r}")
    timeout = float(os.environ.get("RLMESH_PULL_TIMEOUT", "30"))
    log.info("pulling base image %s", ref)
    try:
        await docker.pull(ref, timeout)
    except TimeoutError:
        _pull_failures[ref] = f"pull timed out after {timeout:g}s"
    except SandboxError as exc:
        _pull_failures[ref] = str(exc).split("\n")[0]
    else:
        return None
    _remember_failure(ref, _pull_failures[ref])
    return _pull_failures[ref]


def _failures_file() -> Path:
    return cache_dir() / "pull-failures.json"


def _remembered_failure(ref: str) -> str | None:
    try:
        entry = json.loads(_failures_file().read_text()).get(ref)
        retry = float(os.environ.get("RLMESH_PULL_RETRY", "3600"))
        if isinstance(entry, dict) and time.time() - float(entry["time"]) < retry:
            return f"{time.time() - float(entry['time']):.0f}s ago ({str(entry['error'])[:300]})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _remember_failure(ref: str, error: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        path = _failures_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[ref] = {"time": time.time(), "error": error}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
