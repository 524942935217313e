"""Which Debian packages an image gets: the listed ones, a GL preset's, and the found ones.

Found: after pip resolved the wheels on the host, the shared libraries their extension modules
need that the base image lacks (:mod:`.shared_libs`) are mapped to the Debian packages that ship
them (:func:`.debs.library_packages`, checked against each ``.deb``'s own file list), and all are
fetched in one apt resolution with the listed ones (:func:`.debs.fetch_debs`), offline-capable
like the rest. A library that cannot be mapped fails the build, listing every such library with
what to do, before anything is built.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImageBuildError
from ._docker import DockerClient
from .debs import base_image_file, deb_files, fetch_debs, library_packages
from .shared_libs import MissingLibrary, ld_cache_names, missing_libraries

__all__ = ["SystemPackages", "resolve_system_packages"]

log = logging.getLogger("rlmesh.sandbox.image")

@dataclass
class SystemPackages:
    """What :func:`resolve_system_packages` put in an image's context."""

    files: list[str] = field(default_factory=list)  # the .deb files, in the build context's debs/
    found: dict[str, str] = field(default_factory=dict)  # missing library -> the package added for it


async def resolve_system_packages(
    docker: DockerClient, *, base_ref: str, base_id: str, listed: Sequence[str], wheels: Path, dest: Path,
    ignore: Sequence[str] = (), report: Callable[[str, str], None] | None = None,
) -> SystemPackages:
    """Fetch into ``dest`` the ``.deb`` files for ``listed`` and for the libraries the wheels in
    ``wheels`` need that the base lacks (except those matching a pattern of ``ignore``).

    Raises:
        ImageBuildError: A library that no Debian package could be found for (every one listed),
            or apt failing.
    """
    cache_file = await base_image_file(docker, base_ref, base_id, "/etc/ld.so.cache", missing_ok=True)
    if cache_file is None:
        log.warning("the base image %s has no /etc/ld.so.cache, so rlmesh cannot tell which shared libraries it "
                    "lacks: only the listed system_packages are installed", base_ref)
        return SystemPackages(await fetch_debs(docker, base_ref, base_id, listed, dest) if listed else [])
    known = ld_cache_names(cache_file.read_bytes())
    missing = [m for m in missing_libraries(sorted(wheels.glob("*.whl")), known)
               if not any(fnmatch.fnmatchcase(m.name, pattern) for pattern in ignore)]
    mapped = await library_packages([m.name for m in missing])
    unmapped = [m for m in missing if m.name not in mapped]
    if unmapped:
        raise ImageBuildError(_unmapped_message(unmapped))
    found = {m.name: mapped[m.name] for m in missing}
    packages = list(dict.fromkeys([*listed, *found.values()]))
    if not packages:
        return SystemPackages()
    added = ", ".join(f"{pkg} ({lib})" for lib, pkg in found.items())
    if found and report is not None:
        report("resolve", f"system packages for missing libraries: {added}")
    try:
        files = await fetch_debs(docker, base_ref, base_id, packages, dest)
    except ImageBuildError as exc:
        if not found:
            raise
        raise ImageBuildError(
            f"{exc.message} (the packages found for missing shared libraries: "
            f"{', '.join(f'{pkg} for {lib}' for lib, pkg in found.items())})", exit_code=exc.exit_code, logs=exc.logs,
        ) from exc
    shipped: set[str] = set()
    for name in files:
        shipped |= await deb_files(dest / name)
    wrong = [m for m in missing if m.name not in shipped]
    if wrong:
        raise ImageBuildError(_unmapped_message(wrong, guessed=found))
    if found:
        log.info("added system packages for missing shared libraries: %s", added)
    return SystemPackages(files, found)


def _unmapped_message(libraries: list[MissingLibrary], guessed: dict[str, str] | None = None) -> str:
    lines = [f"the installed packages need {len(libraries)} shared "
             f"librar{'y' if len(libraries) == 1 else 'ies'} that the base image lacks and that rlmesh could not "
             "map to a Debian package:"]
    for lib in libraries:
        users = ", ".join(lib.needed_by[:2]) + (f" and {len(lib.needed_by) - 2} more" if len(lib.needed_by) > 2 else "")
        tried = f"; {guessed[lib.name]} does not ship it" if guessed and lib.name in guessed else ""
        lines.append(f"  {lib.name} (needed by {users}{tried}): add the Debian package that ships it to "
                     f"system_packages=[...] (`apt-file search {lib.name}` finds it), or, if nothing loads it at run "
                     f"time, pass ignore_libraries=[{lib.name!r}]")
    return "\n".join(lines)
