"""Redis key names. Every key of one account carries the account in a hash tag, so one Lua
script can touch all of them on Redis Cluster; every key starts with METERING_KEY_PREFIX so
deployments and test runs can share one Redis.

Invariant: the hash tag is the only `{...}` in a key and is never empty. Account ids are
escaped (`%`, `{`, `}`) so a hostile id cannot move its keys to different slots.
"""

from __future__ import annotations


def escape_account(account: str) -> str:
    return account.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def unescape_account(text: str) -> str:
    return text.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def catalog_key(prefix: str) -> str:
    """`<prefix>:catalog`, a hash (`yaml`, `version`, `source`, `saved_ms`): the catalog the
    service runs, for the commands of a second terminal. Not an account key, so no hash tag:
    it is read and written alone, one command at a time, and on Redis Cluster simply lives in
    the slot its name hashes to. It cannot collide with an account key (those carry `{`)."""
    return f"{prefix}:catalog"


def account_base(prefix: str, account: str) -> str:
    """`<prefix>:{<account>}:`; the store's scripts derive every per-account key from it."""
    return f"{prefix}:{{{escape_account(account)}}}:"


# Suffixes after the account base (kept in one place: the Lua scripts receive the base and
# append these same suffixes; tests and `metering account` read through the store).
SUB = "sub"  # hash: subscription state
WATERMARK = "wm"  # hash: <topic>/<partition> -> last applied offset
LIFE = "life"  # hash: meter -> lifetime total
FIRED = "fired"  # hash: trigger scope -> fired mark (JSON)
OUTBOX = "ob"  # list: triggers recorded but not yet acknowledged by Kafka


def period_key(base: str, period: str) -> str:
    return f"{base}p:{period}"


def unique_key(base: str, meter: str, period: str) -> str:
    return f"{base}u:{meter}:{period}"


def weeks_key(base: str, meter: str) -> str:
    return f"{base}w:{meter}"


def dedup_key(base: str, bucket: int) -> str:
    return f"{base}d:{bucket}"
