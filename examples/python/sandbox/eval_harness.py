"""Evaluate a policy on many sandboxes at once with asyncio.gather and a concurrency limit.

    uv run python examples/python/sandbox/eval_harness.py [--sandboxes 12] [--concurrency 4]

Every sandbox shares one image build and one Docker client; the limit bounds how
many containers run at the same time.
"""

import argparse
import asyncio
import time

from rlmesh.numpy import AsyncSandboxEnv


def policy(obs):
    # A hand-written CartPole controller: push towards the side the pole leans to.
    return int(obs[2] + 0.5 * obs[3] > 0)


async def evaluate(seed: int, limit: asyncio.Semaphore) -> float:
    async with limit:
        async with AsyncSandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:
            obs, info = await env.reset(seed=seed)
            total = 0.0
            while True:
                obs, reward, terminated, truncated, info = await env.step(policy(obs))
                total += reward
                if terminated or truncated:
                    return total


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sandboxes", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    limit = asyncio.Semaphore(args.concurrency)
    started = time.perf_counter()
    returns = await asyncio.gather(*(evaluate(seed, limit) for seed in range(args.sandboxes)))
    elapsed = time.perf_counter() - started
    for seed, ret in enumerate(returns):
        print(f"seed={seed} return={ret:.0f}")
    print(f"{len(returns)} sandboxes in {elapsed:.1f}s, mean return {sum(returns) / len(returns):.1f}")


if __name__ == "__main__":
    asyncio.run(main())
