"""Redis key names, in one place for Python and Lua alike.

Every key of one account carries the account in a hash tag, so one Lua script can touch all
of them on Redis Cluster; every key starts with METERING_KEY_PREFIX so deployments and test
runs can share one Redis. The scripts receive the account's base (`<prefix>:{<account>}:`)
and build every other key from the suffixes below, which reach them through the preamble
that `metering.store.codec.lua_preamble` generates from this module: a name changed here
changes in the scripts too.

Invariant: the hash tag is the only `{...}` in a key and is never empty. Account ids are
escaped (`%`, `{`, `}`) so a hostile id cannot move its keys to different slots.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final


def escape_account(account: str) -> str:
    return account.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def account_base(prefix: str, account: str) -> str:
    """`<prefix>:{<account>}:`; the store's scripts derive every per-account key from it."""
    return f"{prefix}:{{{escape_account(account)}}}:"


# Suffixes after the account base.
SUB: Final = "sub"  # hash: subscription state
WATERMARK: Final = "wm"  # hash: <topic>/<partition> -> last applied offset
LIFE: Final = "life"  # hash: meter -> lifetime total
FIRED: Final = "fired"  # hash: trigger scope -> fired mark (JSON)
OUTBOX: Final = "ob"  # list: triggers recorded but not yet acknowledged by Kafka
# Prefixes of keys with a variable part (base .. prefix .. part).
PERIOD: Final = "p:"  # hash per billing period: <meter>:v value, <meter>:n events, <meter>:t time
UNIQUE: Final = "u:"  # set per unique_count meter and period: u:<meter>:<period>
WEEKS: Final = "w:"  # hash per power-user meter: ISO week -> matching events (12 kept)
DEDUP: Final = "d:"  # hash per dedup bucket: id digest -> 1 (expires after two windows)

#: The names the Lua scripts use (`K.<name>` in the preamble).
LUA: Final = MappingProxyType(
    {
        "sub": SUB,
        "wm": WATERMARK,
        "life": LIFE,
        "fired": FIRED,
        "outbox": OUTBOX,
        "period": PERIOD,
        "unique": UNIQUE,
        "weeks": WEEKS,
        "dedup": DEDUP,
    }
)


def catalog_key(prefix: str) -> str:
    """`<prefix>:catalog`, a hash (`yaml`, `version`, `source`, `saved_ms`): the catalog the
    service runs, for the commands of a second terminal. Not an account key, so no hash tag:
    it is read and written alone, one command at a time, and on Redis Cluster simply lives in
    the slot its name hashes to. It cannot collide with an account key (those carry `{`)."""
    return f"{prefix}:catalog"
