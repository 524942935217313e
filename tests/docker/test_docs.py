"""Every code block in the user guides runs, in order, one document at a time.

``python`` blocks run as programs and ``bash`` blocks as ``bash -euo pipefail`` scripts, in a
scratch directory, with this interpreter's ``bin`` first on ``PATH``. A bash block may start a
server in the background (a line ending in ``&``): the harness waits until the addresses the
block names accept connections, and stops the block's processes when the document ends. The
examples the guides point at run too.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_hf import hub_cache  # noqa: F401  (the fixture)

DOCS = ["quickstart.md", "sandbox.md", "remote.md", "async.md", "evaluate.md", "troubleshooting.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
ADDRESS = re.compile(r"--address (unix://\S+|tcp://\S+)")


def blocks(doc: str) -> list[tuple[str, str]]:
    text = (ROOT / "docs" / doc).read_text()
    found = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    assert found, f"{doc} has no code blocks"
    for lang, _ in found:
        assert lang in ("python", "bash", "text"), f"{doc}: a ```{lang or '(none)'} block: say python, bash or text"
    return [(lang, code) for lang, code in found if lang != "text"]


def wait_for(address: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if address.startswith("unix://"):
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(address[len("unix://"):])
            else:
                host, _, port = address[len("tcp://"):].rpartition(":")
                socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {address}")


def run_document(doc: str, tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    groups: list[int] = []
    try:
        for i, (lang, code) in enumerate(blocks(doc)):
            argv = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
            background = code.rstrip().endswith("&")
            log = tmp_path / f"block-{i + 1}.log"
            with log.open("w") as out:
                proc = subprocess.Popen(argv, cwd=tmp_path, env=env, start_new_session=True,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            groups.append(proc.pid)
            try:
                proc.wait(timeout=30 if background else 600)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{doc}, block {i + 1} ({lang}) did not finish:\n{code}") from None
            if proc.returncode != 0:
                raise AssertionError(f"{doc}, block {i + 1} ({lang}) exited {proc.returncode}:\n{code}\n"
                                     f"--- output ---\n{log.read_text()}")
            for address in ADDRESS.findall(code) if background else ():
                try:
                    wait_for(address, time.monotonic() + 30)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n--- output ---\n{log.read_text()}") from None
    finally:
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.5)  # servers remove their sockets on SIGTERM


@pytest.mark.parametrize("doc", DOCS)
def test_guide_code_blocks_run(doc: str, tmp_path: Path) -> None:
    run_document(doc, tmp_path)


def test_the_readme_links_every_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS:
        assert f"docs/{doc}" in readme, doc


@pytest.mark.parametrize("argv", [
    ["examples/python/sandbox/gym_sandbox.py"],
    ["examples/python/sandbox/async_vector_sandbox.py"],
    ["examples/python/sandbox/eval_harness.py", "--episodes", "4", "--concurrency", "2"],
])
def test_examples_run(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_hf_example_runs_against_a_local_hub_cache(hub_cache: Path) -> None:  # noqa: F811  (the imported fixture)
    # hub_cache sets HF_HUB_CACHE and HF_HUB_OFFLINE=1 in this process's environment: the example
    # (unchanged) reads the repository from there, never from huggingface.co.
    result = subprocess.run([sys.executable, "examples/python/sandbox/hf_sandbox.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step=1 reward=1.000" in result.stdout
