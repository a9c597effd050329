"""Where the tenant limits count: Redis, shared by every gateway process and replica, or
this process alone (one machine, one worker).

Both count the same way. rpm and tpm are sliding windows of 60 s: a request is let through
if the requests (or tokens) of the last 60 s, with its own, stay within the limit, so a
burst never gets more than the limit in any minute. max_inflight counts requests that
have not ended; a request that outlives `hold_s` (a gateway that died with it in flight)
stops counting then. Tokens are reserved on arrival (the prompt's estimate plus what the
request may generate) and settled with the real usage when it ends.
"""

import math
import time
from collections import deque
from dataclasses import dataclass

WINDOW_S = 60


@dataclass(frozen=True)
class Ask:
    name: str  # the key's name
    request_id: str
    rpm: int | None
    tpm: int | None
    tokens: int  # reserved against tpm
    max_inflight: int | None
    hold_s: float


@dataclass(frozen=True)
class Refused:
    limit: str  # rpm, tpm or max_inflight
    retry_after_s: int


class StoreUnreachable(Exception):
    """The shared store did not answer: the caller fails open or closed, as configured."""


# KEYS: rpm zset, tpm zset, tpm amounts hash, tpm total, inflight zset.
# ARGV: id, rpm, tpm, tokens, max_inflight, hold_s (0: no such limit).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local id, rpm, tpm = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, cap, hold = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if rpm > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60) end
if tpm > 0 then
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - 60)
  for i = 1, #old do
    local a = redis.call('HGET', KEYS[3], old[i])
    if a then
      redis.call('DECRBY', KEYS[4], a)
      redis.call('HDEL', KEYS[3], old[i])
    end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
end
if cap > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - hold) end
if rpm > 0 and redis.call('ZCARD', KEYS[1]) >= rpm then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {'rpm', math.max(1, math.ceil(tonumber(first[2]) + 60 - now))}
end
if tpm > 0 then
  local total = tonumber(redis.call('GET', KEYS[4]) or '0')
  local over = total + tokens - tpm
  if over > 0 then
    local wait, freed = 60, 0
    local held = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #held, 2 do
      freed = freed + tonumber(redis.call('HGET', KEYS[3], held[i]) or '0')
      if freed >= over then
        wait = tonumber(held[i + 1]) + 60 - now
        break
      end
    end
    return {'tpm', math.max(1, math.ceil(wait))}
  end
end
if cap > 0 and redis.call('ZCARD', KEYS[5]) >= cap then return {'max_inflight', 1} end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('EXPIRE', KEYS[1], 61)
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('HSET', KEYS[3], id, tokens)
  redis.call('INCRBY', KEYS[4], tokens)
  for i = 2, 4 do redis.call('EXPIRE', KEYS[i], 61) end
end
if cap > 0 then
  redis.call('ZADD', KEYS[5], now, id)
  redis.call('EXPIRE', KEYS[5], math.ceil(hold) + 1)
end
return {'', 0}
"""
# KEYS: tpm amounts hash, tpm total, inflight zset. ARGV: id, tokens used (-1: not counted).
_SETTLE = """
local used = tonumber(ARGV[2])
if used >= 0 then
  local held = redis.call('HGET', KEYS[1], ARGV[1])
  if held then
    redis.call('INCRBY', KEYS[2], used - tonumber(held))
    redis.call('HSET', KEYS[1], ARGV[1], used)
  end
end
redis.call('ZREM', KEYS[3], ARGV[1])
return 0
"""


def _keys(name: str) -> list[str]:
    # One hash tag per tenant: a Redis Cluster keeps all of a key's counters in one slot.
    base = "sparsegate:{" + name + "}"
    return [f"{base}:rpm", f"{base}:tpm", f"{base}:tpm-amounts", f"{base}:tpm-total",
            f"{base}:inflight"]  # fmt: skip


class RedisStore:
    """Counters in Redis, changed by Lua scripts (each atomic), on Redis's own clock."""

    def __init__(self, url: str, timeout_s: float) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._take = self._client.register_script(_TAKE)
        self._settle = self._client.register_script(_SETTLE)

    async def take(self, ask: Ask) -> Refused | None:
        args = [ask.request_id, ask.rpm or 0, ask.tpm or 0, ask.tokens, ask.max_inflight or 0,
                ask.hold_s]  # fmt: skip
        limit, wait = await self._call(self._take, _keys(ask.name), args)
        return Refused(limit.decode(), int(wait)) if limit else None

    async def settle(self, ask: Ask, used_tokens: int | None) -> None:
        k = _keys(ask.name)
        used = used_tokens if ask.tpm and used_tokens is not None else -1
        await self._call(self._settle, [k[2], k[3], k[4]], [ask.request_id, used])

    async def _call(self, script, keys: list[str], args: list):
        from redis.exceptions import RedisError

        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as e:
            raise StoreUnreachable(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        await self._client.aclose()


class _Window:
    """A sliding window of amounts (1 per request for rpm, tokens for tpm)."""

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str]] = deque()
        self.amounts: dict[str, int] = {}
        self.total = 0

    def expire(self, before: float) -> None:
        while self.entries and self.entries[0][0] <= before:
            _, rid = self.entries.popleft()
            self.total -= self.amounts.pop(rid, 0)

    def wait_for(self, over: int, now: float) -> int:
        freed = 0
        for at, rid in self.entries:
            freed += self.amounts.get(rid, 0)
            if freed >= over:
                return max(1, math.ceil(at + WINDOW_S - now))
        return WINDOW_S

    def add(self, now: float, rid: str, amount: int) -> None:
        self.entries.append((now, rid))
        self.amounts[rid] = amount
        self.total += amount


class LocalStore:
    """The same counts in this process only: limits hold per gateway worker."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._rpm: dict[str, _Window] = {}
        self._tpm: dict[str, _Window] = {}
        self._inflight: dict[str, dict[str, float]] = {}

    async def take(self, ask: Ask) -> Refused | None:
        now = self._clock()
        rpm = self._rpm.setdefault(ask.name, _Window())
        tpm = self._tpm.setdefault(ask.name, _Window())
        inflight = self._inflight.setdefault(ask.name, {})
        rpm.expire(now - WINDOW_S)
        tpm.expire(now - WINDOW_S)
        for rid in [r for r, at in inflight.items() if at <= now - ask.hold_s]:
            del inflight[rid]
        if ask.rpm and rpm.total >= ask.rpm:
            return Refused("rpm", rpm.wait_for(rpm.total - ask.rpm + 1, now))
        if ask.tpm and tpm.total + ask.tokens > ask.tpm:
            return Refused("tpm", tpm.wait_for(tpm.total + ask.tokens - ask.tpm, now))
        if ask.max_inflight and len(inflight) >= ask.max_inflight:
            return Refused("max_inflight", 1)
        if ask.rpm:
            rpm.add(now, ask.request_id, 1)
        if ask.tpm:
            tpm.add(now, ask.request_id, ask.tokens)
        if ask.max_inflight:
            inflight[ask.request_id] = now
        return None

    async def settle(self, ask: Ask, used_tokens: int | None) -> None:
        window = self._tpm.get(ask.name)
        if window and used_tokens is not None and ask.request_id in window.amounts:
            window.total += used_tokens - window.amounts[ask.request_id]
            window.amounts[ask.request_id] = used_tokens
        self._inflight.get(ask.name, {}).pop(ask.request_id, None)

    async def close(self) -> None:
        return None
