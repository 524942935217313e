"""Shards placed by Ray on a real two-node cluster on this machine (every address on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym

from rlmesh.numpy import SandboxVectorEnv
from rlmesh.sandbox.placement import RayPlacement, RayShards

from ..helpers import assert_same, assert_same_steps

REPO = Path(__file__).resolve().parents[2]


def _labelled() -> set[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", "label=rlmesh.sandbox"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_ray_places_shards_on_both_nodes_and_parity_holds(ray_cluster: str) -> None:
    import ray

    ray.init(address=ray_cluster, log_to_driver=False)
    try:
        envs = SandboxVectorEnv("CartPole-v1", num_envs=4, shards=2,
                                placement=RayPlacement(num_cpus=1, address=ray_cluster))
        try:
            core = envs._core
            assert isinstance(core._ray, RayShards)
            endpoints = core._ray.endpoints
            assert len({e["node_id"] for e in endpoints}) == 2  # SPREAD: one shard per node
            assert all(e["address"].startswith("tcp://127.0.0.1:") for e in endpoints)
            ref = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
            assert_same(envs.reset(seed=5), ref.reset(seed=5))
            assert_same_steps(envs, ref, 300, action_seed=2)
        finally:
            envs.close()
        assert not set(core.container_ids) & _labelled()
    finally:
        ray.shutdown()


def test_a_driver_that_goes_leaves_nothing(ray_cluster: str) -> None:
    code = textwrap.dedent(f"""
        import ray
        from rlmesh.numpy import SandboxVectorEnv
        from rlmesh.sandbox.placement import RayPlacement
        ray.init(address={ray_cluster!r}, log_to_driver=False)
        envs = SandboxVectorEnv("CartPole-v1", num_envs=2, shards=2, placement="ray", lease=3)
        envs.reset(seed=0)
        print(" ".join(envs._core.container_ids), flush=True)
        ray.shutdown()
        import os
        os._exit(0)  # no close: the actors end with the driver, the sandboxes by their lease
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    ids = set(result.stdout.split())
    assert len(ids) == 2, result.stderr[-3000:]
    deadline = time.monotonic() + 90
    while ids & _labelled() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ids & _labelled()
    subprocess.run([sys.executable, "-m", "rlmesh", "sandbox", "cleanup"], capture_output=True, cwd=REPO)
