"""The memory scenario's client measures its own peak RSS, not its parent's."""

from __future__ import annotations

import subprocess
import sys

from inferfleet.bench.memory import peak_rss

MIB = 2**20


def test_a_child_of_a_big_process_reports_its_own_peak_rss() -> None:
    # Python starts children by vfork then exec: `ru_maxrss` in the child kept the
    # parent's peak (the bench's own, 3.5x the data in full runs).
    ballast = bytearray(400 * MIB)
    for offset in range(0, len(ballast), 4096):  # touched, so that it is resident
        ballast[offset] = 1
    child = subprocess.run(
        [sys.executable, "-c", "from inferfleet.bench.memory import peak_rss; "
                               "print(peak_rss())"],
        capture_output=True, text=True, check=True)
    assert int(child.stdout) < 200 * MIB, child.stdout
    assert peak_rss() >= 400 * MIB  # this process's own peak still counts its ballast
    del ballast
