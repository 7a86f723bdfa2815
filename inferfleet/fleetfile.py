"""The record `inferfleet up` keeps of the fleet it runs, in its data folder, so that
clients and commands on the same machine find it with no export, and a second `up`
never starts a second Redis on the same AOF files.

`fleet.json` holds the Redis URL with its password (mode 0600, like the password file
beside it) and the pid of the `up` that wrote it; it is removed when that `up` stops,
and a file whose pid is gone (an `up` killed with SIGKILL) is taken as stale.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FLEET_FILE = "fleet.json"
PASSWORD_FILE = "redis-password"


@dataclass(frozen=True)
class FleetRecord:
    """A running `inferfleet up`: where its Redis is, and its pid."""

    redis_url: str
    pid: int
    started_at: float


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by this user only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def fleet_password(data_dir: Path) -> str:
    """The password of the fleet's Redis: made once per data folder, then kept."""
    path = data_dir / PASSWORD_FILE
    if path.is_file():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    write_private(path, password + "\n")
    return password


def record_fleet(data_dir: Path, redis_url: str) -> FleetRecord:
    """Say that this process runs the fleet of `data_dir`, at `redis_url`."""
    record = FleetRecord(redis_url=redis_url, pid=os.getpid(), started_at=time.time())
    write_private(data_dir / FLEET_FILE, json.dumps(asdict(record)) + "\n")
    return record


def live_fleet(data_dir: Path) -> FleetRecord | None:
    """The fleet that an `up` still running serves from `data_dir`, if any."""
    try:
        raw = json.loads((data_dir / FLEET_FILE).read_text())
        record = FleetRecord(redis_url=str(raw["redis_url"]), pid=int(raw["pid"]),
                             started_at=float(raw["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if _alive(record.pid) else None


def forget_fleet(data_dir: Path) -> None:
    """Remove this process's record (at stop); another process's stays."""
    path = data_dir / FLEET_FILE
    record = live_fleet(data_dir)
    if record is not None and record.pid == os.getpid():
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
