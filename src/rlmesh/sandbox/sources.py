"""Sandbox sources: what a source string names, the gates it must pass, and fetching.

Forms:

* a Gymnasium id (``CartPole-v1``, ``my_pkg:MyEnv-v0``, or explicitly ``gym://CartPole-v1``)
  or a ``module:factory`` (explicitly ``py://module:factory``): rlmesh builds an image and serves it;
* ``hf://owner/repo[@revision][:ENTRY.py][:suite[/task]]``: a Hugging Face EnvHub repository
  (its entry file, default ``env.py``, and the env to pick; see :mod:`rlmesh.server.envhub_selector`),
  fetched on the host and baked into the image; needs ``trust_remote_code=True``, and a full
  40-hex commit unless ``allow_unpinned_hf=True``;
* ``docker://image:tag``, ``image://image:tag``, or a bare ``name:tag``: a prebuilt image that
  already serves rlmesh; it is run as it is, never built. A bare name without a tag is used only
  if it exists locally.

A bare ``name:tag`` that reads both ways (``my_pkg:make_env``) is an image when one exists
locally; otherwise a factory, silently when the doubt is settled (a build option, which images
do not take, was given: ``packages=``, ``system_packages=``, ``base_image=`` or ``rebuild=``; or
its module imports on the host), and with a warning naming ``py://`` and ``docker://`` when it is not.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import anyio

from ..errors import SourceError
from ..protocol.options import FACTORY_PATTERN, is_gym_id, is_versioned
from ..server.envhub_selector import DEFAULT_ENTRY, HubSelector, parse_selector
from ._docker import DockerClient

__all__ = ["GymSource", "HubSource", "ImageSource", "Source", "fetch_hub_repo", "parse_source", "resolve_source"]

log = logging.getLogger("rlmesh.sandbox.sources")

_HF = re.compile(r"^hf://(?P<repo>[^@:]*)(?:@(?P<rev>[^:]*))?(?::(?P<sel>.*))?$")
# Near misses of hf:// (hf:/o/r, hf:o/r, hf//o/r, hf:///o/r, HF://o/r): caught on the host, before
# anything is built. A bare hf/o/r is a valid image name, and hf:name a valid module:factory.
_HF_NEAR_MISS = re.compile(r"^hf(?::/?(?!/)|:///+|//+|://)(?=[^/])", re.IGNORECASE)
_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_REVISION = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_IMAGE_REF = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


@dataclass(frozen=True)
class GymSource:
    """A Gymnasium id or ``module:factory`` served from an image rlmesh builds."""

    source: str

    @property
    def target(self) -> str:
        """What the server inside is given (``py://`` removed: the server reads a factory as one)."""
        return self.source.removeprefix("py://")

    def describe(self) -> str:
        """How the resolution is logged."""
        kind = "Gymnasium id" if is_gym_id(self.source) else "module:factory"
        return f"{kind} {self.target.removeprefix('gym://')!r} (rlmesh builds the image)"


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face EnvHub repository."""

    repo_id: str
    revision: str | None
    suite: str | None
    task: str | None
    entry: str | None = None

    @property
    def selector(self) -> str | None:
        """``[ENTRY.py][:SUITE[/TASK]]`` as the server reads it, or None."""
        return str(HubSelector(self.entry, self.suite, self.task)) or None

    def describe(self) -> str:
        """How the resolution is logged."""
        return (f"Hugging Face EnvHub repository {self.repo_id}@{self.revision or 'main'} "
                f"(entry file {self.entry or DEFAULT_ENTRY})")

    def with_commit(self, commit: str, suite: str | None = None, task: str | None = None) -> str:
        """The source string pinned to ``commit``, with the same entry file and ``suite``/``task``."""
        selector = str(HubSelector(self.entry, suite, task))
        return f"hf://{self.repo_id}@{commit}" + (f":{selector}" if selector else "")


@dataclass(frozen=True)
class ImageSource:
    """A prebuilt image that serves rlmesh itself (its ENTRYPOINT runs ``rlmesh serve``)."""

    ref: str
    explicit: bool

    def describe(self) -> str:
        """How the resolution is logged."""
        return f"prebuilt image {self.ref!r} (run as it is, no build)"


Source = GymSource | HubSource | ImageSource


def parse_source(source: str, *, trust_remote_code: bool = False, allow_unpinned_hf: bool = False) -> Source:
    """Parse a source string and apply the ``hf://`` gates, before anything is fetched or run.

    Bare ``name:tag`` strings that could be either an image or a factory are returned as a
    :class:`GymSource` here and settled by :func:`resolve_source`, which can ask Docker.

    Raises:
        SourceError: Malformed, or a flag that the source does not allow.
    """
    if not isinstance(source, str) or not source.strip():
        raise SourceError(f"source must be a non-empty string, got {source!r}")
    web = _HF_WEB.match(source)
    if web is not None:
        repo, rev = web.group("repo"), web.group("rev")
        pinned = f"hf://{repo}@{rev}" if rev and _SHA.match(rev) else f"hf://{repo}@<40-hex sha>"
        raise SourceError(
            f"{source!r} is a web page of the Hugging Face Hub, not a source: an EnvHub repository is "
            f"{pinned} (pinned to a commit: the SHA is on the repository's \"Files\" tab, or from "
            f"`python -c \"from huggingface_hub import HfApi; print(HfApi().model_info('{repo}').sha)\"`), "
            "with trust_remote_code=True once you have reviewed its code"
        )
    fixed = _hf_near_miss(source)
    if fixed is not None:
        raise SourceError(f"{source!r} is not a source rlmesh reads: did you mean {fixed!r}? "
                          "(an EnvHub repository is hf://owner/repo[@sha][:...], with two slashes)")
    if source.startswith("hf://"):
        hub = _parse_hf(source)
        if not trust_remote_code:
            raise SourceError(
                f"{source} runs code from a Hugging Face repository: pass trust_remote_code=True once "
                "you have reviewed it"
            )
        if (hub.revision is None or not _SHA.match(hub.revision)) and not allow_unpinned_hf:
            what = "no revision" if hub.revision is None else f"revision {hub.revision!r}"
            selector = f":{hub.selector}" if hub.selector else ""
            raise SourceError(
                f"{source} is not pinned to a full 40-hex commit SHA ({what}; a branch, tag or short hash "
                f"can move or be ambiguous): pin it as hf://{hub.repo_id}@<40-hex sha>{selector}, the SHA "
                f"from `python -c \"from huggingface_hub import HfApi; print(HfApi().model_info("
                f"'{hub.repo_id}', revision='{hub.revision or 'main'}').sha)\"`, or pass allow_unpinned_hf=True"
            )
        return hub
    for flag, value in (("trust_remote_code", trust_remote_code), ("allow_unpinned_hf", allow_unpinned_hf)):
        if value:
            raise SourceError(f"{flag} applies to hf:// sources only, not to {source!r}")
    for scheme in ("docker://", "image://"):
        if source.startswith(scheme):
            ref = source.removeprefix(scheme)
            if not _IMAGE_REF.match(ref):
                raise SourceError(f"{ref!r} is not a valid image reference (in {source!r})")
            return ImageSource(ref, explicit=True)
    if source.startswith("gym://"):
        if not is_gym_id(source.removeprefix("gym://")):
            raise SourceError(f"{source!r} is not a Gymnasium id")
        return GymSource(source)
    if source.startswith("py://"):
        target = source.removeprefix("py://")
        if not FACTORY_PATTERN.match(target) or is_gym_id(target):
            raise SourceError(
                f"{source!r} is not a py://module:factory (a module, a colon, a callable: py://my_pkg:make_env); "
                "a Gymnasium id goes as gym://"
            )
        return GymSource(source)
    if "://" in source:
        raise SourceError(
            f"unknown source scheme in {source!r}: use a Gymnasium id, module:factory, gym://, py://, hf://, "
            "docker:// or image://"
        )
    return GymSource(source)


_HF_WEB = re.compile(
    r"https?://(?:www\.)?(?:huggingface\.co|hf\.co)/(?:spaces/|datasets/)?(?P<repo>[\w.-]{1,96}/[\w.-]{1,96})"
    r"(?:/(?:tree|blob|commit)/(?P<rev>[\w.-]{1,64}))?"
)


def _hf_near_miss(source: str) -> str | None:
    """The ``hf://`` source that ``source`` was likely meant to be, or None."""
    m = _HF_NEAR_MISS.match(source)
    if m is None or (source.startswith("hf://") and not source.startswith("hf:///")):
        return None
    rest = source[m.end():]
    if m.group(0) == "hf:" and ("/" not in rest or is_versioned(rest)):
        return None  # hf:name is a module:factory, hf:Ns/Env-v0 a Gymnasium id
    return "hf://" + rest


def _parse_hf(source: str) -> HubSource:
    m = _HF.match(source)
    if m is None:
        raise SourceError(
            f"malformed hf source {source!r}: use hf://owner/repo[@revision][:ENTRY.py][:SUITE[/TASK]]"
        )
    repo, rev, sel = m.group("repo"), m.group("rev"), m.group("sel")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) and "--" not in p and ".." not in p for p in parts):
        raise SourceError(
            f"malformed repository {repo!r} in {source!r}: use owner/name (letters, digits, '-', '_', '.')"
        )
    if rev is not None and (not _REVISION.match(rev) or ".." in rev):
        raise SourceError(f"malformed revision {rev!r} in {source!r}: a commit SHA, branch or tag")
    selector = HubSelector()
    if sel is not None:
        try:
            selector = parse_selector(sel)
        except SourceError as exc:
            raise SourceError(
                f"malformed selector {sel!r} in {source!r}: {exc} "
                "(the grammar: [:ENTRY.py][:SUITE[/TASK]], e.g. :envs/task_a.py or :suite_1/0)"
            ) from None
    return HubSource(repo, rev, selector.suite, selector.task, selector.entry)


async def resolve_source(docker: DockerClient, parsed: Source, *, build_options: bool = False) -> Source:
    """Settle bare strings that may name an image, and log what the source resolved to.

    ``build_options``: options only images rlmesh builds take (``packages=``, ``system_packages=``,
    ``base_image=``, ``rebuild=``) were given, so a bare ``module:factory`` is not a prebuilt image.
    """
    resolved = parsed
    if isinstance(parsed, GymSource) and not parsed.source.startswith(("gym://", "py://")):
        text = parsed.source
        if _IMAGE_REF.match(text) and not is_versioned(text):
            if await docker.image_id(text) is not None:
                resolved = ImageSource(text, explicit=False)
            elif ":" in text.rsplit("/", 1)[-1]:
                if not FACTORY_PATTERN.match(text):
                    resolved = ImageSource(text, explicit=False)  # name:tag: an image, pulled if missing
                elif not (build_options or factory_module_found(text)):
                    log.warning(
                        "%r is no local image, so it is read as a module:factory; write py://%s for a "
                        "factory, or docker://%s for an image to pull", text, text, text,
                    )
    log.info("source %s resolved as a %s", _name(parsed), resolved.describe())
    return resolved


def factory_module_found(text: str) -> bool:
    """Whether the module of ``module:factory`` (its top-level package) imports on this host.

    Only finders run (``importlib.util.find_spec`` of the top-level name): no code is executed.
    """
    top = text.partition(":")[0].split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _name(source: Source) -> str:
    if isinstance(source, GymSource):
        return repr(source.source)
    if isinstance(source, HubSource):
        sel = f":{source.selector}" if source.selector else ""  # entry file and env
        rev = f"@{source.revision}" if source.revision else ""
        return f"'hf://{source.repo_id}{rev}{sel}'"
    return repr(source.ref)


async def fetch_hub_repo(source: HubSource) -> tuple[Path, str]:
    """Fetch the repository on the host with huggingface_hub; returns ``(directory, commit)``.

    ``snapshot_download`` honours HF_TOKEN, HF_ENDPOINT, HF_HOME/HF_HUB_CACHE and HF_HUB_OFFLINE.

    Raises:
        SourceError: huggingface_hub is missing, or the repository or revision cannot be fetched.
    """
    try:
        from huggingface_hub import snapshot_download  # the extra rlmesh[hf]
    except ImportError as exc:
        raise SourceError("hf:// sources need huggingface_hub: pip install 'rlmesh[hf]'") from exc

    def fetch() -> str:
        return str(snapshot_download(source.repo_id, revision=source.revision))

    try:
        path = Path(await anyio.to_thread.run_sync(fetch, abandon_on_cancel=True))
    except Exception as exc:  # huggingface_hub's errors are translated here, at one place
        raise SourceError(
            f"cannot fetch hf://{source.repo_id}@{source.revision or 'main'}: {type(exc).__name__}: {exc}"
        ) from exc
    commit = path.name
    log.info("hf://%s@%s is commit %s", source.repo_id, source.revision or "main", commit)
    check_snapshot(path, source)
    return path, commit


def check_snapshot(path: Path, source: HubSource) -> None:
    """Check a fetched repository on the host, before it is copied into an image.

    Every symlink must stay inside the repository's cache folder (a Hugging Face snapshot links
    each file to its blob store, next to it): the image build follows links, so one pointing
    elsewhere would copy a host file into the sandbox. The entry file must be there.

    Raises:
        SourceError: A link points outside, or the entry file is missing.
    """
    inside = path.parents[1].resolve() if path.parent.name == "snapshots" else path.resolve()
    name = f"hf://{source.repo_id}@{path.name}"
    for root, dirs, files in os.walk(path):
        for item in (*dirs, *files):
            link = Path(root, item)
            if link.is_symlink():
                target = link.resolve()
                if not target.is_relative_to(inside) or not target.exists():
                    raise SourceError(
                        f"{name}: {link.relative_to(path)} is a symlink to {os.readlink(link)}, outside the "
                        "repository; rlmesh copies no host file into a sandbox. Remove the link from the repository"
                    )
    entry = source.entry or DEFAULT_ENTRY
    if not (path / entry).is_file():
        found = sorted(str(p.relative_to(path)) for p in path.rglob("*.py"))[:20]
        hint = f"its Python files: {found}"
        if source.entry is None and found:
            hint = f"name the entry file, e.g. hf://{source.repo_id}@{path.name}:{found[0]} ({hint})"
        raise SourceError(f"{name} has no {entry}: {hint}")
