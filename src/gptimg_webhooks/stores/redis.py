"""A Redis ledger (``redis-py``): shared by every process on every host that reaches it.

URL: ``redis://[user:password@]host:6379/0?prefix=gptimg:`` or ``rediss://`` for TLS.
Query options: ``prefix`` (key prefix, default ``gptimg:``), and redis-py's own
``socket_timeout`` / ``socket_connect_timeout`` (both default to 1 s here, so a dead
server becomes a 503 well inside the provider's 5 s) and ``max_connections``. Under
asyncio the larger of the two bounds each call, connecting included, and counts only
while the event loop is free to read the answer: a loop busy with other requests past
the deadline looks again before giving up (for at most ``4 x`` the timeout), since an
answer that is in but not yet read is not an outage.

Every state change is one run of one generic Lua script, ``apply``, which interprets the
:class:`~gptimg_webhooks._core.ledger.Transition` it is given (sources, target, flags)
as a compare-and-set on the record; it is atomic on the server. Times are the server's
own (``TIME``), so no host's clock can break or stretch a lease (``server_time``).

Key layout, with ``P`` the prefix::

    P d:<key>         hash: state, delivery_id, event, generation_id, attempts, token,
                      lease_until, available_at, body, error, created_at, updated_at
    P s:<state>       sorted set of keys in that state, scored by updated_at
                      (listing newest first, and pruning)
    P due             sorted set of pending keys, scored by when they become leasable
    P leases          sorted set of processing keys, scored by lease expiry
    P c:<name>        a shared counter (the failure streak of an endpoint)

Nothing needs creating: the keys appear on first use. Retention: ``prune`` deletes
records of the given states older than the cutoff; no key carries a TTL, so run Redis
with ``maxmemory-policy noeviction`` (or a ``volatile-*`` policy): an ``allkeys-*``
policy could evict records and let a replay through. Use a standalone server or a
Sentinel-managed primary; Redis Cluster is not supported (the scripts touch keys they
compute). Persistence (AOF ``appendfsync everysec``) bounds what a crash of Redis
itself can forget to about a second of claims. Needs Redis 5 or later (scripts that read
``TIME`` and then write are replicated by their effects).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import re
import weakref
from collections.abc import Awaitable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.connection
import redis.exceptions
import redis.retry

from gptimg_webhooks._core.errors import ConfigurationError, StoreUnavailable
from gptimg_webhooks._core.ledger import Applied, Change, Record, State, Stats, Store, Transition

from .memory import new_token

__all__ = ["RedisStore"]

T = TypeVar("T")

DEFAULT_PREFIX = "gptimg:"
#: Seconds to connect and to wait for an answer: a dead or jammed server must turn
#: into a 503 well inside the provider's 5 s timeout.
DEFAULT_TIMEOUT = 1.0
#: Under asyncio, a call whose deadline passed while the loop was busy elsewhere waits on,
#: up to this many times its timeout (then the store counts as unavailable after all).
_STALL_LIMIT = 4.0
#: A deadline seen this much late means the loop was busy: the answer may be in, unread.
_LATE = 0.05
_PRUNE_BATCH = 500
#: Prune batches per call: a bound on the loop, far above any real backlog's need.
_PRUNE_ROUNDS = 100_000

# The server's clock as seconds; written with 6 decimals (Lua's own formatting keeps 14
# digits, which would round microseconds away).
_PRELUDE = """
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(x) return string.format('%.6f', x) end
"""

# KEYS: the record's hash. ARGV: P, key, sources, target, flags (space-separated names
# of the Transition's fields), token, lease, error ('' none, '=text'), delay, counter,
# new token, entry ('' none, else '1'), delivery_id, event, generation_id, body
# (optional texts as for error), traceparent (optional text).
# Returns {1, attempts, token, record fields or {}} or {0, state found or ''}.
_APPLY = (
    _PRELUDE
    + """
local rec, key, target = KEYS[1], ARGV[2], ARGV[4]
local flag = {}
for name in string.gmatch(ARGV[5], '%S+') do flag[name] = true end
local cur = redis.call('HMGET', rec, 'state', 'lease_until', 'available_at', 'token')
local state = cur[1]
-- What each Source means; any other source names a state the row must be in.
local source = {
  absent = function() return not state and ARGV[12] ~= '' end,
  due = function() return state == 'pending' and (not cur[3] or tonumber(cur[3]) <= now) end,
  expired = function() return state == 'processing' and tonumber(cur[2] or '0') <= now end,
  held = function() return state == 'processing' and ARGV[6] ~= '' and cur[4] == ARGV[6] end,
}
local ok = false
for name in string.gmatch(ARGV[3], '%S+') do
  if source[name] then ok = source[name]() else ok = state == name end
  if ok then break end
end
if not ok then return {0, state or ''} end

local set, drop = {'state', target, 'updated_at', num(now)}, {}
local function put(field, value) set[#set + 1] = field; set[#set + 1] = value end
local function text(field, value)
  if value == '' then drop[#drop + 1] = field else put(field, string.sub(value, 2)) end
end
if not state then
  put('delivery_id', ARGV[13]); put('body', ARGV[16])
  put('created_at', num(now)); put('attempts', 0)
  text('event', ARGV[14]); text('generation_id', ARGV[15])
  if ARGV[17] and ARGV[17] ~= '' then put('traceparent', string.sub(ARGV[17], 2)) end
end
local token, lease_until = cur[4] or '', nil
if flag.lease then
  token, lease_until = ARGV[11], num(now + tonumber(ARGV[7]))
  put('token', token); put('lease_until', lease_until)
elseif flag.extend then
  lease_until = num(now + tonumber(ARGV[7]))
  put('lease_until', lease_until)
else
  token = ''
  drop[#drop + 1] = 'token'; drop[#drop + 1] = 'lease_until'
end
local available_at = nil
if flag.delay then
  available_at = num(now + tonumber(ARGV[9]))
  put('available_at', available_at)
else
  drop[#drop + 1] = 'available_at'
end
if flag.error then text('error', ARGV[8]) end
redis.call('HSET', rec, unpack(set))
if flag.clear then drop[#drop + 1] = 'body'; drop[#drop + 1] = 'error' end
if #drop > 0 then redis.call('HDEL', rec, unpack(drop)) end
local attempts = redis.call('HINCRBY', rec, 'attempts', flag.lease and 1 or 0)
if flag.ends_streak and ARGV[10] ~= '' then redis.call('DEL', P .. 'c:' .. ARGV[10]) end

-- The indexes follow the row: its state, whether it is queued, whether it is leased.
if state then redis.call('ZREM', P .. 's:' .. state, key) end
redis.call('ZADD', P .. 's:' .. target, num(now), key)
if target == 'pending' then
  redis.call('ZADD', P .. 'due', available_at or num(now), key)
else
  redis.call('ZREM', P .. 'due', key)
end
if lease_until then
  redis.call('ZADD', P .. 'leases', lease_until, key)
else
  redis.call('ZREM', P .. 'leases', key)
end
return {1, attempts, token, flag.returns_record and redis.call('HGETALL', rec) or {}}
"""
)

# ARGV: P, limit. Returns the queued and the expired keys leasable now, with scores.
_DUE = (
    _PRELUDE
    + """
local function upto(set)
  return redis.call('ZRANGEBYSCORE', P .. set, '-inf', num(now), 'WITHSCORES',
                    'LIMIT', 0, tonumber(ARGV[2]))
end
return {upto('due'), upto('leases')}
"""
)

# ARGV: P, older_than, cutoff ('' on the first batch), batch, states...
# Returns {deleted, cutoff}: later batches reuse the first one's cutoff.
_PRUNE = (
    _PRELUDE
    + """
local cutoff = ARGV[3] ~= '' and ARGV[3] or num(now - tonumber(ARGV[2]))
local batch, n = tonumber(ARGV[4]), 0
for i = 5, #ARGV do
  if n >= batch then break end
  local index = P .. 's:' .. ARGV[i]
  local keys = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. cutoff, 'LIMIT', 0, batch - n)
  for _, key in ipairs(keys) do
    redis.call('DEL', P .. 'd:' .. key)
    redis.call('ZREM', index, key)
    redis.call('ZREM', P .. 'due', key)
    redis.call('ZREM', P .. 'leases', key)
    n = n + 1
  end
end
return {n, cutoff}
"""
)

# KEYS: the counter. ARGV: limit, by. Returns 1 when it reached the limit (and was reset).
_BUMP = """
if redis.call('INCRBY', KEYS[1], ARGV[2]) >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

_SCRIPTS = {"apply": _APPLY, "due": _DUE, "prune": _PRUNE, "bump": _BUMP}
_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


@functools.cache
def _encode(transition: Transition) -> list[str]:
    """Spell a transition for the apply script: its sources, target and set flags."""
    flags = [
        f.name
        for f in dataclasses.fields(transition)
        if getattr(transition, f.name) is True  # the bool fields that are set
    ]
    return [
        " ".join(sorted(s.value for s in transition.sources)),
        transition.target.value,
        " ".join(flags),
    ]


def _opt(value: str | None) -> str:
    """Encode an optional string for the scripts: '' is None, '=x' is 'x'."""
    return "" if value is None else "=" + value


def _num(value: float) -> str:
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
        traceparent=text(b"traceparent"),
    )


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Turn any Redis or network error into StoreUnavailable: the one place it happens."""
    try:
        yield
    except _ERRORS as exc:
        raise StoreUnavailable(f"Redis ledger {what}: {type(exc).__name__}: {exc}") from exc


async def _bounded(call: Awaitable[T], timeout: float | None) -> T:
    """Await ``call`` for ``timeout`` seconds of a responsive loop; raise TimeoutError after.

    redis-py's own asyncio timeouts count wall time: on a loop busy with other requests
    past the deadline, they fire although Redis answered long before (the answer sits
    unread), and a healthy ledger answers 503. Here a deadline seen late only means the
    loop was busy: look again shortly, until a punctual look finds no answer or
    ``_STALL_LIMIT`` times the timeout has passed.
    """
    if timeout is None:
        return await call
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(call)
    try:
        deadline = loop.time() + timeout
        give_up = deadline + timeout * (_STALL_LIMIT - 1)
        while True:
            await asyncio.wait((task,), timeout=max(0.0, deadline - loop.time()))
            if task.done():
                return task.result()
            now = loop.time()
            if now - deadline < _LATE or now >= give_up:
                raise asyncio.TimeoutError(f"no answer from Redis within {timeout} s")
            deadline = now + _LATE  # the loop was busy: let it read what has arrived
    finally:
        # Cancelled mid-command, redis-py drops that connection: no answer is misread later.
        task.cancel()


_DB_PATH = re.compile(r"/?(\d+)?/?")


def _check_url(url: str, options: dict[str, Any]) -> str:
    """Validate a Redis URL and its options now; return ``host:port`` for messages."""
    try:
        parts = urlsplit(url)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        if not _DB_PATH.fullmatch(parts.path):
            raise ValueError(f"the path must be a database number, not {parts.path!r}")
        pool = redis.ConnectionPool.from_url(url, **options)
        # Building a connection object opens no socket, but rejects unknown options.
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from exc
    return where


class RedisStore(Store):
    """A ledger in Redis; sync and asyncio clients, each with its own connection pool."""

    schemes = ("redis", "rediss")
    native_async = True
    server_time = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = DEFAULT_PREFIX):
        if not prefix:
            raise ConfigurationError("the Redis key prefix must not be empty")
        if urlsplit(url).scheme not in self.schemes:
            raise ConfigurationError(f"not a Redis URL: {url!r}")
        self.prefix = prefix
        self._url = url
        # Defaults only: redis-py lets options in the URL's query override them.
        self._options: dict[str, Any] = {
            "socket_timeout": DEFAULT_TIMEOUT,
            "socket_connect_timeout": DEFAULT_TIMEOUT,
        }
        self._where = _check_url(url, self._options)  # fail at start-up, not on first use
        self._pid = os.getpid()
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._aclients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[redis.asyncio.Redis, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()
        self._atimeout: float | None = DEFAULT_TIMEOUT  # set from the URL by _async
        # Clients of a parent process: never closed here (their sockets are the parent's).
        self._orphans: list[Any] = []

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> RedisStore:
        """Open a store from its URL; ``create`` is accepted, as Redis has nothing to create."""
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
            # The URL may have set the timeouts; _bounded applies them instead of redis-py,
            # whose asyncio timeouts count time the loop spent on other requests.
            kwargs = client.connection_pool.connection_kwargs
            bounds = [kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout")]
            set_bounds = [b for b in bounds if b]
            self._atimeout = max(set_bounds) if set_bounds else None
            kwargs["socket_timeout"] = kwargs["socket_connect_timeout"] = None
            scripts = {n: client.register_script(s) for n, s in _SCRIPTS.items()}
            found = self._aclients[loop] = (client, scripts)
        return found

    async def _acall(self, call: Awaitable[T]) -> T:
        return await _bounded(call, self._atimeout)

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

    def _apply_args(self, change: Change) -> list[Any]:
        transition, key, entry, token, lease, error, delay, counter = change
        args: list[Any] = [self.prefix, key, *_encode(transition)]
        args += [token, _num(lease), _opt(error), _num(delay), counter]
        args.append(new_token() if transition.lease else "")
        if entry is None:
            return [*args, "", "", "", "", "", ""]
        return [
            *args,
            "1",
            entry.delivery_id,
            _opt(entry.event),
            _opt(entry.generation_id),
            entry.body,
            _opt(entry.traceparent),
        ]

    @staticmethod
    def _applied(transition: Transition, key: str, result: Sequence[Any]) -> Applied:
        if not result[0]:
            return Applied(False, State(result[1].decode()) if result[1] else None)
        record = _record(key, _pairs(result[3])) if transition.returns_record else None
        return Applied(True, transition.target, int(result[1]), result[2].decode(), record)

    @staticmethod
    def _due(result: Sequence[Any], limit: int) -> list[str]:
        scored = [
            (float(score), raw.decode())
            for found in result
            for raw, score in zip(found[::2], found[1::2], strict=True)
        ]
        return [key for _, key in sorted(scored)[:limit]]

    def _prune_args(self, older_than: float, cutoff: str, states: Collection[State]) -> list[Any]:
        return [self.prefix, _num(older_than), cutoff, _PRUNE_BATCH, *(s.value for s in states)]

    # Sync ---------------------------------------------------------------------------

    def apply(self, change: Change) -> Applied:
        transition, key = change.transition, change.key
        args = self._apply_args(change)
        with self._errors(transition.name):
            _, scripts = self._sync()
            result = scripts["apply"](keys=[self._rec(key)], args=args)
        return self._applied(transition, key, result)

    def due(self, limit: int) -> Sequence[str]:
        if limit < 1:
            return []
        with self._errors("due"):
            _, scripts = self._sync()
            result = scripts["due"](args=[self.prefix, limit])
        return self._due(result, limit)

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

    def prune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        total, cutoff = 0, ""
        with self._errors("prune"):
            _, scripts = self._sync()
            for _ in range(_PRUNE_ROUNDS):  # batches: no one script holds the server long
                n, raw = scripts["prune"](args=self._prune_args(older_than, cutoff, states))
                total, cutoff = total + int(n), raw.decode()
                if int(n) < _PRUNE_BATCH:
                    break
        return total

    _COUNTED = (State.PENDING, State.DEAD, State.FAILED, State.PROCESSING)

    def _stats_calls(self, pipe: Any, counters: Sequence[str]) -> None:
        for state in self._COUNTED:
            pipe.zcard(f"{self.prefix}s:{state.value}")
        pipe.zrange(f"{self.prefix}s:{State.PENDING.value}", 0, 0, withscores=True)
        pipe.time()
        for counter in counters:
            pipe.get(f"{self.prefix}c:{counter}")

    @staticmethod
    def _stats(found: Sequence[Any], counters: Sequence[str]) -> Stats:
        pending, dead, failed, processing, oldest, (secs, micros), *values = found
        now = int(secs) + int(micros) / 1_000_000
        age = max(0.0, now - float(oldest[0][1])) if oldest else None
        streaks = {c: int(v or 0) for c, v in zip(counters, values, strict=True)}
        return Stats(int(pending), age, int(dead), int(failed), int(processing), streaks)

    def stats(self, counters: Collection[str] = ()) -> Stats:
        names = list(counters)
        with self._errors("stats"):
            client, _ = self._sync()
            pipe = client.pipeline(transaction=False)
            self._stats_calls(pipe, names)
            found = pipe.execute()
        return self._stats(found, names)

    async def astats(self, counters: Collection[str] = ()) -> Stats:
        names = list(counters)
        with self._errors("stats"):
            client, _ = self._async()
            pipe = client.pipeline(transaction=False)
            self._stats_calls(pipe, names)
            found = await self._acall(pipe.execute())
        return self._stats(found, names)

    def bump(self, counter: str, limit: int, by: int = 1) -> bool:
        with self._errors("bump"):
            _, scripts = self._sync()
            return bool(scripts["bump"](keys=[f"{self.prefix}c:{counter}"], args=[limit, by]))

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client, self._scripts = None, {}

    # Async: native asyncio calls, same scripts --------------------------------------

    async def aapply(self, change: Change) -> Applied:
        transition, key = change.transition, change.key
        args = self._apply_args(change)
        with self._errors(transition.name):
            _, scripts = self._async()
            result = await self._acall(scripts["apply"](keys=[self._rec(key)], args=args))
        return self._applied(transition, key, result)

    async def adue(self, limit: int) -> Sequence[str]:
        if limit < 1:
            return []
        with self._errors("due"):
            _, scripts = self._async()
            result = await self._acall(scripts["due"](args=[self.prefix, limit]))
        return self._due(result, limit)

    async def aprune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        total, cutoff = 0, ""
        with self._errors("prune"):
            _, scripts = self._async()
            for _ in range(_PRUNE_ROUNDS):
                args = self._prune_args(older_than, cutoff, states)
                n, raw = await self._acall(scripts["prune"](args=args))
                total, cutoff = total + int(n), raw.decode()
                if int(n) < _PRUNE_BATCH:
                    break
        return total

    async def abump(self, counter: str, limit: int, by: int = 1) -> bool:
        with self._errors("bump"):
            _, scripts = self._async()
            key = f"{self.prefix}c:{counter}"
            return bool(await self._acall(scripts["bump"](keys=[key], args=[limit, by])))

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
