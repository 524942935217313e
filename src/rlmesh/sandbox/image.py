"""Sandbox images: host-side wheel resolution and cached offline builds (the base: :mod:`.base_image`).

An image is tagged ``rlmesh-sandbox:<hash>`` where the hash covers everything
that goes into it: the base image id, the packages (and the bytes of local
wheel files and project directories), the imports, extra files, and rlmesh's
own version and source. Make kwargs, ``num_envs`` and the task choice are run
time arguments and stay out of the hash, so changing them reuses the image.

Packages are resolved and downloaded on the host with pip (so a private index
or proxy configured for pip on the host just works) into a wheel cache, then
installed with ``--no-index`` during the build, which has no network.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from .. import __version__
from ..errors import ImageBuildError, InvalidArgumentError, SandboxError
from ._docker import DockerClient, docker_client
from .base_image import PY_VERSION, bootstrap_tag, default_base_image, resolve_base_image, try_pull
from .cache import cache_dir
from .housekeeping import image_labels, record_use
from .library_hints import missing_library_note
from .options import GL_PRESETS, UNPRIVILEGED_UID, listed_system_packages
from .output_tail import OutputTail
from .progress import ProgressOption, Reporter
from .system_packages import resolve_system_packages

__all__ = [  # the base image's names too, where callers have always found them
    "PY_VERSION",
    "SERVER_REQUIREMENTS",
    "ImageSpec",
    "bootstrap_tag",
    "default_base_image",
    "ensure_image",
    "remove_replaced_image",
    "resolve_base_image",
    "try_pull",
]

log = logging.getLogger("rlmesh.sandbox.image")

# What the in-container server itself imports; pip merges these with the user's pins.
SERVER_REQUIREMENTS = ("numpy", "orjson", "gymnasium>=1.1")


def server_requirements(packages: Sequence[str]) -> list[str]:
    """What the in-container server needs, with Gymnasium pinned to the host's version.

    Parity with the host needs the same Gymnasium on both sides, so the host's version holds
    whenever ``packages`` admits it: an entry that names gymnasium without a version, with extras
    (``gymnasium[mujoco]``) or with a range the host's version is in. Only an entry that rules the
    host's version out wins, with a warning (once) that says so.
    """
    host = importlib.metadata.version("gymnasium")
    # uvloop (the extra rlmesh[uvloop]) speeds up the server and relay inside, as on the host.
    extra = ["uvloop"] if importlib.util.find_spec("uvloop") is not None else []
    named = [req for req in (_requirement(p) for p in packages) if req is not None and canonicalize_name(req.name) == "gymnasium"]
    other = [req for req in named if not req.specifier.contains(host, prereleases=True)]
    if not other:
        return ["numpy", "orjson", f"gymnasium=={host}", *extra]
    for req in other:
        if str(req) not in _skew_warned:
            _skew_warned.add(str(req))
            log.warning("packages asks for %s but the host runs gymnasium %s: parity with in-process envs on the "
                        "host is not guaranteed", req, host)
    return [*SERVER_REQUIREMENTS, *extra]


_skew_warned: set[str] = set()


def _requirement(text: str) -> Requirement | None:
    if os.path.exists(text):
        return None  # a local wheel or project directory
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None  # pip will say what is wrong with it
IMAGE_REPO = "rlmesh-sandbox"
# Not content: caches, and what `pip wheel` itself writes into a local project (build/, *.egg-info),
# which would otherwise change the hash after the first build.
_SKIP_DIRS = frozenset({"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", "node_modules", "build"})


@dataclass(frozen=True)
class ImageSpec:
    """Everything that goes into a sandbox image.

    Attributes:
        packages: pip requirement specifiers, local wheel files or project directories.
        imports: Modules that must import inside the image.
        files: Extra files baked into the image: destination path -> host path.
        requirement_files: pip requirements files (``-r``) resolved with the packages.
    """

    packages: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    requirement_files: tuple[str, ...] = ()
    system_packages: tuple[str, ...] = ()
    gl: str | None = None
    ignore_libraries: tuple[str, ...] = ()
    source: str = field(default="", compare=False)  # a label only: not part of the hash

    def __post_init__(self) -> None:
        for name, seq in (("packages", self.packages), ("imports", self.imports)):
            if isinstance(seq, str) or not all(isinstance(p, str) and p.strip() for p in seq):
                raise InvalidArgumentError(f"{name} must be a list of non-empty strings, got {seq!r}")
        for entry in self.imports:
            module, colon, hook = entry.partition(":")
            if not all(part.isidentifier() for part in module.split(".")) or (colon and not hook.isidentifier()):
                raise InvalidArgumentError(f"imports: {entry!r} is not a module name or 'module:function'")

    def content_hash(self, base_id: str) -> str:
        """The hash that names the image built from this spec on ``base_id``."""
        h = hashlib.sha256()
        for part in (base_id, PY_VERSION, __version__, _rlmesh_source_hash(), *server_requirements(self.packages)):
            h.update(part.encode() + b"\0")
        for pkg in self.packages:
            h.update(b"pkg\0" + pkg.encode() + b"\0")
            if os.path.exists(pkg):
                h.update(_tree_hash(Path(pkg)).encode())
        for module in self.imports:
            h.update(b"imp\0" + module.encode() + b"\0")
        for deb in sorted(self.system_packages):
            h.update(b"deb\0" + deb.encode() + b"\0")
        h.update(b"gl\0" + (self.gl or "").encode() + b"\0")
        for pattern in sorted(self.ignore_libraries):
            h.update(b"ignore-lib\0" + pattern.encode() + b"\0")
        for req in self.requirement_files:
            h.update(b"req\0" + _tree_hash(Path(req)).encode())
        for dest, src in sorted(self.files.items()):
            h.update(b"file\0" + dest.encode() + b"\0" + _tree_hash(Path(src)).encode())
        return h.hexdigest()[:20]


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            p = Path(root, name)
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


_source_hash: str | None = None


def _rlmesh_source_hash() -> str:
    global _source_hash
    if _source_hash is None:
        _source_hash = _tree_hash(Path(__file__).resolve().parents[1])
    return _source_hash


_inflight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Task[None]]] = (
    weakref.WeakKeyDictionary()
)


async def ensure_image(
    docker: DockerClient, spec: ImageSpec, *, base_image: str | None = None, rebuild: bool = False,
    progress: ProgressOption = None,
) -> tuple[str, str | None, str | None]:
    """Return the tag of an image for ``spec``, building it when it does not exist.

    Identical builds started at the same time on one loop build once.

    Returns:
        ``(tag, image_id, replaced)``: ``image_id`` is the image's id (its digest: a rebuild of
        the same requirements can resolve other versions under the same tag); ``replaced`` is the id of the image a rebuild moved the tag from, or
        None. It is not removed here: the caller removes it once the sandbox has started
        (:func:`remove_replaced_image`), so that a rebuild's start is not held up by it.

    Raises:
        BaseImageError: No base image.
        ImageBuildError: Resolving packages or building failed.
    """
    base_ref, base_id = await resolve_base_image(docker, base_image)
    tag = f"{IMAGE_REPO}:{spec.content_hash(base_id)}"
    image_id = await docker.image_id(tag)
    replaced, image_id = (image_id, None) if rebuild else (None, image_id)
    if image_id is not None:
        log.debug("reusing sandbox image %s", tag)
        record_use(image_id)
        return tag, image_id, None
    builds = _inflight.setdefault(asyncio.get_running_loop(), {})
    task = builds.get(tag)
    if task is None:
        task = asyncio.ensure_future(_build(spec, base_ref, tag, progress, docker.host))
        builds[tag] = task
        task.add_done_callback(lambda _t: builds.pop(tag, None))
    await asyncio.shield(task)
    built = await docker.image_id(tag)
    if built is not None:
        record_use(built)
    return tag, built, (replaced if replaced is not None and replaced != built else None)


async def remove_replaced_image(host: str | None, image_id: str) -> None:
    """Remove the image a rebuild moved its tag from (see :func:`ensure_image`).

    It stays when a container (or a child image) still uses it: ``rlmesh image prune`` finds it
    then; one already gone (another shard of the same start removed it) is fine. Any other
    failure is logged as a warning, never raised: the sandbox runs already.
    """
    try:
        async with docker_client(host) as docker:
            removed = await docker.remove_image(image_id)
    except SandboxError as exc:
        log.warning("could not remove the image %s replaced by the rebuild: %s; `rlmesh image prune "
                    "--unused-for 0s` removes it later", image_id[:19], str(exc).splitlines()[0])
        return
    if removed:
        log.info("removed the image %s replaced by the rebuild", image_id[:19])
    else:
        log.info("kept the image %s replaced by the rebuild: still in use, or already removed", image_id[:19])


async def _build(spec: ImageSpec, base_ref: str, tag: str, progress: ProgressOption, host: str | None) -> None:
    # Shared by every start waiting for this tag, and it outlives a cancelled one: it holds
    # its own Docker client rather than borrowing the first caller's.
    report = Reporter(progress, tag)
    try:
        async with docker_client(host) as docker:
            await _build_with(docker, spec, base_ref, tag, report)
        report("done", f"built {tag} in {time.monotonic() - report.started:.0f}s")
    finally:
        report.close()


async def _build_with(docker: DockerClient, spec: ImageSpec, base_ref: str, tag: str, report: Reporter) -> None:
    log.info("building sandbox image %s from %s", tag, base_ref)
    with tempfile.TemporaryDirectory(prefix="rlmesh-build-") as tmp:
        ctx = Path(tmp)
        wheels = ctx / "wheels"
        wheels.mkdir()
        reqs = [arg for req in spec.requirement_files for arg in ("-r", req)]
        # Requirements from a downloaded repository are not ours: binary wheels only (no build
        # code runs on the host), and what they bring stays out of the shared wheel cache.
        packages = [arg for p in spec.packages for arg in (("-r", p) if is_requirements_file(p) else (p,))]
        await _resolve_wheels(
            [*packages, *reqs], wheels,
            extra=["--only-binary=:all:"] if reqs else [], share=not reqs, report=report,
        )
        debs = ctx / "debs"
        debs.mkdir()
        listed = listed_system_packages(spec.system_packages, spec.gl)
        if listed:
            report("resolve", f"system packages: {' '.join(listed)}")
        base_id = await docker.image_id(base_ref) or base_ref
        system = await resolve_system_packages(docker, base_ref=base_ref, base_id=base_id, listed=listed,
                                               wheels=wheels, dest=debs, ignore=spec.ignore_libraries, report=report)
        installed = installed_distributions(wheels)
        dockerfile = _dockerfile(base_ref, spec, tag, has_debs=bool(system.files))
        tar_path = ctx / "context.tar"
        await anyio.to_thread.run_sync(_write_context, tar_path, dockerfile, wheels, spec)
        with open(tar_path, "rb") as fileobj:
            try:
                await docker.build(
                    fileobj, tag, labels=image_labels(packages=spec.packages, imports=spec.imports,
                                                      source=spec.source, system_packages=listed,
                                                      found_libraries=system.found, installed=installed),
                    on_output=lambda line: report("build", line, level=logging.INFO if line.startswith("Step ")
                                                  else logging.DEBUG),
                )
            except ImageBuildError as exc:
                raise explain_build_failure(exc, spec) from exc
    log.info("built sandbox image %s", tag)


_IMPORT_FAILED = re.compile(r"rlmesh: required import '(?P<module>[^']+)' failed: (?P<why>.*?)\. Add the package")
_NO_MODULE = re.compile(r"No module named '(?P<name>[\w.]{1,200})'")
# Modules whose distribution's name does not say so (when the host does not have it to ask).
_MODULE_DISTRIBUTIONS = {
    "cv2": "opencv-python", "PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "skimage": "scikit-image",
    "OpenGL": "pyopengl", "Box2D": "box2d", "google.protobuf": "protobuf", "attr": "attrs", "dateutil": "python-dateutil",
    "pkg_resources": "setuptools", "jwt": "pyjwt", "serial": "pyserial", "usb": "pyusb", "gi": "pygobject",
}


def explain_build_failure(exc: ImageBuildError, spec: ImageSpec | None = None) -> ImageBuildError:
    """Lead with what rlmesh's own check in the build said, instead of Docker's "The command ...
    returned a non-zero code".

    A failed ``imports=`` check names the module that is missing, which may be a dependency of
    the one imported, and the distribution to add to ``packages=`` (the one that provides it on
    this host, or a well-known one); a missing shared library gets the ``system_packages`` note
    instead. Advice ``spec`` has already taken is not given again. Another ``rlmesh: ...`` line of
    the failing step (the base image's Python, say) is put first. Other failures are returned as
    they are.
    """
    logs = exc.logs
    m = _IMPORT_FAILED.search(logs)
    if m is not None:
        message = f"imports: {m['module']!r} cannot be imported in the sandbox image ({m['why']}): " + _import_fix(
            m["module"], m["why"], spec)
    else:
        ours = [line.strip() for line in logs.splitlines() if line.strip().startswith("rlmesh: ")]
        if not ours:
            return exc
        message = ours[-1].removeprefix("rlmesh: ")
    return ImageBuildError(f"{message} ({exc.message.partition(': ')[2] or exc.message})", logs=logs)


def _import_fix(entry: str, why: str, spec: ImageSpec | None) -> str:
    """What to do about a failed import check (see :func:`explain_build_failure`)."""
    listed = listed_system_packages(spec.system_packages, spec.gl) if spec is not None else ()
    note = missing_library_note(why, "", listed=listed, gl=spec.gl if spec is not None else None)
    if note is not None:
        return note
    module = entry.partition(":")[0]
    missing = _NO_MODULE.search(why)
    if missing is not None:
        module = missing["name"]
    dist = _distribution(module)
    given = {canonicalize_name(r.name) for r in (_requirement(p) for p in (spec.packages if spec else ())) if r}
    if dist is not None and canonicalize_name(dist) in given:
        return (f"packages= has {dist!r} already, yet the module {module!r} is missing in the image: check that "
                f"this version of {dist} provides it (pip's output in the log says what was installed)")
    inner = "" if module == entry.partition(":")[0] else f"the module {module!r} (which it imports) is missing: "
    if dist is None:
        add = f"add the package that provides {module!r} to packages="
    else:
        add = f"add {dist!r} to your packages list" if spec is not None and spec.packages else f"add packages=[{dist!r}]"
    return f"{inner}{add}, or drop {entry!r} from imports="


def _distribution(module: str) -> str | None:
    """The distribution that provides ``module``: the host's, else a well-known one."""
    top = module.split(".")[0]
    found = importlib.metadata.packages_distributions().get(top)
    if found:
        return found[0]
    return _MODULE_DISTRIBUTIONS.get(module) or _MODULE_DISTRIBUTIONS.get(top)


async def _resolve_wheels(
    packages: Sequence[str], dest: Path, *, extra: Sequence[str] = (), share: bool = True,
    report: Reporter | None = None,
) -> None:
    """Resolve ``packages`` with the host's pip into ``dest`` (through the wheel cache).

    With ``share``, the resulting wheels are added to the cache for later builds.
    """
    cache = cache_dir() / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input",
        "--wheel-dir", str(dest), "--find-links", str(cache), *extra, *server_requirements(packages), *packages,
    ]
    log.info("resolving packages on the host: %s", " ".join([*server_requirements(packages), *packages]))
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    tail = OutputTail()
    async for raw in proc.stdout:
        line = tail.add(raw.decode(errors="replace").rstrip())
        # What pip fetches or builds is progress worth seeing on a long resolution.
        progress = line.startswith(("Collecting ", "Downloading ", "Building wheel", "Saved "))
        level = logging.INFO if progress else logging.DEBUG
        if report is not None:
            report("resolve", line, level=level)
        else:
            log.log(level, "pip | %s", line)
    code = await proc.wait()
    if code != 0:
        raise ImageBuildError(
            f"pip could not resolve the sandbox packages {list(packages)} on the host (exit {code}). "
            "Check the package names and versions, and that pip on this host can reach its index.",
            exit_code=code, logs=tail.text(),
        )
    if not share:
        return
    for whl in dest.glob("*.whl"):
        target = cache / whl.name
        if not target.exists():
            shutil.copy2(whl, target)


def is_requirements_file(package: str) -> bool:
    """Whether a ``packages=`` entry is a requirements file (a lock from ``rlmesh image lock``), not a
    requirement, a wheel or a project directory."""
    return os.path.isfile(package) and not package.endswith((".whl", ".tar.gz", ".zip"))


def installed_distributions(wheels: Path) -> list[str]:
    """``name==version`` of each wheel in ``wheels``: what pip installs in the image, exactly."""
    pins = []
    for whl in wheels.glob("*.whl"):
        try:
            name, version, _build, _tags = parse_wheel_filename(whl.name)
        except InvalidWheelFilename:
            continue
        pins.append(f"{name}=={version}")
    return sorted(pins, key=str.lower)


def _dockerfile(base_ref: str, spec: ImageSpec, tag: str, *, has_debs: bool = False) -> str:
    major, minor = sys.version_info[:2]
    lines = [
        f"FROM {base_ref}",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp",
        *([f"ENV {' '.join(f'{k}={v}' for k, v in GL_PRESETS[spec.gl][1].items())}"] if spec.gl else []),
        # Where a sandbox's socket lives (a volume shared with its relay, on other engines).
        "RUN mkdir -p /rlmesh && chmod 1777 /rlmesh",
        f"RUN python -c \"import sys; v = sys.version_info[:2]; sys.exit(0 if v == ({major}, {minor}) else "
        f"'rlmesh: the base image has Python %d.%d but the host has {major}.{minor}; packages are resolved "
        f"on the host, so pick a base_image with Python {major}.{minor}' % v)\"",
        *([
            "COPY debs /opt/rlmesh/debs",
            "RUN dpkg -i /opt/rlmesh/debs/*.deb && rm -rf /opt/rlmesh/debs",  # offline, like the wheels
        ] if has_debs else []),
        "COPY wheels /opt/rlmesh/wheels",
        "RUN python -m pip install --no-index --no-cache-dir --disable-pip-version-check "
        "--root-user-action=ignore --find-links /opt/rlmesh/wheels /opt/rlmesh/wheels/*.whl "
        "&& rm -rf /opt/rlmesh/wheels",
    ]
    if spec.files:
        lines.append("COPY files/ /")
    lines.append("COPY rlmesh /opt/rlmesh/lib/rlmesh")
    # Bytecode now: the root filesystem is read-only at run time, so every start would compile.
    lines.append("RUN python -m compileall -q /opt/rlmesh/lib")
    # A .pth file, not PYTHONPATH: rlmesh is found whatever environment the user gives the container.
    lines.append("RUN python -c \"import site; open(site.getsitepackages()[0] + '/rlmesh-lib.pth', 'w')"
                 ".write('/opt/rlmesh/lib\\n')\"")
    if spec.imports:
        # As the sandbox user, the way the env will import them (and with no network: the build has none).
        lines.append(f"USER {UNPRIVILEGED_UID}:{UNPRIVILEGED_UID}")
        lines.append("RUN python -m rlmesh.server.check " + " ".join(spec.imports))
    lines.append(f'LABEL rlmesh.sandbox.image="{tag}"')
    return "\n".join(lines) + "\n"


def _write_context(tar_path: Path, dockerfile: str, wheels: Path, spec: ImageSpec) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if any(part in _SKIP_DIRS for part in Path(info.name).parts):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode |= 0o444 if info.isfile() else 0o555
        return info

    # dereference: a Hugging Face snapshot is a tree of symlinks into its blob store.
    with tarfile.open(tar_path, "w", dereference=True) as tar:
        data = dockerfile.encode()
        ti = tarfile.TarInfo("Dockerfile")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
        tar.add(wheels, arcname="wheels", filter=clean)
        tar.add(wheels.parent / "debs", arcname="debs", filter=clean)
        tar.add(Path(__file__).resolve().parents[1], arcname="rlmesh", filter=clean)
        for dest, src in spec.files.items():
            tar.add(src, arcname="files/" + dest.lstrip("/"), filter=clean)
