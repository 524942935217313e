"""Step 8 CartPole lanes in one sandbox from asyncio with AsyncSandboxVectorEnv.

    uv run python examples/python/sandbox/async_vector_sandbox.py
"""

import asyncio

import numpy as np

from rlmesh.numpy import AsyncSandboxVectorEnv


async def main() -> None:
    async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=8, packages=["gymnasium==1.3.0"]) as envs:
        obs, infos = await envs.reset(seed=0)
        episode_returns = np.zeros(envs.num_envs)
        finished = []
        for _ in range(200):
            actions = envs.action_space.sample()
            obs, rewards, terminations, truncations, infos = await envs.step(actions)
            episode_returns += rewards
            for lane in np.flatnonzero(terminations | truncations):
                finished.append(episode_returns[lane])
                episode_returns[lane] = 0.0
        print(f"obs batch shape={obs.shape} dtype={obs.dtype}")
        print(f"finished episodes={len(finished)} mean return={np.mean(finished):.1f}")


if __name__ == "__main__":
    asyncio.run(main())
