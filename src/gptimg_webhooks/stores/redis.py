"""A Redis ledger (``redis-py``): shared by every process on every host that reaches it.

URL: ``redis://[user:password@]host:6379/0?prefix=gptimg:`` or ``rediss://`` for TLS.
Query options: ``prefix`` (key prefix, default ``gptimg:``), and redis-py's own
``socket_timeout`` / ``socket_connect_timeout`` (both default to 1 s here, so a dead
server becomes a 503 well inside the provider's 5 s) and ``max_connections``.

Every state change is one Lua script, so it is atomic on the server: a claim is a
compare-and-set on the record's state, lease and fencing token, and ``complete`` /
``fail`` act only while the caller's token still holds the lease. Timestamps come from
the callers' clocks (like every store), so keep the hosts' clocks in sync (NTP).

Key layout, with ``P`` the prefix::

    P d:<key>         hash: state, delivery_id, event, generation_id, attempts, token,
                      lease_until, available_at, body, error, created_at, updated_at
    P s:<state>       sorted set of keys in that state, scored by updated_at
                      (listing newest first, and pruning finished records)
    P due             sorted set of pending keys, scored by when they become leasable
    P leases          sorted set of processing keys, scored by lease expiry
    P failures        the shared count of consecutive handler failures

Nothing needs creating: the keys appear on first use. Retention: ``prune`` (which the
receiver runs about hourly with its ``retention``, 30 days by default) deletes
finished records (done, failed, dead) older than the cutoff; no key carries a TTL, so
run Redis with ``maxmemory-policy noeviction`` (or a ``volatile-*`` policy): an
``allkeys-*`` policy could evict records and let a replay through. Use a standalone
server or a Sentinel-managed primary; Redis Cluster is not supported (the scripts touch
keys they compute). Persistence (AOF ``appendfsync everysec``) bounds what a crash of
Redis itself can forget to about a second of claims.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.connection
import redis.exceptions
import redis.retry

from gptimg_webhooks._core.errors import ConfigurationError, StoreUnavailable
from gptimg_webhooks._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store

from .memory import new_token

__all__ = ["RedisStore"]

DEFAULT_PREFIX = "gptimg:"
#: Seconds to connect and to wait for an answer: a dead or jammed server must turn
#: into a 503 well inside the provider's 5 s timeout.
DEFAULT_TIMEOUT = 1.0
_PRUNE_BATCH = 500

_PRELUDE = """
local P = ARGV[1]
local function move(key, old, new, score)
  if old then redis.call('ZREM', P .. 's:' .. old, key) end
  redis.call('ZADD', P .. 's:' .. new, score, key)
end
local function opt(rec, field, value)
  if string.len(value) > 0 then redis.call('HSET', rec, field, string.sub(value, 2)) end
end
"""

# ARGV: P, key, delivery_id, =event|'', =generation_id|'', body, now, lease_until,
# token, defer. Returns {status, attempts}.
_CLAIM = (
    _PRELUDE
    + """
local rec, key, now, lease_until, token = KEYS[1], ARGV[2], ARGV[7], ARGV[8], ARGV[9]
local defer = ARGV[10] == '1'
local state = redis.call('HGET', rec, 'state')
if not state then
  redis.call('HSET', rec, 'delivery_id', ARGV[3], 'body', ARGV[6],
             'created_at', now, 'updated_at', now)
  opt(rec, 'event', ARGV[4])
  opt(rec, 'generation_id', ARGV[5])
  if defer then
    redis.call('HSET', rec, 'state', 'pending', 'attempts', 0)
    move(key, nil, 'pending', now)
    redis.call('ZADD', P .. 'due', now, key)
    return {'pending', 0}
  end
  redis.call('HSET', rec, 'state', 'processing', 'attempts', 1, 'token', token,
             'lease_until', lease_until)
  move(key, nil, 'processing', now)
  redis.call('ZADD', P .. 'leases', lease_until, key)
  return {'claimed', 1}
end
if state == 'done' or state == 'dead' or state == 'pending' then return {state, 0} end
if state == 'processing' then
  local held = tonumber(redis.call('HGET', rec, 'lease_until') or '0') > tonumber(now)
  if held or defer then
    -- An expired lease stays in 'leases', where a worker's lease_pending finds it.
    return {defer and 'pending' or 'in_progress', 0}
  end
elseif defer then  -- failed: back to the queue
  redis.call('HSET', rec, 'state', 'pending', 'updated_at', now)
  redis.call('HDEL', rec, 'token', 'lease_until', 'available_at')
  move(key, state, 'pending', now)
  redis.call('ZADD', P .. 'due', now, key)
  return {'pending', 0}
end
local attempts = redis.call('HINCRBY', rec, 'attempts', 1)
redis.call('HSET', rec, 'state', 'processing', 'token', token, 'lease_until', lease_until,
           'updated_at', now)
redis.call('HDEL', rec, 'available_at')
move(key, state, 'processing', now)
redis.call('ZADD', P .. 'leases', lease_until, key)
return {'claimed', attempts}
"""
)

# ARGV: P, key, token, now, new state, error, retry_at|''. Returns 1 when settled.
_SETTLE = (
    _PRELUDE
    + """
local rec, key, token, now, new = KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cur = redis.call('HMGET', rec, 'state', 'token')
if cur[1] ~= 'processing' or cur[2] ~= token then return 0 end
redis.call('HSET', rec, 'state', new, 'updated_at', now)
redis.call('HDEL', rec, 'token', 'lease_until', 'available_at')
redis.call('ZREM', P .. 'leases', key)
move(key, 'processing', new, now)
if new == 'done' then
  redis.call('HDEL', rec, 'body', 'error')
  redis.call('SET', P .. 'failures', 0)
else
  redis.call('HSET', rec, 'error', ARGV[6])
  if new == 'pending' then
    redis.call('HSET', rec, 'available_at', ARGV[7])
    redis.call('ZADD', P .. 'due', ARGV[7], key)
  end
end
return 1
"""
)

# ARGV: P, key, now. Returns 1 when the record went back to pending.
_REPLAY = (
    _PRELUDE
    + """
local rec, key, now = KEYS[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', rec, 'state')
if state ~= 'failed' and state ~= 'dead' then return 0 end
redis.call('HSET', rec, 'state', 'pending', 'updated_at', now)
redis.call('HDEL', rec, 'available_at')
move(key, state, 'pending', now)
redis.call('ZADD', P .. 'due', now, key)
return 1
"""
)

# ARGV: P, now, lease_until, limit, token... Returns {key, HGETALL...} per leased record.
_LEASE = (
    _PRELUDE
    + """
local now, lease_until, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
local function take(set, wanted)
  local keys = redis.call('ZRANGEBYSCORE', P .. set, '-inf', now, 'LIMIT', 0, limit - #out)
  for _, key in ipairs(keys) do
    local rec = P .. 'd:' .. key
    local state = redis.call('HGET', rec, 'state')
    redis.call('ZREM', P .. set, key)
    if state == wanted then
      redis.call('HINCRBY', rec, 'attempts', 1)
      redis.call('HSET', rec, 'state', 'processing', 'token', ARGV[5 + #out],
                 'lease_until', lease_until, 'updated_at', now)
      redis.call('HDEL', rec, 'available_at')
      move(key, state, 'processing', now)
      redis.call('ZADD', P .. 'leases', lease_until, key)
      out[#out + 1] = {key, redis.call('HGETALL', rec)}
    end
  end
end
take('due', 'pending')
if #out < limit then take('leases', 'processing') end
return out
"""
)

# ARGV: P, before, batch. Returns how many finished records it deleted.
_PRUNE = (
    _PRELUDE
    + """
local before, batch, n = '(' .. ARGV[2], tonumber(ARGV[3]), 0
for _, state in ipairs({'done', 'failed', 'dead'}) do
  if n >= batch then break end
  local keys = redis.call('ZRANGEBYSCORE', P .. 's:' .. state, '-inf', before,
                          'LIMIT', 0, batch - n)
  for _, key in ipairs(keys) do
    redis.call('DEL', P .. 'd:' .. key)
    redis.call('ZREM', P .. 's:' .. state, key)
    n = n + 1
  end
end
return n
"""
)

# ARGV: P, limit. Returns 1 when the streak passed the limit (and was reset).
_FAILURE = """
local n = redis.call('INCR', ARGV[1] .. 'failures')
if n > tonumber(ARGV[2]) then
  redis.call('SET', ARGV[1] .. 'failures', 0)
  return 1
end
return 0
"""

_SCRIPTS = {
    "claim": _CLAIM,
    "settle": _SETTLE,
    "replay": _REPLAY,
    "lease": _LEASE,
    "prune": _PRUNE,
    "failure": _FAILURE,
}
_STATUS = {
    b"claimed": ClaimStatus.CLAIMED,
    b"done": ClaimStatus.DONE,
    b"dead": ClaimStatus.DEAD,
    b"pending": ClaimStatus.PENDING,
    b"in_progress": ClaimStatus.IN_PROGRESS,
}
_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


def _opt(value: str | None) -> str:
    """Encode an optional string for the scripts: '' is None, '=x' is 'x'."""
    return "" if value is None else "=" + value


def _num(value: float) -> str:
    # repr keeps every digit; Lua's own number formatting would round to 14.
    return repr(float(value))


def _record(key: str, fields: dict[bytes, bytes]) -> Record:
    def text(name: bytes) -> str | None:
        value = fields.get(name)
        return value.decode() if value is not None else None

    def number(name: bytes) -> float | None:
        value = fields.get(name)
        return float(value) if value is not None else None

    return Record(
        key=key,
        state=State(fields[b"state"].decode()),
        delivery_id=fields[b"delivery_id"].decode(),
        event=text(b"event"),
        generation_id=text(b"generation_id"),
        attempts=int(fields.get(b"attempts", b"0")),
        body=fields.get(b"body"),
        error=text(b"error"),
        created_at=float(fields[b"created_at"]),
        updated_at=float(fields[b"updated_at"]),
        lease_until=number(b"lease_until"),
        available_at=number(b"available_at"),
    )


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except _ERRORS as exc:
        raise StoreUnavailable(f"Redis ledger {what}: {type(exc).__name__}: {exc}") from exc


class RedisStore(Store):
    """A ledger in Redis; sync and asyncio clients, each with its own connection pool."""

    schemes = ("redis", "rediss")
    native_async = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = DEFAULT_PREFIX):
        if not prefix:
            raise ConfigurationError("the Redis key prefix must not be empty")
        self.prefix = prefix
        self._url = url
        parts = urlsplit(url)
        if parts.scheme not in self.schemes:
            raise ConfigurationError(f"not a Redis URL: {url!r}")
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        try:
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # fail now, not on first use
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from exc
        # Defaults only: redis-py lets options in the URL's query override them.
        self._options: dict[str, Any] = {
            "socket_timeout": DEFAULT_TIMEOUT,
            "socket_connect_timeout": DEFAULT_TIMEOUT,
        }
        self._pid = os.getpid()
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._aclients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[redis.asyncio.Redis, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()
        # Clients of a parent process: never closed here (their sockets are the parent's).
        self._orphans: list[Any] = []

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        return cls(urlunsplit(parts._replace(query=rest)), prefix=prefix)

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self.prefix!r})"

    # Clients ------------------------------------------------------------------------

    def _sync(self) -> tuple[redis.Redis, dict[str, Any]]:
        if self._client is None or self._pid != os.getpid():
            self._after_fork()
            retry = redis.retry.Retry(
                redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
            )
            # One retry, at once: it replaces a pooled connection the server dropped.
            client = redis.Redis.from_url(self._url, retry=retry, **self._options)
            self._scripts = {n: client.register_script(s) for n, s in _SCRIPTS.items()}
            self._client = client
        return self._client, self._scripts

    def _async(self) -> tuple[redis.asyncio.Redis, dict[str, Any]]:
        self._after_fork()
        # asyncio connections belong to the loop that made them: one client per loop.
        loop = asyncio.get_running_loop()
        found = self._aclients.get(loop)
        if found is None:
            retry = redis.asyncio.retry.Retry(
                redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
            )
            client = redis.asyncio.Redis.from_url(self._url, retry=retry, **self._options)
            scripts = {n: client.register_script(s) for n, s in _SCRIPTS.items()}
            found = self._aclients[loop] = (client, scripts)
        return found

    def _after_fork(self) -> None:
        if self._pid == os.getpid():
            return
        self._orphans += [self._client, *self._aclients.values()]
        self._client, self._scripts = None, {}
        self._aclients = weakref.WeakKeyDictionary()
        self._pid = os.getpid()

    def _rec(self, key: str) -> str:
        return f"{self.prefix}d:{key}"

    def _errors(self, what: str) -> Any:
        return _unavailable(f"{self._where} ({what})")

    # Arguments and results, shared by the sync and async methods --------------------

    def _claim_args(self, entry: Entry, now: float, lease: float, defer: bool) -> list[Any]:
        return [
            self.prefix,
            entry.key,
            entry.delivery_id,
            _opt(entry.event),
            _opt(entry.generation_id),
            entry.body,
            _num(now),
            _num(now + lease),
            new_token(),
            "1" if defer else "0",
        ]

    @staticmethod
    def _claim_result(result: Sequence[Any], token: str) -> Claim:
        status = _STATUS[result[0]]
        if status is ClaimStatus.CLAIMED:
            return Claim(status, int(result[1]), token)
        return Claim(status)

    def _fail_args(
        self, key: str, token: str, error: str, *, now: float, dead: bool, retry_at: float | None
    ) -> list[Any]:
        state = State.DEAD if dead else State.PENDING if retry_at is not None else State.FAILED
        return [
            self.prefix,
            key,
            token,
            _num(now),
            state.value,
            error,
            "" if retry_at is None else _num(retry_at),
        ]

    def _lease_args(self, now: float, lease: float, limit: int) -> list[Any]:
        return [self.prefix, _num(now), _num(now + lease), limit] + [
            new_token() for _ in range(limit)
        ]

    @staticmethod
    def _leased(result: Sequence[Any]) -> list[tuple[Record, Claim]]:
        leased = []
        for raw_key, flat in result:
            fields = _pairs(flat)
            rec = _record(raw_key.decode(), fields)
            leased.append(
                (rec, Claim(ClaimStatus.CLAIMED, rec.attempts, fields[b"token"].decode()))
            )
        return leased

    # Sync ---------------------------------------------------------------------------

    def claim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        args = self._claim_args(entry, now, lease, defer)
        with self._errors("claim"):
            _, scripts = self._sync()
            result = scripts["claim"](keys=[self._rec(entry.key)], args=args)
        return self._claim_result(result, args[8])

    def complete(self, key: str, token: str, *, now: float) -> bool:
        args = [self.prefix, key, token, _num(now), State.DONE.value, "", ""]
        with self._errors("complete"):
            _, scripts = self._sync()
            return bool(scripts["settle"](keys=[self._rec(key)], args=args))

    def fail(
        self,
        key: str,
        token: str,
        error: str,
        *,
        now: float,
        dead: bool = False,
        retry_at: float | None = None,
    ) -> bool:
        args = self._fail_args(key, token, error, now=now, dead=dead, retry_at=retry_at)
        with self._errors("fail"):
            _, scripts = self._sync()
            return bool(scripts["settle"](keys=[self._rec(key)], args=args))

    def get(self, key: str) -> Record | None:
        with self._errors("get"):
            client, _ = self._sync()
            fields = cast("dict[bytes, bytes]", client.hgetall(self._rec(key)))
        return _record(key, fields) if fields else None

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        states = [state] if state is not None else list(State)
        with self._errors("records"):
            client, _ = self._sync()
            pipe = client.pipeline(transaction=False)
            for s in states:
                pipe.zrevrange(f"{self.prefix}s:{s.value}", 0, limit - 1, withscores=True)
            newest = sorted(
                (pair for found in pipe.execute() for pair in found),
                key=lambda pair: pair[1],
                reverse=True,
            )[:limit]
            pipe = client.pipeline(transaction=False)
            for raw_key, _score in newest:
                pipe.hgetall(self._rec(raw_key.decode()))
            rows = pipe.execute()
        # A record pruned between the two round trips is simply left out.
        return [_record(k.decode(), f) for (k, _), f in zip(newest, rows, strict=True) if f]

    def replay(self, key: str, *, now: float) -> bool:
        with self._errors("replay"):
            _, scripts = self._sync()
            return bool(
                scripts["replay"](keys=[self._rec(key)], args=[self.prefix, key, _num(now)])
            )

    def prune(self, before: float) -> int:
        total = 0
        with self._errors("prune"):
            _, scripts = self._sync()
            while True:  # in batches, so no single script blocks the server for long
                n = int(scripts["prune"](args=[self.prefix, _num(before), _PRUNE_BATCH]))
                total += n
                if n < _PRUNE_BATCH:
                    return total

    def record_failure(self, limit: int) -> bool:
        with self._errors("record_failure"):
            _, scripts = self._sync()
            return bool(scripts["failure"](args=[self.prefix, limit]))

    def lease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        if limit < 1:
            return []
        with self._errors("lease_pending"):
            _, scripts = self._sync()
            result = scripts["lease"](args=self._lease_args(now, lease, limit))
        return self._leased(result)

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client, self._scripts = None, {}

    # Async: native asyncio calls, same scripts --------------------------------------

    async def aclaim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        args = self._claim_args(entry, now, lease, defer)
        with self._errors("claim"):
            _, scripts = self._async()
            result = await scripts["claim"](keys=[self._rec(entry.key)], args=args)
        return self._claim_result(result, args[8])

    async def acomplete(self, key: str, token: str, *, now: float) -> bool:
        args = [self.prefix, key, token, _num(now), State.DONE.value, "", ""]
        with self._errors("complete"):
            _, scripts = self._async()
            return bool(await scripts["settle"](keys=[self._rec(key)], args=args))

    async def afail(
        self,
        key: str,
        token: str,
        error: str,
        *,
        now: float,
        dead: bool = False,
        retry_at: float | None = None,
    ) -> bool:
        args = self._fail_args(key, token, error, now=now, dead=dead, retry_at=retry_at)
        with self._errors("fail"):
            _, scripts = self._async()
            return bool(await scripts["settle"](keys=[self._rec(key)], args=args))

    async def arecord_failure(self, limit: int) -> bool:
        with self._errors("record_failure"):
            _, scripts = self._async()
            return bool(await scripts["failure"](args=[self.prefix, limit]))

    async def aprune(self, before: float) -> int:
        total = 0
        with self._errors("prune"):
            _, scripts = self._async()
            while True:
                n = int(await scripts["prune"](args=[self.prefix, _num(before), _PRUNE_BATCH]))
                total += n
                if n < _PRUNE_BATCH:
                    return total

    async def alease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        if limit < 1:
            return []
        with self._errors("lease_pending"):
            _, scripts = self._async()
            result = await scripts["lease"](args=self._lease_args(now, lease, limit))
        return self._leased(result)

    async def aclose(self) -> None:
        """Close this event loop's client, then the sync one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always called from a loop
            loop = None
        found = self._aclients.pop(loop, None) if loop is not None else None
        if found is not None and self._pid == os.getpid():
            await found[0].aclose()
        self.close()
