"""Run CartPole-v1 inside a sandbox container and step it with rlmesh.numpy.SandboxEnv.

    uv run python examples/python/sandbox/gym_sandbox.py
"""

from rlmesh.numpy import SandboxEnv

env = SandboxEnv(
    "CartPole-v1",
    packages=["gymnasium==1.3.0"],
    imports=["gymnasium"],
)

MAX_STEPS = 45

try:
    obs, info = env.reset(seed=0)
    for step in range(1, MAX_STEPS + 1):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        print(f"step={step} reward={reward:.3f}")
        if terminated or truncated:
            print("episode complete")
            break
finally:
    env.close()
