"""The lane split and merge (rlmesh.client.lanes): pure functions over the lane bounds, no server."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from rlmesh.client.lanes import (
    batch_from_parts,
    bounds_of,
    join_lanes,
    lanes_of,
    merge_infos,
    split_actions,
    split_reset,
)
from rlmesh.errors import InvalidArgumentError, ProtocolError

BOUNDS = bounds_of([3, 2, 2])


def test_bounds_are_lanes_in_order() -> None:
    assert BOUNDS == [(0, 3), (3, 5), (5, 7)]
    assert bounds_of([7]) == [(0, 7)]


def test_array_actions_split_into_views() -> None:
    single = spaces.Discrete(2)
    actions = np.arange(7)
    parts = split_actions(batch_space(single, 7), single, BOUNDS, actions)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    assert all(np.shares_memory(p, actions) for p in parts)


def test_dict_actions_split_lane_by_lane() -> None:
    single = spaces.Dict({"a": spaces.Discrete(3), "b": spaces.Box(-1, 1, (2,))})
    batched = batch_space(single, 7)
    batched.seed(0)
    actions = batched.sample()
    parts = split_actions(batched, single, BOUNDS, actions)
    assert [p["a"].tolist() for p in parts] == [actions["a"][a:b].tolist() for a, b in BOUNDS]
    assert np.array_equal(parts[2]["b"], actions["b"][5:7])


def test_one_shard_takes_the_actions_as_they_are() -> None:
    single = spaces.Discrete(2)
    actions = [0, 1, 1]
    assert split_actions(batch_space(single, 3), single, [(0, 3)], actions)[0] is actions


def test_too_few_actions_is_an_argument_error() -> None:
    single = spaces.Discrete(2)
    with pytest.raises(InvalidArgumentError, match="7 lanes") as info:
        split_actions(batch_space(single, 7), single, BOUNDS, [0, 1, 1])
    assert isinstance(info.value, ValueError)


def test_an_int_seed_offsets_each_shard_by_its_first_lane() -> None:
    assert split_reset(BOUNDS, 10, None) == [(0, 10, None), (1, 13, None), (2, 15, None)]
    assert split_reset(BOUNDS, None, None) == [(0, None, None), (1, None, None), (2, None, None)]
    assert [s for _, s, _ in split_reset(BOUNDS, list(range(7)), None)] == [[0, 1, 2], [3, 4], [5, 6]]


def test_a_reset_mask_leaves_out_the_shards_it_spares() -> None:
    mask = np.array([False, False, False, True, False, False, True])
    parts = split_reset(BOUNDS, 1, {"reset_mask": mask, "x": 1})
    assert [j for j, _, _ in parts] == [1, 2]
    assert parts[0][2]["reset_mask"].tolist() == [True, False] and parts[0][2]["x"] == 1
    assert split_reset(BOUNDS, None, {"reset_mask": np.zeros(7, bool)}) == []


@pytest.mark.parametrize("seed, options", [([1, 2], None), (None, {"reset_mask": np.ones(3, bool)})])
def test_a_seed_list_or_mask_of_another_length_is_an_argument_error(seed: object, options: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        split_reset(BOUNDS, seed, options)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_one_shard_resets_with_the_seed_and_options_as_they_are() -> None:
    options = {"reset_mask": np.array([True])}
    assert split_reset([(0, 2)], [1, 2, 3], options) == [(0, [1, 2, 3], options)]


SINGLE = spaces.Dict({
    "pos": spaces.Box(-1, 1, (2,), np.float32),
    "label": spaces.Text(4, charset="abc"),
    "pair": spaces.Tuple((spaces.Discrete(3), spaces.MultiBinary(3))),
})


def test_parts_merge_as_gymnasium_concatenates_the_lanes() -> None:
    single = SINGLE
    single.seed(1)
    lanes = [single.sample() for _ in range(7)]
    want = concatenate(single, lanes, create_empty_array(single, 7))
    parts = [(a, b, concatenate(single, lanes[a:b], create_empty_array(single, b - a))) for a, b in BOUNDS]
    got = batch_from_parts(single, 7, parts, owned=False)
    assert np.array_equal(got["pos"], want["pos"]) and got["label"] == want["label"]
    assert np.array_equal(got["pair"][0], want["pair"][0]) and np.array_equal(got["pair"][1], want["pair"][1])
    for a, b, part in parts:  # every array is a copy: nothing views a part
        assert not np.shares_memory(got["pos"], part["pos"])
        sliced = lanes_of(single, got, a, b)
        assert np.array_equal(sliced["pos"], part["pos"]) and sliced["label"] == part["label"]
        assert np.array_equal(sliced["pair"][1], part["pair"][1])


def test_one_owned_part_of_every_lane_is_the_batch_itself() -> None:
    part = np.zeros((7, 4))
    assert batch_from_parts(spaces.Box(0, 1, (4,)), 7, [(0, 7, part)], owned=True) is part
    copied = batch_from_parts(spaces.Box(0, 1, (4,)), 7, [(0, 7, part)], owned=False)
    assert copied is not part and np.array_equal(copied, part)


@pytest.mark.parametrize("parts", [
    [(0, 3, np.zeros((3, 4))), (3, 5, np.zeros((2, 5)))],  # another shape
    [(0, 3, np.zeros((3, 4))), (3, 5, np.zeros((3, 4)))],  # more lanes than the shard has
    [(0, 3, np.zeros((3, 4))), (3, 5, "not an array")],
])
def test_a_part_that_does_not_fit_its_lanes_is_a_protocol_error(parts: list[tuple[int, int, object]]) -> None:
    with pytest.raises(ProtocolError):
        batch_from_parts(spaces.Box(0, 1, (4,)), 5, parts, owned=False)


def test_text_lanes_of_another_count_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="for 2 lanes"):
        batch_from_parts(spaces.Text(3), 4, [(0, 2, ("a", "b")), (2, 4, ("c",))], owned=False)


def test_infos_merge_into_every_lane_with_masks() -> None:
    infos = [(0, 3, {"x": np.array([1, 2, 3]), "_x": np.ones(3, bool)}),
             (5, 7, {"x": np.array([6, 7]), "_x": np.ones(2, bool), "deep": {"y": np.array([1.0, 2.0])}})]
    merged = merge_infos(7, infos)
    assert merged["x"].tolist() == [1, 2, 3, 0, 0, 6, 7]
    assert merged["_x"].tolist() == [True] * 3 + [False] * 2 + [True] * 2
    assert merged["deep"]["y"].tolist() == [0, 0, 0, 0, 0, 1.0, 2.0]
    only = {"x": [1, 2]}
    assert merge_infos(2, [(0, 2, only)]) is only


def test_a_vector_env_s_batches_round_trip() -> None:
    envs = gym.make_vec("CartPole-v1", num_envs=7, vectorization_mode="sync")
    obs, _ = envs.reset(seed=0)
    parts = [(a, b, lanes_of(envs.single_observation_space, obs, a, b)) for a, b in BOUNDS]
    assert np.array_equal(batch_from_parts(envs.single_observation_space, 7, parts, owned=False), obs)


def test_flags_join_with_a_copy_unless_one_owned_array_has_every_lane() -> None:
    a, b = np.array([1.0, 2.0]), np.array([3.0])
    assert join_lanes([a], owned=True) is a
    copied = join_lanes([a], owned=False)
    assert copied is not a and not np.shares_memory(copied, a) and copied.tolist() == [1.0, 2.0]
    assert join_lanes([a, b], owned=True).tolist() == [1.0, 2.0, 3.0]


def test_one_region_part_of_every_lane_is_copied_whole() -> None:
    part = np.arange(8.0).reshape(4, 2)
    out = batch_from_parts(spaces.Box(0, 10, (2,)), 4, [(0, 4, part)], owned=False)
    assert not np.shares_memory(out, part) and np.array_equal(out, part)
    with pytest.raises(ProtocolError):  # a part of other lanes still does not fit
        batch_from_parts(spaces.Box(0, 10, (2,)), 4, [(0, 4, part[:3])], owned=False)
