"""Run an env from a Hugging Face EnvHub repository inside a sandbox.

    uv run python examples/python/sandbox/hf_sandbox.py

The repository is fetched on the host with huggingface_hub (honouring HF_TOKEN, HF_ENDPOINT,
HF_HOME and HF_HUB_OFFLINE), baked into the image, and its env.py's make_env is called inside
the container. This demo is intentionally unpinned; for real evaluations pin the repository to a
full commit SHA (hf://owner/repo@<sha>:suite/task) and keep trust_remote_code=False unless you
have reviewed the source.
"""

from rlmesh.numpy import SandboxEnv

env = SandboxEnv(
    "hf://lerobot/cartpole-env:cartpole_suite/0",
    trust_remote_code=True,
    allow_unpinned_hf=True,
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
