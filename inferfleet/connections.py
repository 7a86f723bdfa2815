"""Redis connections from settings: socket timeouts always, TLS for `rediss://` URLs,
the primary a Sentinel names for `sentinel://` URLs.

A `sentinel://h1:26379;sentinel://h2:26379/0` URL lists Sentinels (kombu's form);
`settings.sentinel_master` names the primary they watch. A password in the first part is
the primary's (the Sentinels are asked without one). Every client finds the primary
through them, and again after a failover, so the fleet goes on without restarts.

A `rediss://` URL gets certificate and hostname checks unless it says otherwise. Its
query may name the files TLS needs, in redis-py's and Celery's own words:
`ssl_ca_certs` (the CA bundle to trust; else the system's), `ssl_certfile` and
`ssl_keyfile` (a client certificate), and `ssl_cert_reqs` (`required`, the default, or
`none`, which turns checks off and is logged as a warning).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from inferfleet.errors import ConfigurationError
from inferfleet.settings import Settings, mask_url

logger = logging.getLogger(__name__)

_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "none": ssl.CERT_NONE}


def tls_options(url: str) -> dict[str, Any] | None:
    """The TLS keyword arguments of redis-py (and Celery's `*_use_ssl`) for `url`; None
    for a plaintext URL.

    Raises:
        ConfigurationError: naming a TLS parameter with a value it cannot take.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    if reqs not in _CERT_REQS:
        raise ConfigurationError(f"redis_url {mask_url(url)!r}: ssl_cert_reqs must be one of "
                                 f"{sorted(_CERT_REQS)}, got {query['ssl_cert_reqs']!r}")
    if reqs == "none":
        logger.warning("redis_url %s: ssl_cert_reqs=none, the server's certificate is NOT "
                       "checked", mask_url(url))
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs],
                               "ssl_check_hostname": reqs == "required"}
    options.update({name: query[name] for name in _TLS_FILES if name in query})
    return options


def plain_url(url: str) -> str:
    """`url` without its TLS query parameters (they travel as keyword arguments)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in (*_TLS_FILES,
                                                                      "ssl_cert_reqs")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for a redis-py client of `settings.redis_url`."""
    return {"socket_timeout": settings.socket_timeout_s,
            "socket_connect_timeout": settings.socket_timeout_s,
            **(tls_options(settings.redis_url) or {})}


def redis_client(settings: Settings) -> redis.Redis:
    """A redis-py client of `settings.redis_url`, with its timeouts and TLS (the current
    primary, for Sentinels)."""
    if settings.uses_sentinel:
        sentinels, auth, db = sentinel_parts(settings.redis_url)
        # Typed loosely: redis-py 8 annotates Sentinel, earlier versions do not.
        options: dict[str, Any] = {"db": db, **auth, **_socket(settings)}
        primary = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            sentinels, sentinel_kwargs=_socket(settings)).master_for(
            settings.sentinel_master, redis_class=redis.Redis, **options)
        return primary  # type: ignore[no-any-return, unused-ignore]
    return redis.Redis.from_url(plain_url(settings.redis_url), **client_options(settings))


def async_redis_client(settings: Settings) -> aioredis.Redis:
    """`redis_client`, for asyncio."""
    if settings.uses_sentinel:
        sentinels, auth, db = sentinel_parts(settings.redis_url)
        options: dict[str, Any] = {"db": db, **auth, **_socket(settings)}
        primary = AsyncSentinel(  # type: ignore[no-untyped-call, unused-ignore]
            sentinels, sentinel_kwargs=_socket(settings)).master_for(
            settings.sentinel_master, redis_class=aioredis.Redis, **options)
        return primary  # type: ignore[no-any-return]
    return aioredis.Redis.from_url(plain_url(settings.redis_url), **client_options(settings))


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], dict[str, str], int]:
    """(the Sentinels' (host, port)s, the primary's username and password, the db) of a
    `sentinel://` URL list.

    Raises:
        ConfigurationError: if a part names no host.
    """
    sentinels, auth, db = [], {}, 0
    for index, part in enumerate(url.split(";")):
        parts = urlsplit(part)
        if not parts.hostname:
            raise ConfigurationError(f"redis_url {mask_url(url)!r}: sentinel part {index} "
                                     "names no host")
        sentinels.append((parts.hostname, parts.port or SENTINEL_PORT))
        if index == 0:
            auth = {k: v for k, v in (("username", parts.username),
                                      ("password", parts.password)) if v}
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
    return sentinels, auth, db


#: The port a Sentinel listens on when its URL names none.
SENTINEL_PORT = 26379


def _socket(settings: Settings) -> dict[str, Any]:
    return {"socket_timeout": settings.socket_timeout_s,
            "socket_connect_timeout": settings.socket_timeout_s}
