"""``rlmesh serve``'s arguments: the modes it takes are the protocol's, and each one parses."""

from __future__ import annotations

import argparse

from gymnasium.vector import AutoresetMode

from rlmesh.protocol.options import VECTORIZATION_MODES, parse_autoreset_mode, parse_vectorization_mode
from rlmesh.server.serve import build_parser


def _choices(parser: argparse.ArgumentParser, dest: str) -> list[str]:
    return list(next(a for a in parser._actions if a.dest == dest).choices or [])


def test_the_modes_are_the_protocol_s() -> None:
    parser = build_parser()
    assert _choices(parser, "vectorization_mode") == list(VECTORIZATION_MODES)
    assert _choices(parser, "autoreset_mode") == ["next_step", "same_step", "disabled"]
    for mode in _choices(parser, "vectorization_mode"):
        assert parse_vectorization_mode(mode) == mode
    assert [parse_autoreset_mode(m) for m in _choices(parser, "autoreset_mode")] == list(AutoresetMode)


def test_defaults_and_a_sandbox_s_command_line() -> None:
    args = build_parser().parse_args(["CartPole-v1", "--address", "unix:///rlmesh/env.sock", "--num-envs", "4",
                                      "--autoreset-mode", "same_step", "--import", "a", "--import", "b", "--dial"])
    assert (args.source, args.num_envs, args.vectorization_mode, args.autoreset_mode) == ("CartPole-v1", 4, "sync",
                                                                                          "same_step")
    assert args.imports == ["a", "b"] and args.dial and args.kwargs_json == "{}" and args.lease is None
