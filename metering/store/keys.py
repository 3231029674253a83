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

import re
from types import MappingProxyType
from typing import Final


def escape_account(account: str) -> str:
    return account.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


_ESCAPED = re.compile(r"%(25|7B|7D)")
_UNESCAPE = {"25": "%", "7B": "{", "7D": "}"}


def unescape_account(escaped: str) -> str:
    """The inverse of `escape_account` (one left-to-right pass, so `%257B` is `%7B`)."""
    return _ESCAPED.sub(lambda m: _UNESCAPE[m.group(1)], escaped)


def account_base(prefix: str, account: str) -> str:
    """`<prefix>:{<account>}:`; the store's scripts derive every per-account key from it."""
    return f"{prefix}:{{{escape_account(account)}}}:"


# Suffixes after the account base.
SUB: Final = "sub"  # hash: subscription state
WATERMARK: Final = "wm"  # hash: <topic>/<partition> -> last applied offset; dc:<bucket> -> dedup field count
LIFE: Final = "life"  # hash: meter -> lifetime total
FIRED: Final = "fired"  # hash: trigger scope -> fired mark (JSON)
OUTBOX: Final = "ob"  # list: triggers recorded but not yet acknowledged by Kafka
MRR: Final = "mrr"  # hash: v (write version), mrr (micro-units), paid ("1" once ever paid)
HISTORY: Final = "mh"  # list: the account's MRR movements (JSON), oldest first (SPEC 7.3)
CONVERTED: Final = "cv"  # hash: trigger id -> its conversion (JSON), at most one per trigger
# Prefixes of keys with a variable part (base .. prefix .. part).
PERIOD: Final = "p:"  # hash per billing period: <meter>:v value, <meter>:n events, <meter>:t time
UNIQUE: Final = "u:"  # set per unique_count meter and period: u:<meter>:<period>
WEEKS: Final = "w:"  # hash per power-user meter: ISO week -> matching events (12 kept)
DEDUP: Final = "dd:"  # hash per dedup bucket: 12-byte digests packed in fields (expires after two windows)
# The one-field-per-id layout before issue 14 (base64 digest -> 1): never written any more, only
# read while such hashes can still exist (two dedup windows after an upgrade; see apply.lua).
DEDUP_V1: Final = "d:"

#: The names the Lua scripts use (`K.<name>` in the preamble).
LUA: Final = MappingProxyType(
    {
        "sub": SUB,
        "wm": WATERMARK,
        "life": LIFE,
        "fired": FIRED,
        "outbox": OUTBOX,
        "mrr": MRR,
        "history": HISTORY,
        "converted": CONVERTED,
        "period": PERIOD,
        "unique": UNIQUE,
        "weeks": WEEKS,
        "dedup": DEDUP,
        "dedup_v1": DEDUP_V1,
    }
)


def account_of_key(prefix: str, key: str, suffix: str) -> str | None:
    """The account of `<prefix>:{<escaped account>}:<suffix>`, or None for any other key (a
    SCAN pattern also matches longer prefixes and keys whose tag holds more braces)."""
    head, tail = f"{prefix}:{{", f"}}:{suffix}"
    if not (key.startswith(head) and key.endswith(tail)):
        return None
    middle = key[len(head) : len(key) - len(tail)]
    if not middle or "{" in middle or "}" in middle:
        return None
    return unescape_account(middle)


def scan_pattern(prefix: str, suffix: str) -> str:
    """A SCAN MATCH pattern for one per-account key suffix under `prefix` (the prefix holds no
    glob characters: settings allow letters, digits and `_.:-` only)."""
    return f"{prefix}:{{*}}:{suffix}"


def catalog_key(prefix: str) -> str:
    """`<prefix>:catalog`, a hash (`yaml`, `version`, `source`, `saved_ms`): the catalog the
    service runs, for the commands of a second terminal. Not an account key, so no hash tag:
    it is read and written alone, one command at a time, and on Redis Cluster simply lives in
    the slot its name hashes to. It cannot collide with an account key (those carry `{`)."""
    return f"{prefix}:catalog"
