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


#: Exit statuses of `watch`.
DONE, TIMED_OUT, NO_SUCH_SESSION = 0, 1, 2


def watch(client: Client, session_id: str, *, interval_s: float, timeout_s: float,
          wait_for_start_s: float = 0.0) -> int:
    """Redraw the session's view every `interval_s` until it is done; `DONE` when it is,
    `TIMED_OUT` at the timeout (or Ctrl-C), `NO_SUCH_SESSION` (said on stderr) if nothing
    was submitted to it within `wait_for_start_s`.

    The session is done once every job submitted to it is, and, if the submitter said how
    many samples are coming (`Client.expect`), all of them were submitted."""
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        while time.monotonic() < deadline:
            summary = client.session_summary(session_id)
            if not summary.jobs_submitted and summary.samples_expected is None and \
                    time.monotonic() - started >= wait_for_start_s:
                print(f"no session {session_id!r}: nothing was submitted to it (or it is "
                      f"older than result_ttl_s={client.settings.result_ttl_s:.0f} s). Check "
                      "the id; --wait-for-start S waits for a submit that has not begun",
                      file=sys.stderr)
                return NO_SUCH_SESSION
            view = render(summary, last_errors(client, session_id))
            print("\x1b[2J\x1b[H" + view if sys.stdout.isatty() else view, flush=True)
            if _is_done(summary):
                return DONE
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    return TIMED_OUT


def _is_done(summary: SessionSummary) -> bool:
    expected = summary.samples_expected
    return bool(summary.jobs_submitted) and summary.jobs_done >= summary.jobs_submitted and \
        (expected is None or summary.samples_submitted >= expected)


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
    if summary.samples_expected:
        lines.insert(1, _progress(summary, summary.samples_expected))
    if errors:
        lines += ["last errors:", *(f"  {line}" for line in errors)]
    return "\n".join(lines)


def _progress(summary: SessionSummary, expected: int) -> str:
    """How far the session is through the samples its submitter said are coming."""
    done = summary.samples_succeeded + summary.samples_failed + summary.samples_expired
    left = max(0, expected - done)
    rate = summary.samples_per_s
    eta = "-" if not rate else f"{left / rate:,.0f} s"
    return f"progress {done / expected:.1%} of {expected:,} samples expected; ETA {eta}"


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
