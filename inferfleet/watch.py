"""`inferfleet watch SESSION`: a live view of a session until every job of it is done."""

from __future__ import annotations

import sys
import time

from inferfleet import keys
from inferfleet.ledger import payload_of, redis_text
from inferfleet.producer import Client
from inferfleet.schemas import JobResult, SessionSummary

#: Finished jobs looked at for the "last errors" lines.
_RECENT_JOBS = 50


def watch(client: Client, session_id: str, *, interval_s: float, timeout_s: float) -> int:
    """Redraw the session's view every `interval_s` until it is done; 0 when it is, 1 at
    the timeout (or Ctrl-C)."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            summary = client.session_summary(session_id)
            view = render(summary, last_errors(client, session_id))
            print("\x1b[2J\x1b[H" + view if sys.stdout.isatty() else view, flush=True)
            if summary.jobs_submitted and summary.jobs_done >= summary.jobs_submitted:
                return 0
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    return 1


def render(summary: SessionSummary, errors: list[str]) -> str:
    """The lines of one update."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    rate = "-" if summary.samples_per_s is None else f"{summary.samples_per_s:,.0f}"
    success = "-" if summary.success_rate is None else f"{summary.success_rate:.2%}"
    lines = [
        f"session {summary.session_id}: jobs {summary.jobs_done:,}/{summary.jobs_submitted:,} "
        f"done {dict(sorted(summary.jobs_by_status.items()))}",
        f"samples: {summary.samples_succeeded:,} succeeded, {summary.samples_failed:,} failed, "
        f"{summary.samples_expired:,} expired, {summary.samples_pending:,} pending; "
        f"success rate {success}",
        f"rate {rate} samples/s; latency p50 {ms(summary.latency_p50_ms)} ms, "
        f"p95 {ms(summary.latency_p95_ms)} ms, p99 {ms(summary.latency_p99_ms)} ms",
        "models: " + ", ".join(f"{name} {c.done:,}/{c.submitted:,}"
                               for name, c in sorted(summary.models.items())),
    ]
    if errors:
        lines += ["last errors:", *(f"  {line}" for line in errors)]
    return "\n".join(lines)


def last_errors(client: Client, session_id: str, *, limit: int = 5) -> list[str]:
    """The newest sample errors of the session (from its latest finished jobs)."""
    entries = client.redis.xrevrange(keys.session_stream(session_id), count=_RECENT_JOBS) or []
    failed = [redis_text(fields[b"job"]) for _, fields in entries
              if fields and int(fields[b"failed"])]
    lines: list[str] = []
    for job_id in failed:
        raw = client.redis.get(keys.result(job_id))
        if raw is None:
            continue
        result = JobResult.from_wire(payload_of(raw))
        lines += [f"{job_id} sample {result.sample_ids[e.index]}: {e.code.value}: {e.message}"
                  for e in result.errors]
        if result.error is not None and not result.errors:
            lines.append(f"{job_id}: {result.error.code.value}: {result.error.message}")
        if len(lines) >= limit:
            break
    return lines[:limit]
