"""``rlmesh image bootstrap``: build the base image from Debian packages, with no registry."""

from __future__ import annotations

import logging
import tarfile
import tempfile
from pathlib import Path

import anyio

from ._docker import docker_client
from .base_image import PY_VERSION, bootstrap_tag
from .debian_rootfs import build_rootfs_context

__all__ = ["bootstrap_base_image"]

log = logging.getLogger("rlmesh.sandbox.bootstrap")


async def bootstrap_base_image(
    *, tag: str | None = None, suite: str | None = None, mirror: str | None = None, force: bool = False
) -> str:
    """Build a ``python:X.Y-slim`` equivalent from Debian packages and tag it.

    Sandboxes use it automatically when the default base cannot be pulled.

    Args:
        tag: The tag to give it (default ``rlmesh/base:pyX.Y``).
        suite: The Debian suite (default: the one whose Python matches the host's).
        mirror: The Debian mirror (default: the host's apt sources).
        force: Rebuild even if the tag exists.

    Returns:
        The tag.

    Raises:
        BootstrapError: debootstrap failed (with its output).
        ImageBuildError: Importing the root filesystem into Docker failed.
    """
    tag = tag or bootstrap_tag()
    async with docker_client() as docker:
        if not force and await docker.image_id(tag) is not None:
            log.info("base image %s already exists (use --force to rebuild)", tag)
            return tag
        with tempfile.TemporaryDirectory(prefix="rlmesh-bootstrap-") as tmp:
            ctx = Path(tmp) / "ctx"
            ctx.mkdir()
            await anyio.to_thread.run_sync(
                lambda: build_rootfs_context(ctx, python_version=PY_VERSION, suite=suite, mirror=mirror, log=log.info)
            )
            tar_path = Path(tmp) / "context.tar"

            def pack() -> None:
                with tarfile.open(tar_path, "w") as tar:
                    for item in ctx.iterdir():
                        tar.add(item, arcname=item.name)

            await anyio.to_thread.run_sync(pack)
            log.info("importing the root filesystem into Docker as %s", tag)
            with open(tar_path, "rb") as fileobj:
                await docker.build(
                    fileobj, tag, labels={"rlmesh.base": "1", "rlmesh.python": PY_VERSION},
                    on_output=lambda line: log.debug("build | %s", line),
                )
    log.info("base image %s is ready", tag)
    return tag
