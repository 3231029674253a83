"""The one place where redis-py's errors become the project's (metering/errors.py).

- Unreachable, timed out, loading, a broken socket: StoreUnavailable (retriable; every
  store call is idempotent, so the caller redoes it).
- A refused login: ConfigError (retrying a wrong password only locks the user out).
- Anything else (a script error, a wrong type): raised as it is, a bug to stop on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from metering.errors import ConfigError, StoreUnavailable

#: What a lost or unreachable server looks like to redis-py.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    OSError,
)


def unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"redis: {exc}")


def refused_login(exc: BaseException) -> bool:
    if isinstance(exc, redis.AuthenticationError):
        return True
    return isinstance(exc, redis.ResponseError) and ("WRONGPASS" in str(exc) or "NOAUTH" in str(exc))


@contextmanager
def mapped() -> Iterator[None]:
    """Run a redis-py call with its errors mapped (see the module's docstring)."""
    try:
        yield
    except redis.RedisError as exc:
        if refused_login(exc):
            raise ConfigError(f"redis authentication failed: {exc}") from None
        if isinstance(exc, TRANSIENT):
            raise unavailable(exc) from exc
        raise
    except OSError as exc:
        raise unavailable(exc) from exc
