"""The test helpers that measure: a child's peak memory is its own."""

from __future__ import annotations

from helpers.process import GB, run_effnet


def test_a_childs_peak_memory_is_its_own_not_that_of_the_test_process_that_forked_it() -> None:
    ballast = b"\x01" * GB  # resident in this process when the child is forked
    done = run_effnet(["--version"])
    assert done.returncode == 0 and done.stdout.startswith("effnet "), done.stderr
    assert done.peak_rss < 0.5 * GB, f"peak resident memory {done.peak_rss / GB:.2f} GB"
    assert len(ballast) == GB
