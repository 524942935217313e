"""Sandbox image housekeeping: what rlmesh built, when it was last used, and pruning.

Images are labelled when they are built (``rlmesh.version``, ``rlmesh.packages``,
``rlmesh.imports``, ``rlmesh.source``, ``rlmesh.created``). Labels cannot change afterwards,
so the last use is kept in a small file of this machine's rlmesh cache
(``images-used.json``), written at every sandbox start. ``prune`` never removes an image a
sandbox container (running or not) uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InvalidArgumentError
from ._docker import docker_client
from .cache import cache_dir

__all__ = ["LABEL_IMAGE", "image_labels", "inspect_image", "list_images", "parse_age", "prune_images", "record_use"]

LABEL_IMAGE = "rlmesh.image"
_MAX_LABEL = 4000
LABEL_INSTALLED = "rlmesh.installed"


def image_labels(*, packages: Sequence[str], imports: Sequence[str], source: str,
                 system_packages: Sequence[str] = (), found_libraries: Mapping[str, str] | None = None,
                 installed: Sequence[str] = ()) -> dict[str, str]:
    """The labels a sandbox image is built with. ``installed`` (the lock: ``name==version`` of
    every distribution pip installed) is kept whole, never cut."""
    return {
        LABEL_INSTALLED: json.dumps(list(installed)),
        "rlmesh.found-libraries": json.dumps(dict(found_libraries or {}))[:_MAX_LABEL],
        LABEL_IMAGE: "1",
        "rlmesh.version": __version__,
        "rlmesh.packages": json.dumps(list(packages))[:_MAX_LABEL],
        "rlmesh.system-packages": json.dumps(list(system_packages))[:_MAX_LABEL],
        "rlmesh.imports": json.dumps(list(imports))[:_MAX_LABEL],
        "rlmesh.source": source[:200],
        "rlmesh.created": str(int(time.time())),
    }


def _uses_file() -> Path:
    return cache_dir() / "images-used.json"


def _read_uses() -> dict[str, float]:
    try:
        data = json.loads(_uses_file().read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, (int, float))}


def record_use(image_id: str) -> None:
    """Note that a sandbox started from ``image_id`` now (best effort: never fails a start)."""
    with contextlib.suppress(OSError):
        uses = _read_uses()
        uses[image_id] = time.time()
        path = _uses_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(uses))
        os.replace(tmp, path)


def parse_age(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` (or plain seconds) in seconds.

    Raises:
        InvalidArgumentError: Anything else.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InvalidArgumentError(f"an age is a number with s, m, h, d or w, such as '7d'; got {text!r}")
    return value


def _row(info: dict[str, Any], uses: dict[str, float], in_use: set[str]) -> dict[str, Any]:
    labels = info.get("Labels") or {}
    image_id = str(info.get("Id", ""))
    created = float(labels.get("rlmesh.created") or info.get("Created") or 0)
    return {
        "id": image_id.removeprefix("sha256:")[:12],
        "image_id": image_id,
        "tags": [t for t in info.get("RepoTags") or [] if t != "<none>:<none>"],
        "size_mb": round(float(info.get("Size") or 0) / 1e6, 1),
        "version": labels.get("rlmesh.version", "?"),
        "source": labels.get("rlmesh.source", ""),
        "packages": _json_list(labels.get("rlmesh.packages")),
        "system_packages": _json_list(labels.get("rlmesh.system-packages")),
        "found_libraries": _json_dict(labels.get("rlmesh.found-libraries")),
        "installed": _json_list(labels.get(LABEL_INSTALLED)),
        "imports": _json_list(labels.get("rlmesh.imports")),
        "created": created,
        "last_used": uses.get(image_id, created),
        "in_use": image_id in in_use,
    }


def _json_list(text: str | None) -> list[Any]:
    with contextlib.suppress(ValueError, TypeError):
        value = json.loads(text or "[]")
        if isinstance(value, list):
            return value
    return []


def _json_dict(text: str | None) -> dict[str, Any]:
    with contextlib.suppress(ValueError, TypeError):
        value = json.loads(text or "{}")
        if isinstance(value, dict):
            return value
    return {}


async def list_images() -> list[dict[str, Any]]:
    """Sandbox images on the engine, newest first: tags, size, labels, last use, whether in use."""
    async with docker_client() as docker:
        images = await docker.list_images({LABEL_IMAGE: "1"})
        in_use = {str(c.get("ImageID", "")) for c in await docker.list_containers({})}
    uses = _read_uses()
    rows = [_row(info, uses, in_use) for info in images]
    return sorted(rows, key=lambda r: (-r["created"], r["image_id"]))


async def inspect_image(ref: str) -> dict[str, Any]:
    """One sandbox image's row (see :func:`list_images`), found by tag or id prefix.

    Raises:
        InvalidArgumentError: No sandbox image matches.
    """
    for row in await list_images():
        if ref in row["tags"] or row["image_id"].removeprefix("sha256:").startswith(ref.removeprefix("sha256:")):
            return row
    raise InvalidArgumentError(f"no rlmesh sandbox image matches {ref!r}; `rlmesh image ls` lists them")


async def prune_images(*, unused_for: float | None = None, other_versions: bool = False,
                       dry_run: bool = False) -> list[dict[str, Any]]:
    """Remove sandbox images unused for ``unused_for`` seconds, or (``other_versions``) built by
    another rlmesh version; never one a container uses. Returns the rows removed (or, with
    ``dry_run``, that would be).
    """
    if unused_for is None and not other_versions:
        raise InvalidArgumentError("say what to prune: an age (--unused-for 7d), --other-versions, or both")
    now = time.time()
    chosen = [
        row for row in await list_images()
        if not row["in_use"] and (
            (unused_for is not None and now - row["last_used"] >= unused_for)
            or (other_versions and row["version"] != __version__)
        )
    ]
    if dry_run:
        return chosen
    removed = []
    async with docker_client() as docker:
        for row in chosen:
            # Untagged (dangling) images go by id; one still needed by a child image stays.
            results = [await docker.remove_image(ref) for ref in row["tags"] or [row["image_id"]]]
            if any(results):
                removed.append(row)
    return removed
