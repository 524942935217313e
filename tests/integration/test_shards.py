"""Layer 3: one vector env over several servers (shards) equals one SyncVectorEnv of all lanes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from rlmesh import AsyncRemoteVectorEnv, RemoteVectorEnv
from rlmesh.client.lanes import resolve_shards, split_lanes
from rlmesh.client.shards import AsyncShardedVectorEnv
from rlmesh.errors import EnvClosedError, InvalidArgumentError, RemoteEnvError

from ..envs import FAULTY_ID
from ..helpers import ServerThread, assert_same, assert_same_steps

MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


def make_vec(env_id: str, n: int, mode: AutoresetMode = AutoresetMode.NEXT_STEP, **kwargs: Any) -> Any:
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}, **kwargs)


@pytest.fixture
def servers(tmp_path: Any) -> Iterator[Callable[..., list[str]]]:
    started: list[ServerThread] = []

    def start(envs: list[Any]) -> list[str]:
        for env in envs:
            started.append(ServerThread(env, f"unix://{tmp_path}/s{len(started)}.sock").start())
        return [st.address for st in started[-len(envs):]]

    yield start
    for st in started:
        st.stop()


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_two_servers_of_3_and_5_lanes_equal_one_sync_vector_env_of_8(servers: Any, mode: AutoresetMode) -> None:
    addresses = servers([make_vec("CartPole-v1", 3, mode), make_vec("CartPole-v1", 5, mode)])
    ref = make_vec("CartPole-v1", 8, mode)
    with RemoteVectorEnv(addresses) as envs:
        assert envs.num_envs == 8 and envs.action_space == ref.action_space
        assert envs.observation_space == ref.observation_space
        assert_same(envs.reset(seed=11), ref.reset(seed=11))
        assert envs.np_random_seed == ref.np_random_seed
        actions = ref.action_space
        actions.seed(3)
        ends = 0
        for _ in range(300):
            a = actions.sample()
            got, want = envs.step(a), ref.step(a)
            assert_same(got, want)
            ends += int(np.sum(want[2] | want[3]))
            if mode is AutoresetMode.DISABLED and (want[2] | want[3]).any():
                mask = want[2] | want[3]
                assert_same(envs.reset(options={"reset_mask": mask}), ref.reset(options={"reset_mask": mask.copy()}))
        assert ends >= 5
        seeds = [1, None, 3, 4, None, 6, 7, 8]
        got_reset, want_reset = envs.reset(seed=seeds), ref.reset(seed=seeds)
        assert_same(got_reset[0][[0, 2, 3, 5, 6, 7]], want_reset[0][[0, 2, 3, 5, 6, 7]])


# Taxi is v4 from Gymnasium 1.2 on, v3 before.
TAXI = "Taxi-v4" if "Taxi-v4" in gym.registry else "Taxi-v3"


@pytest.mark.parametrize("env_id", ["Blackjack-v1", TAXI])
def test_tuple_observations_and_float_infos_merge_like_gymnasium(servers: Any, env_id: str) -> None:
    addresses = servers([make_vec(env_id, 1), make_vec(env_id, 2)])
    ref = make_vec(env_id, 3)
    with RemoteVectorEnv(addresses) as envs:
        assert_same(envs.reset(seed=2), ref.reset(seed=2))
        assert_same_steps(envs, ref, 40, action_seed=9)


def test_a_masked_reset_that_spares_a_whole_shard(servers: Any) -> None:
    addresses = servers([make_vec("CartPole-v1", 2, AutoresetMode.DISABLED), make_vec("CartPole-v1", 2, AutoresetMode.DISABLED)])
    ref = make_vec("CartPole-v1", 4, AutoresetMode.DISABLED)
    with RemoteVectorEnv(addresses) as envs:
        assert_same(envs.reset(seed=0), ref.reset(seed=0))
        a = np.array([1, 0, 1, 0])
        assert_same(envs.step(a), ref.step(a))
        mask = np.array([False, False, True, False])  # only the second shard is asked
        assert_same(envs.reset(seed=5, options={"reset_mask": mask}), ref.reset(seed=5, options={"reset_mask": mask.copy()}))
        with pytest.raises(ValueError, match="reset_mask"):
            envs.reset(options={"reset_mask": np.array([True])})


def test_attributes_over_shards(servers: Any) -> None:
    addresses = servers([make_vec("CartPole-v1", 1), make_vec("CartPole-v1", 2)])
    with RemoteVectorEnv(addresses) as envs:
        assert envs.get_attr("gravity") == (9.8, 9.8, 9.8)
        envs.set_attr("gravity", [1.0, 2.0, 3.0])
        assert envs.get_attr("gravity") == (1.0, 2.0, 3.0)
        assert envs.call("get_wrapper_attr", "gravity") == (1.0, 2.0, 3.0)


def test_a_failing_shard_is_named(servers: Any) -> None:
    addresses = servers([make_vec(FAULTY_ID, 2), make_vec(FAULTY_ID, 2)])
    with RemoteVectorEnv(addresses) as envs:
        envs.reset(seed=0)
        with pytest.raises(RemoteEnvError) as info:
            envs.step(np.array([0, 0, 1, 0]))  # a lane raises on action 1: the second shard's
        err = info.value
        assert isinstance(err, RuntimeError)  # the env's own type is kept
        assert err.shard == 1 and err.lanes == (2, 4)  # type: ignore[attr-defined]
        assert "shard 1, lanes 2..3" in "".join(err.__notes__)


async def test_step_async_and_send_recv(servers: Any) -> None:
    addresses = servers([make_vec("CartPole-v1", 1), make_vec("CartPole-v1", 1), make_vec("CartPole-v1", 2)])
    ref = make_vec("CartPole-v1", 4)
    envs = AsyncRemoteVectorEnv(addresses)
    assert isinstance(envs, AsyncShardedVectorEnv)
    async with envs:
        assert_same(await envs.reset(seed=1), ref.reset(seed=1))
        a = np.array([0, 1, 1, 0])
        await envs.step_async(a)
        assert_same(await envs.step_wait(), ref.step(a))
        # EnvPool-style: every lane's result exactly once per step, in whichever order shards finish.
        envs.batch_size = 1
        seen: list[int] = []
        b = np.array([1, 1, 0, 0])
        want = ref.step(b)
        await envs.send(b)
        while len(seen) < 4:
            obs, rewards, _, _, info = await envs.recv()
            ids = list(info["env_id"])
            seen += ids
            assert np.array_equal(obs, want[0][ids]) and np.array_equal(rewards, want[1][ids])
        assert sorted(seen) == [0, 1, 2, 3]
        with pytest.raises(InvalidArgumentError, match="whole shards"):
            await envs.send(np.array([0]), env_ids=[2])
        # One step at a time, as Gymnasium's AsyncVectorEnv: no step() or send() while one is split,
        # no split step while send()s are out.
        await envs.step_async(a)
        for call in (envs.step(a), envs.send(a), envs.step_async(a)):
            with pytest.raises(InvalidArgumentError, match="not received"):
                await call
        assert_same(await envs.step_wait(), ref.step(a))
        envs.batch_size = 1
        await envs.send(a[:1], env_ids=[0])
        with pytest.raises(InvalidArgumentError, match="recv first"):
            await envs.step(a)
        got = await envs.recv()
        assert list(got[4]["env_id"]) == [0]


class _Stepped(gym.vector.VectorWrapper):
    """Sets an event when its server steps it (the server runs in a thread of this process)."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.stepped = threading.Event()

    def step(self, actions: Any) -> Any:
        self.stepped.set()
        return super().step(actions)


@pytest.mark.parametrize("lanes", [[3], [1, 2]], ids=["one server", "two shards"])
async def test_the_split_step_is_sent_before_step_async_returns(servers: Any, lanes: list[int]) -> None:
    # The envs step while the caller works between step_async and step_wait (here: blocks this
    # loop without awaiting), and the actions' buffer is free once step_async returns.
    served = [_Stepped(make_vec("CartPole-v1", n)) for n in lanes]
    addresses = servers(served)
    ref = make_vec("CartPole-v1", sum(lanes))
    async with AsyncRemoteVectorEnv(addresses if len(addresses) > 1 else addresses[0]) as envs:
        assert_same(await envs.reset(seed=2), ref.reset(seed=2))
        for send in (False, True):
            a = np.array([0, 1, 1])
            want = ref.step(a.copy())
            for env in served:
                env.stepped.clear()
            await (envs.send(a) if send else envs.step_async(a))
            a[:] = 7  # not a valid action: the step must not see it
            assert all(env.stepped.wait(10) for env in served), "step_async returned before sending"
            got = await (envs.recv() if send else envs.step_wait())
            if send:  # recv returns whole shards in the order they finished: env_id says which lanes
                order = np.argsort(got[4].pop("env_id"), kind="stable")
                got = (*(x[order] for x in got[:4]), got[4])
            assert_same(got, want)
        # Closed with a step in flight: the result is an EnvClosedError, never a CancelledError.
        await envs.step_async(np.zeros(3, dtype=np.int64))
    with pytest.raises(EnvClosedError):
        await envs.step_wait()
    with pytest.raises(EnvClosedError):
        await envs.step_async(np.zeros(3, dtype=np.int64))


async def test_one_server_splits_a_step_too(servers: Any) -> None:
    (address,) = servers([make_vec("CartPole-v1", 3)])
    ref = make_vec("CartPole-v1", 3)
    async with AsyncRemoteVectorEnv(address) as envs:
        assert_same(await envs.reset(seed=5), ref.reset(seed=5))
        a = np.array([0, 1, 1])
        await envs.step_async(a)
        with pytest.raises(InvalidArgumentError, match="not received"):
            await envs.step_async(a)  # one step in flight
        with pytest.raises(InvalidArgumentError, match="not received"):
            await envs.step(a)  # not even a whole one
        assert_same(await envs.step_wait(), ref.step(a))
        with pytest.raises(InvalidArgumentError, match="step_wait without step_async"):
            await envs.step_wait()
        await envs.send(a, env_ids=[2, 0, 1])
        obs, rewards, terms, truncs, info = await envs.recv()
        want = ref.step(a)
        assert list(info.pop("env_id")) == [0, 1, 2]
        assert_same((obs, rewards, terms, truncs, info), want)
        with pytest.raises(InvalidArgumentError, match="all 3 lanes"):
            await envs.send(a[:1], env_ids=[0])
        with pytest.raises(InvalidArgumentError, match="recv without send"):
            await envs.recv()
        await envs.step_async(a)  # closing with a step in flight cancels it quietly
    with pytest.raises(EnvClosedError):
        await envs.step_async(a)


def test_shard_counts() -> None:
    assert split_lanes(8, 3) == [3, 3, 2] and split_lanes(5, 5) == [1] * 5
    assert 1 <= resolve_shards("auto", 64) <= 64 and resolve_shards("auto", 1) == 1
    for bad in (0, -1, "many", 2.5, True):
        with pytest.raises(InvalidArgumentError):
            resolve_shards(bad, 4)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="more than num_envs"):
        resolve_shards(5, 4)


def test_a_sync_masked_reset_of_one_shard_names_it_and_an_empty_mask_resets_nothing(servers: Any) -> None:
    # The sync shell writes only the shards whose lanes the mask resets: one shard's failure
    # still names that shard, and a mask with no lane keeps every observation (as the async path).
    addresses = servers([make_vec("CartPole-v1", 2), make_vec("CartPole-v1", 2)])
    with RemoteVectorEnv(addresses) as envs:
        obs, _ = envs.reset(seed=1)
        with pytest.raises(InvalidArgumentError) as info:  # only shard 1 is asked, and its server refuses the seeds
            envs.reset(seed=[0, 0, "x", "y"], options={"reset_mask": np.array([False, False, True, True])})
        assert info.value.shard == 1 and info.value.lanes == (2, 4)
        kept, _ = envs.reset(options={"reset_mask": np.zeros(4, bool)})
        assert np.array_equal(kept[:2], obs[:2])
