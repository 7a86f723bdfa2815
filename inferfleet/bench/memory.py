"""The memory scenario: `submit_many` of N samples, then every result collected.

The client runs in a process of its own (`python -m inferfleet.bench.memory URL MODEL N
JOB_SIZE`), so that its peak RSS is its own; it prints one JSON line:
input bytes, output bytes (the results as stored), and its RSS before the input existed
and at its peak.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np
import psutil

from inferfleet import keys
from inferfleet.producer import Client
from inferfleet.settings import load_settings


def main(argv: list[str]) -> None:
    """Submit N random digit-shaped samples, collect every result, report the memory."""
    redis_url, model, n, job_size = argv[0], argv[1], int(argv[2]), int(argv[3])
    before = psutil.Process().memory_info().rss
    samples = np.random.default_rng(0).random((n, 64), dtype=np.float32)
    with Client(settings=load_settings(redis_url=redis_url)) as client:
        jobs = client.submit_many(model, samples, job_size=job_size)
        results = client.results([job.id for job in jobs], timeout=1800)
        failed = sum(r.status != "succeeded" for r in results)
        stored = sum(client.redis.strlen(keys.result(job.id)) for job in jobs)
    print(json.dumps({"input_bytes": samples.nbytes, "output_bytes": stored,
                      "rss_before": before, "rss_peak": peak_rss(), "jobs": len(jobs),
                      "failed_jobs": failed}))


def peak_rss() -> int:
    """This process's peak RSS in bytes, its own alone.

    Not `getrusage`'s `ru_maxrss` on Linux: that keeps the peak of the process image before
    `execve`, and Python starts a child by vfork then exec, so a child of the bench
    reported the bench's own peak (3.5x the data in full runs, after the image model's
    scenarios had grown the bench to ~1.2 GiB; 1.47x alone). `VmHWM` is the peak of this
    image's memory only.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


if __name__ == "__main__":
    main(sys.argv[1:])
