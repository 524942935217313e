"""Layer 3: in-process Gymnasium is the oracle for every remote path.

Same seeds, same actions: the remote env must return bit-identical values with
the same Python and numpy types as ``gym.make`` / ``gym.make_vec``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from rlmesh import RemoteEnv
from rlmesh.errors import InvalidArgumentError, RemoteEnvError, ServerBusyError

from ..envs import BIG_OBS_ID, KITCHEN_SINK_ID
from ..helpers import assert_same

Serve = Callable[..., str]

# (id, make kwargs, episodes): Pendulum episodes are 200 steps (TimeLimit truncation).
ENVS = {
    "CartPole-v1": ("CartPole-v1", {}, 4),
    "Pendulum-v1": ("Pendulum-v1", {}, 2),
    "FrozenLake-v1": ("FrozenLake-v1", {}, 6),
    "Blackjack-v1": ("Blackjack-v1", {}, 8),
    "KitchenSink": (KITCHEN_SINK_ID, {"render_mode": "rgb_array"}, 5),
    "BigObs": (BIG_OBS_ID, {}, 2),
}


@pytest.mark.parametrize(("env_id", "kwargs", "episodes"), ENVS.values(), ids=ENVS.keys())
async def test_trajectory_is_bit_identical(
    serve: Serve, connect: Any, env_id: str, kwargs: dict[str, Any], episodes: int
) -> None:
    local = gym.make(env_id, **kwargs)
    env = await connect(serve(gym.make(env_id, **kwargs)))
    actions = copy.deepcopy(local.action_space)
    actions.seed(123)
    steps = 0
    # Seeded and unseeded resets alternate: the unseeded ones test that the
    # server-side generator carries on exactly like the local one.
    for episode in range(episodes):
        seed = [42, None, 7][episode % 3]
        assert_same(await env.reset(seed=seed), local.reset(seed=seed), f"reset {episode}")
        while True:
            action = actions.sample()
            expected = local.step(action)
            assert_same(await env.step(action), expected, f"episode {episode} step {steps}")
            steps += 1
            if local.render_mode == "rgb_array":
                assert_same(await env.render(), local.render())
            if expected[2] or expected[3]:
                break
    assert steps >= episodes


# check_env emits a few style warnings about the envs themselves, e.g. CartPole's
# "A Box observation space minimum value is -infinity" and Pendulum's "we recommend
# using a symmetric and normalized space". Those come from the env's spaces, not
# from rlmesh, so the remote env may emit exactly the warnings that in-process
# gym.make(...) emits and no others: we record both and compare. The classic
# control envs list the "human" render mode, which needs pygame (not installed),
# so their render check would fail in-process too; KitchenSink is render-checked.
CHECK_ENV = {
    "CartPole-v1": ("CartPole-v1", {}, True),
    "Pendulum-v1": ("Pendulum-v1", {}, True),
    "FrozenLake-v1": ("FrozenLake-v1", {}, True),
    "Blackjack-v1": ("Blackjack-v1", {}, True),
    # step_info_nan=False: check_env compares step infos with ==, and NaN != NaN.
    "KitchenSink": (KITCHEN_SINK_ID, {"render_mode": "rgb_array", "step_info_nan": False}, False),
}


def _checked(env: gym.Env[Any, Any], skip_render_check: bool) -> list[str]:
    # check_env whole: its close check makes a second env from env.spec (for a RemoteEnv, a second
    # client of the same server, which serves it an env of its own), and its render check makes an
    # env in each other render mode (the client asks for it in its HELLO; the server's factory
    # makes it).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=skip_render_check)
    return sorted(f"{w.category.__name__}: {w.message}" for w in caught)


@pytest.mark.parametrize(("env_id", "kwargs", "skip_render"), CHECK_ENV.values(), ids=CHECK_ENV.keys())
def test_check_env_passes_on_remote_env(serve: Serve, env_id: str, kwargs: dict[str, Any], skip_render: bool) -> None:
    def make(render_mode: str | None = None) -> gym.Env[Any, Any]:
        return gym.make(env_id, **{**kwargs, **({"render_mode": render_mode} if render_mode else {})})

    expected = _checked(gym.make(env_id, **kwargs).unwrapped, skip_render)
    with RemoteEnv(serve(make)) as remote:
        assert remote.unwrapped is remote
        assert _checked(remote.unwrapped, skip_render) == expected


def test_a_client_asks_for_a_render_mode_and_gets_an_env_in_it(serve: Serve) -> None:
    address = serve(lambda render_mode=None: gym.make(KITCHEN_SINK_ID, render_mode=render_mode))
    with RemoteEnv(address) as plain, RemoteEnv(address, render_mode="rgb_array") as drawn:
        assert plain.render_mode is None and drawn.render_mode == "rgb_array"
        drawn.reset(seed=0)
        ref = gym.make(KITCHEN_SINK_ID, render_mode="rgb_array")
        ref.reset(seed=0)
        np.testing.assert_array_equal(drawn.render(), ref.render())
        assert drawn.spec is not None and drawn.spec.kwargs["render_mode"] == "rgb_array"


def test_a_render_mode_the_server_cannot_make_is_refused_with_the_reason(serve: Serve) -> None:
    address = serve(lambda: gym.make("CartPole-v1"))  # a factory that takes no render_mode
    with pytest.raises(RemoteEnvError, match="takes no render_mode"):
        RemoteEnv(address, render_mode="rgb_array")
    with pytest.raises(InvalidArgumentError, match="render_mode must be"):
        RemoteEnv(address, render_mode="rgb array; rm -rf /")


# --------------------------------------------------------------------------- vector envs

N = 4
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


def make_vec(mode: AutoresetMode, env_id: str = "CartPole-v1") -> gym.vector.VectorEnv[Any, Any, Any]:
    return gym.make_vec(env_id, num_envs=N, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
async def test_vector_env_matches_make_vec_across_autoresets(serve: Serve, connect: Any, mode: AutoresetMode) -> None:
    local = make_vec(mode)
    venv = await connect(serve(make_vec(mode)), vector=True)
    assert venv.num_envs == N
    assert venv.metadata["autoreset_mode"] is mode
    if venv.flavour == "async":
        assert venv.autoreset_mode is mode
    for name in ("observation_space", "action_space", "single_observation_space", "single_action_space"):
        assert getattr(venv, name) == getattr(local, name), name

    actions = copy.deepcopy(local.action_space)
    actions.seed(5)
    assert_same(await venv.reset(seed=[3, 1, 4, 1]), local.reset(seed=[3, 1, 4, 1]))
    assert_same(await venv.reset(seed=9), local.reset(seed=9))
    episode_ends = masked_resets = 0
    for t in range(300):
        action = actions.sample()
        expected = local.step(action)
        got = await venv.step(action)
        assert_same(got, expected, f"step {t}")
        done = expected[2] | expected[3]
        episode_ends += int(done.sum())
        if mode is AutoresetMode.SAME_STEP and done.any():
            info = got[4]
            assert_same(info["_final_obs"], done)
            for i in np.flatnonzero(done):
                assert info["final_obs"][i].shape == (4,)
            assert all(info["final_obs"][i] is None for i in np.flatnonzero(~done))
            assert "final_info" in info
        if mode is AutoresetMode.DISABLED and done.any():
            # Each reset gets its own options dict: gymnasium pops "reset_mask" from it.
            seed = [None, 1000 + t, [2000 + t + i for i in range(N)]][masked_resets % 3]
            assert_same(
                await venv.reset(seed=seed, options={"reset_mask": done.copy()}),
                local.reset(seed=seed, options={"reset_mask": done.copy()}),
                f"masked reset at {t}",
            )
            masked_resets += 1
    assert episode_ends >= 10, "the trajectory should cross several autoresets"
    if mode is AutoresetMode.DISABLED:
        assert masked_resets >= 3


async def test_vector_step_without_reset_in_disabled_mode_raises_like_gymnasium(
    serve: Serve, connect: Any
) -> None:
    from rlmesh.errors import RemoteEnvError

    local = make_vec(AutoresetMode.DISABLED)
    venv = await connect(serve(make_vec(AutoresetMode.DISABLED)), vector=True)
    await venv.reset(seed=0)
    local.reset(seed=0)
    push = np.ones(N, dtype=np.int64)
    for _ in range(500):  # always push right: every lane fails within ~10 steps
        _, _, term, trunc, _ = local.step(push)
        await venv.step(push)
        if (term | trunc).any():
            break
    with pytest.raises(AssertionError):
        local.step(push)
    with pytest.raises(RemoteEnvError) as info:
        await venv.step(push)
    assert info.value.remote_type == "builtins.AssertionError"


def test_two_clients_step_their_own_envs_in_parallel(serve: Serve) -> None:
    # A server made from a factory serves several clients at once, each an env of its own: two
    # clients with their own seeds step exactly as two in-process envs.
    address = serve(lambda: gym.make("CartPole-v1"), max_clients=2)
    refs = [gym.make("CartPole-v1"), gym.make("CartPole-v1")]
    with RemoteEnv(address) as a, RemoteEnv(address) as b:
        for env, ref, seed in ((a, refs[0], 3), (b, refs[1], 4)):
            got, want = env.reset(seed=seed), ref.reset(seed=seed)
            assert np.array_equal(got[0], want[0])
        for t in range(60):
            for env, ref in ((a, refs[0]), (b, refs[1])):
                got, want = env.step(t % 2), ref.step(t % 2)
                assert np.array_equal(got[0], want[0]) and got[1:4] == want[1:4]
                if got[2] or got[3]:
                    assert np.array_equal(env.reset()[0], ref.reset()[0])
        with pytest.raises(ServerBusyError, match="already serves 2 clients, its max_clients"):
            RemoteEnv(address)
        b.close()
        again = gym.make(a.spec)  # what check_env's close check does: b's env serves it
        again.reset(seed=0)
        again.close()
        a.step(0)  # the first client is unaffected
