"""A small run of the wire fuzzer in CI (``python -m tests.fuzz.wire`` runs the large one)."""

from __future__ import annotations

from ..fuzz.wire import fuzz_client, fuzz_server


def test_fuzzed_frames_never_crash_or_hang_the_server() -> None:
    report = fuzz_server(600, seed=1)
    assert report.crashes == 0 and report.hangs == 0, report.examples
    assert report.peak_rss_mb < 400, f"server peak RSS {report.peak_rss_mb:.0f} MB"


def test_fuzzed_replies_give_the_client_typed_errors_only() -> None:
    report = fuzz_client(400, seed=2)
    assert report.crashes == 0 and report.hangs == 0, report.examples
    assert report.outcomes.get("ok", 0) > 0  # some cases survive their mutation
