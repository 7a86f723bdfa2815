"""The dead-letter list: messages no worker could take, kept with why, to list or replay."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from inferfleet import keys
from inferfleet.connections import redis_client
from inferfleet.ledger import redis_text
from inferfleet.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    """One message taken off a queue unused."""

    at: float
    queue: str
    reason: str
    job_id: str | None
    letter_id: str
    bytes: int
    #: The list element itself, to remove exactly this entry.
    raw: str


class DeadLetters:
    """Reads and replays `keys.DEAD_LETTERS` (newest first); a context manager."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadLetters:
        return cls(redis_client(settings))

    def entries(self) -> list[DeadLetter]:
        """Every dead letter, newest first."""
        return [DeadLetter(**json.loads(raw), raw=redis_text(raw))
                for raw in self.client.lrange(keys.DEAD_LETTERS, 0, -1)]

    def count(self) -> int:
        return int(self.client.llen(keys.DEAD_LETTERS))

    def since(self, at: float, *, page: int = 100) -> list[DeadLetter]:
        """The dead letters of time `at` or later, newest first, read a page at a time
        until an older one (the list is newest first)."""
        found: list[DeadLetter] = []
        start = 0
        while True:
            raws = self.client.lrange(keys.DEAD_LETTERS, start, start + page - 1)
            for raw in raws:
                entry = DeadLetter(**json.loads(raw), raw=redis_text(raw))
                if entry.at < at:
                    return found
                found.append(entry)
            if len(raws) < page:
                return found
            start += page

    def message(self, entry: DeadLetter) -> bytes | None:
        """The whole message of a dead letter (None once its TTL passed)."""
        raw = self.client.get(keys.dead_message(entry.letter_id))
        return raw.encode() if isinstance(raw, str) else raw

    def replay(self, indexes: Sequence[int] | None = None) -> int:
        """Push the messages at `indexes` (all if None) back onto their queues and take
        them off the list; how many were replayed (a message past its TTL cannot be)."""
        entries = self.entries()
        replayed = 0
        for index in range(len(entries)) if indexes is None else sorted(set(indexes)):
            entry = entries[index]
            message = self.message(entry)
            pipe = self.client.pipeline(transaction=True)
            if message is not None:
                pipe.rpush(entry.queue, message)  # the consuming end: replayed first
                pipe.lpush(keys.queue_bell(entry.queue), "1")
                replayed += 1
            pipe.lrem(keys.DEAD_LETTERS, 1, entry.raw)
            pipe.delete(keys.dead_message(entry.letter_id))
            pipe.execute()
        return replayed

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
