"""The hot paths to Redis: commands packed by hiredis and their replies read as they come,
without redis-py's pipeline, retry and observability layers around every call.

`Wire` keeps one connection per thread (the producer: a single-sample `Client.submit` is
one call); `round_trip` checks one out of the client's pool for each call (the ledger's
writes, made from any of a worker's threads).

Measured (a one-key EVALSHA with a 1.5 KB argument, loopback): 72 us of client CPU
through a redis-py pipeline, 24 us through the connection itself. redis-py's packer
passes every argument through its Python encoder first: cProfile of a worker's finisher
thread put `pack_commands` at 42% of its time (22 arguments per stored result).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis
from hiredis import pack_command

Command = Sequence[Any]


def packed(commands: Sequence[Command]) -> list[bytes]:
    """The commands in Redis's protocol, packed by hiredis in C: redis-py's own packer
    passes every argument through its Python encoder first."""
    return [pack_command(tuple(command)) for command in commands]


def round_trip(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """The raw reply of each command (an error reply as its exception, in its place), in
    one round trip on a connection of `client`'s pool.

    A connection that fails (Redis closed it: a restart, `CLIENT KILL`, an idle timeout,
    a failover) is dropped and the round tried once more on a fresh one, as redis-py's
    own retry does.

    Raises:
        redis.ConnectionError, redis.TimeoutError: if Redis cannot be reached in time.
    """
    sent = packed(commands)
    pool = client.connection_pool
    for attempt in (1, 2):
        connection: Any = pool.get_connection()  # redis-py leaves its methods untyped
        try:
            return _exchange(connection, sent, len(commands))
        except redis.ConnectionError:
            connection.disconnect()
            if attempt == 2:
                raise
        except redis.TimeoutError:
            connection.disconnect()  # its replies may still come: never reuse it
            raise
        finally:
            pool.release(connection)
    raise AssertionError("unreachable")


def _exchange(connection: Any, sent: list[bytes], replies: int) -> list[Any]:
    """Send packed commands on `connection` and read one reply each.

    Raises:
        redis.ConnectionError (an OS error on the socket too), redis.TimeoutError.
    """
    try:
        connection.send_packed_command(sent)
        return [_reply(connection) for _ in range(replies)]
    except OSError as exc:
        raise redis.ConnectionError(f"Redis connection failed: {exc}") from exc


def _reply(connection: Any) -> Any:
    try:
        return connection.read_response()
    except redis.ResponseError as exc:  # an error reply: the next reply is still owed
        return exc


class Wire:
    """Sends rounds of commands on a connection of `client`'s pool kept by each thread."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()

    def send(self, commands: Sequence[Command]) -> list[Any]:
        """The raw reply of each command (an error reply as its exception, in its place),
        in one round trip.

        A connection that served earlier calls and fails now (Redis closed it: a restart,
        `CLIENT KILL`, an idle timeout, a failover) is replaced and the round tried once
        more, as redis-py's own retry does; a fresh one that fails raises.

        Raises:
            redis.ConnectionError, redis.TimeoutError: if Redis cannot be reached in time
                (the connection is dropped; the next call opens a new one).
        """
        # redis-py's packer cost ~20 us of a submit's 18 arguments.
        sent = packed(commands)
        reused = getattr(self._local, "connection", None) is not None
        try:
            return self._round_trip(sent, len(commands))
        except redis.ConnectionError:
            if not reused:
                raise
            return self._round_trip(sent, len(commands))

    def _round_trip(self, sent: list[bytes], replies: int) -> list[Any]:
        connection = self._connection()
        try:
            return _exchange(connection, sent, replies)
        except (redis.ConnectionError, redis.TimeoutError):
            self.close()
            raise

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # Checked out for good: this thread's alone (redis-py pools connections by
            # checkout; one that is never returned is one the pool will not hand out).
            # `connect()` explicitly: a Sentinel's connection finds the primary there.
            connection = self._pool.get_connection()
            connection.connect()  # type: ignore[no-untyped-call]
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Drop this thread's connection (the next call opens a new one)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.disconnect()
            self._pool.release(connection)
