"""One typed `Settings` object; every field has an `INFERFLEET_<NAME>` environment variable.

Built in the entry point (CLI, `Client()`, the worker) and passed in: nothing reads the
environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inferfleet.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_models_dir() -> Path:
    return REPO_ROOT / "models"


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`, safe for logs and reprs (each part of
    a `sentinel://a;sentinel://b` list too)."""
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class Settings(BaseSettings):
    """Fleet settings shared by producers and workers (see the README's table)."""

    model_config = SettingsConfigDict(env_prefix="INFERFLEET_", frozen=True, extra="forbid")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # With a `sentinel://host:port;sentinel://host:port/db` URL: the name the Sentinels
    # know the primary by (their `sentinel monitor NAME ...`).
    sentinel_master: str = "inferfleet"
    # Replicas that must confirm each submit before it returns (Redis WAIT; 0: none, the
    # default). With 1 or more, a job `submit` accepted survives a Sentinel failover.
    wait_replicas: int = Field(0, ge=0)
    wait_timeout_ms: int = Field(1000, ge=1)
    models_dir: Path = Field(default_factory=_default_models_dir)

    # Micro-batching: how many rows one ONNX Runtime call may take, and how long the
    # batcher may hold a batch open while more jobs for its model are known to be coming
    # (being decoded, or still queued in Redis). With nothing coming it never waits.
    max_batch_rows: int = Field(1024, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)

    # Worker shape: jobs in flight per worker process (threads), messages reserved per
    # thread, and ONNX Runtime intra-op threads (0: cores divided by worker processes).
    worker_concurrency: int = Field(32, ge=1)
    prefetch_multiplier: int = Field(4, ge=1)
    worker_processes: int = Field(1, ge=1)
    # One thread by default: the layout is one worker process per core (each is bound by
    # Python near one core), and two `inferfleet worker`s sized for the whole machine
    # each took both cores of this one: bulk 31k against 39k samples/s (bench, same run).
    ort_threads: int = Field(1, ge=0)

    # Reliability: a job runs at most job_time_limit_s; an unacked message comes back
    # after visibility_timeout_s, which must exceed the longest time a message is held.
    job_time_limit_s: float = Field(120.0, gt=0)
    visibility_timeout_s: float = Field(900.0, gt=0)
    # How often a worker sweeps for messages whose visibility timeout passed (a job whose
    # worker died comes back within about visibility_timeout_s + restore_sweep_s), and how
    # many deliveries a job gets before it is dead-lettered (a job that kills its worker
    # would otherwise come back forever: Redis keeps no delivery count).
    restore_sweep_s: float = Field(10.0, gt=0)
    max_deliveries: int = Field(3, ge=1)
    # A worker channel whose heartbeat lapsed this long is taken for dead: the messages
    # it held go back to their queues (see `liveness`); workers beat 5 times as often.
    heartbeat_timeout_s: float = Field(10.0, gt=0)
    # How often each worker ends (as expired) jobs whose deadline passed with no result
    # (their message lost, or no worker free), job_time_limit_s after the deadline.
    reaper_interval_s: float = Field(5.0, gt=0)
    # The deadline of a job submitted without one: every job has one, so that nothing is
    # pending forever (a job Redis forgot, restarted without persistence, ends `expired`).
    default_deadline_s: float = Field(3600.0, gt=0)
    socket_timeout_s: float = Field(10.0, gt=0)

    # Retention of results, job ledgers and sessions in Redis; a session's stream keeps
    # about this many of its latest finished jobs.
    result_ttl_s: int = Field(86_400, ge=1)
    session_stream_max_jobs: int = Field(100_000, ge=1)

    # Backpressure: jobs a model's queue may hold before `submit` refuses more (0: no
    # limit). The broker never relies on eviction.
    max_queued_jobs: int = Field(100_000, ge=0)

    # Limits on what one job may carry; a bigger message is refused by the producer and
    # dead-lettered by a worker.
    max_message_bytes: int = Field(64 * 2**20, ge=1024)
    max_job_samples: int = Field(100_000, ge=1)
    max_sample_elements: int = Field(1_000_000, ge=1)

    # `inferfleet up`: where the embedded server keeps its AOF, and Flower's port.
    data_dir: Path = Path(".inferfleet")
    flower_port: int = Field(5555, ge=0, le=65535)
    # ONNX Runtime execution providers, best first, comma-separated (default: CUDA when
    # this onnxruntime build and the machine have it, else CPU; CPU is always the last).
    execution_providers: str = ""
    # Log lines as text, or one JSON object per line (with job, session, model and batch
    # ids where a record has them).
    log_format: Literal["text", "json"] = "text"
    # The result cache (`inferfleet.cache`): how long an entry lives (one to two of
    # these), and the most bytes it may hold in the broker Redis (it never evicts).
    cache_ttl_s: int = Field(3600, ge=1)
    cache_max_bytes: int = Field(64 * 2**20, ge=0)
    # OpenTelemetry traces of every job (the `tracing` extra; see `inferfleet.tracing`).
    otel: bool = False
    # A worker's Prometheus /metrics port (0: none); `up` gives its worker N port + N.
    metrics_port: int = Field(0, ge=0, le=65535)
    # "user:password" (comma-separated for several); required for Flower off loopback.
    flower_basic_auth: SecretStr | None = None

    @model_validator(mode="after")
    def _check_redis_url(self) -> Settings:
        schemes = {urlsplit(part).scheme for part in self.redis_url.split(";")}
        if len(schemes) != 1 or not schemes <= {"redis", "rediss", "unix", "sentinel"} or (
                ";" in self.redis_url and schemes != {"sentinel"}):
            raise ValueError(
                f"redis_url {mask_url(self.redis_url)!r} must start with redis://, "
                "rediss:// or unix://, or list Sentinels as sentinel://host:port;"
                "sentinel://host:port/db"
            )
        return self

    @property
    def uses_sentinel(self) -> bool:
        """Whether `redis_url` lists Sentinels rather than one server."""
        return self.redis_url.startswith("sentinel://")

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "redis_url" else value

    def check_visibility_timeout(self) -> None:
        """Refuse settings under which a held message would be delivered twice.

        A reserved message's visibility clock starts at prefetch. It waits behind at
        most `prefetch_multiplier` jobs per thread, each bounded by `job_time_limit_s`,
        and then runs for up to `job_time_limit_s` itself.

        Raises:
            ConfigurationError: if `visibility_timeout_s` is not longer than that.
        """
        longest_hold_s = (self.prefetch_multiplier + 1) * self.job_time_limit_s
        if self.visibility_timeout_s <= longest_hold_s:
            raise ConfigurationError(
                f"visibility_timeout_s={self.visibility_timeout_s:g} must exceed the longest "
                f"hold time (prefetch_multiplier + 1) * job_time_limit_s = {longest_hold_s:g}"
                " s, or held messages are delivered twice"
            )

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a worker beats for its channels and looks for lapsed ones."""
        return self.heartbeat_timeout_s / 5

    def provider_list(self) -> list[str]:
        """`execution_providers` as a list (empty: the default choice)."""
        return [name.strip() for name in self.execution_providers.split(",") if name.strip()]

    def ort_threads_per_process(self) -> int:
        """Intra-op threads for each ONNX Runtime session, so processes x threads fit."""
        if self.ort_threads:
            return self.ort_threads
        return max(1, (os.cpu_count() or 1) // self.worker_processes)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with keyword overrides on top.

    Without a `redis_url` (neither given nor in `INFERFLEET_REDIS_URL`), the Redis of the
    fleet that `inferfleet up` runs from the data folder is used, if one runs
    (`fleetfile`), else the default: so clients on the machine find it with no export.

    Raises:
        ConfigurationError: naming the setting and the bad value.
    """
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        raise ConfigurationError(f"invalid settings: {exc}") from exc
    if "redis_url" in overrides or "INFERFLEET_REDIS_URL" in os.environ:
        return settings
    from inferfleet.fleetfile import live_fleet  # fleetfile needs no settings

    fleet = live_fleet(settings.data_dir)
    return settings if fleet is None else settings.model_copy(
        update={"redis_url": fleet.redis_url})
