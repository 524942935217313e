"""The helpers each check is written once in: numbers that are not bools, lane counts, output tails."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from rlmesh._checks import check_num_envs, is_int, is_number
from rlmesh.errors import BootstrapError, InvalidArgumentError
from rlmesh.sandbox.debian_rootfs import _run
from rlmesh.sandbox.output_tail import TAIL_LINES, OutputTail, last_lines


@pytest.mark.parametrize(("value", "int_", "number"), [
    (3, True, True), (0, True, True), (-2, True, True), (1.5, False, True), (True, False, False),
    (False, False, False), ("3", False, False), (None, False, False),
])
def test_bools_are_neither_ints_nor_numbers(value: Any, int_: bool, number: bool) -> None:
    assert is_int(value) is int_ and is_number(value) is number


@pytest.mark.parametrize("num_envs", [0, -1, True, 2.0, "2", None])
def test_num_envs_is_a_positive_int(num_envs: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^num_envs must be a positive int, got {num_envs!r}$"):
        check_num_envs(num_envs)
    check_num_envs(1)
    check_num_envs(64)


def test_num_envs_may_be_none_where_a_single_env_is_meant() -> None:
    check_num_envs(None, optional=True)
    with pytest.raises(InvalidArgumentError, match=r"^num_envs must be a positive int or None, got 0$"):
        check_num_envs(0, optional=True)


def test_an_output_tail_keeps_the_last_lines() -> None:
    tail = OutputTail(3)
    assert [tail.add(f"line {i}\n") for i in range(5)] == [f"line {i}" for i in range(5)]
    assert tail.text() == "line 2\nline 3\nline 4"
    tail.clear()
    assert tail.text() == ""
    many = "\n".join(str(i) for i in range(100))
    assert last_lines(many) == "\n".join(str(i) for i in range(100 - TAIL_LINES, 100))
    assert last_lines(["a", "b", "c"], 2) == "b\nc"


def test_a_failed_bootstrap_command_carries_its_last_lines() -> None:
    seen: list[str] = []
    script = "import sys\nfor i in range(100): print(i)\nsys.exit(3)"
    with pytest.raises(BootstrapError) as info:
        _run([sys.executable, "-c", script], "debootstrap", seen.append, "the step failed")
    assert "exit code 3" in str(info.value) and len(seen) == 100
    assert info.value.output == "\n".join(str(i) for i in range(100 - TAIL_LINES, 100))
    assert _run([sys.executable, "-c", "print('ok')"], "x", None, "never") == "ok"
