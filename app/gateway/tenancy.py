"""A tenant request's way through the gateway: admitted against its key's limits and
budget on arrival (429 otherwise), then settled when it ends: the real tokens against the
tpm window, its slot freed, and its usage and dollars booked to the key."""

import asyncio
import logging
import math
import uuid

from app.gateway import accounting as acc
from app.gateway.config import Deployment, redis_url
from app.gateway.errors import GatewayError
from app.gateway.limit_store import Ask, LocalStore, RedisStore, StoreUnreachable
from app.gateway.pricing import Pricer
from app.gateway.protocol import CompletionLike
from app.gateway.tenant_keys import TenantKeys
from app.metrics import definitions as m
from app.tenants.records import TenantKey
from app.tenants.usage import Usage

log = logging.getLogger("sparsegate.gateway")
BYTES_PER_TOKEN = 4  # the prompt's estimate on arrival (OpenAI's rule of thumb)
CHAT_TOKENS_PER_MESSAGE = 8  # the chat template's own tokens, about


def estimate_tokens(request: CompletionLike, default_max_tokens: int) -> int:
    """Tokens a request may use, counted before it runs: its prompt (from its bytes, or
    its token ids) plus all it may generate."""
    out = request.max_tokens or request.max_completion_tokens or default_max_tokens
    choices = max(request.n or 1, request.best_of or 1) * request.prompt_count()
    return _prompt_tokens(request) + out * choices


def _prompt_tokens(request: CompletionLike) -> int:
    prompt = getattr(request, "prompt", None)
    if prompt is None:  # chat
        text = request.prompt_text() or ""
        extra = CHAT_TOKENS_PER_MESSAGE * len(request.messages)
        return math.ceil(len(text.encode()) / BYTES_PER_TOKEN) + extra
    items = prompt if isinstance(prompt, list) else [prompt]
    if items and isinstance(items[0], int):
        return len(items)
    return sum(
        len(p) if isinstance(p, list) else math.ceil(len(p.encode()) / BYTES_PER_TOKEN)
        for p in items
    )


class Tenancy:
    def __init__(self, deployment: Deployment, keys: TenantKeys, pricer: Pricer) -> None:
        cfg, url = deployment.gateway.limits, redis_url(deployment)
        self.store = RedisStore(url, cfg.store_timeout_s) if url else LocalStore()
        self.fail_open = cfg.on_store_error == "open"
        self.keys, self.pricer, self.book = keys, pricer, keys.book
        self.default_max_tokens = deployment.gateway.default_max_tokens
        timeouts = [v.request_timeout_s or deployment.gateway.request_timeout_s
                    for v in deployment.variants.values()]  # fmt: skip
        # A slot of max_inflight outlives no request (each candidate may take its timeout),
        # but does not outlive a gateway that died with it either.
        self.hold_s = max(timeouts) * (len(timeouts) + 1)
        self._settling: set[asyncio.Task] = set()
        self._store_failing = False

    async def admit(self, tenant: TenantKey, request: CompletionLike) -> "Ticket":
        self._check_budget(tenant)
        limits = tenant.limits
        ask = Ask(tenant.name, uuid.uuid4().hex, limits.rpm, limits.tpm,
                  estimate_tokens(request, self.default_max_tokens), limits.max_inflight,
                  self.hold_s)  # fmt: skip
        if limits.tpm and ask.tokens > limits.tpm:
            self.book.refused(tenant.name, "limited")
            raise GatewayError(
                429, f"API key {tenant.name!r}: this request may use {ask.tokens} tokens "
                f"(prompt and max_tokens), over its limit of {limits.tpm} tokens a minute "
                "(tpm)", headers={"x-should-retry": "false"},
            )  # fmt: skip
        counted = limits.counted and await self._take(tenant, ask)
        return Ticket(self, tenant.name, ask if counted else None)

    def _check_budget(self, tenant: TenantKey) -> None:
        budget = tenant.limits.budget_dollars
        if budget is None:
            return
        spent = self.keys.spent.get(tenant.name, 0.0) + self.book.unsaved_dollars(tenant.name)
        if spent >= budget:
            self.book.refused(tenant.name, "over_budget")
            since = tenant.budget_since().isoformat(timespec="seconds")
            raise GatewayError(
                429, f"API key {tenant.name!r} has spent its budget of ${budget:g} "
                f"(since {since}): ${spent:.6f}", kind="insufficient_quota",
                headers={"x-should-retry": "false"},
            )  # fmt: skip

    async def _take(self, tenant: TenantKey, ask: Ask) -> bool:
        """Whether the request counts (and must be settled); 429 or 503 if refused."""
        try:
            refused = await self.store.take(ask)
        except StoreUnreachable as e:
            return self._store_error(e)
        self._store_back()
        if refused is None:
            return True
        self.book.refused(tenant.name, "limited")
        limit = getattr(tenant.limits, refused.limit)
        raise GatewayError(
            429, f"API key {tenant.name!r} is over its {refused.limit} limit ({limit}); "
            f"retry after {refused.retry_after_s} s",
            headers={"Retry-After": str(refused.retry_after_s)},
        )  # fmt: skip

    def _store_error(self, e: StoreUnreachable) -> bool:
        m.LIMIT_STORE_ERRORS.labels("open" if self.fail_open else "closed").inc()
        if not self._store_failing:
            what = "letting tenant requests through uncounted" if self.fail_open else (
                "refusing tenant requests (503)")  # fmt: skip
            log.warning("the limit store does not answer (%s): %s", e, what)
            self._store_failing = True
        if self.fail_open:
            return False
        raise GatewayError(503, "the gateway's limit store cannot be reached; retry shortly",
                           headers={"Retry-After": "1"})  # fmt: skip

    def _store_back(self) -> None:
        if self._store_failing:
            log.info("the limit store answers again")
            self._store_failing = False

    def settle(self, ask: Ask, used_tokens: int | None) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(ask, used_tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, ask: Ask, used_tokens: int | None) -> None:
        try:
            await self.store.settle(ask, used_tokens)
        except StoreUnreachable as e:  # its slot frees after hold_s, its window in 60 s
            m.LIMIT_STORE_ERRORS.labels("open" if self.fail_open else "closed").inc()
            log.warning("could not settle a request with the limit store: %s", e)

    async def close(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.store.close()


class Ticket:
    """One admitted tenant request; `done` books it once, however it ended."""

    def __init__(self, tenancy: Tenancy, name: str, ask: Ask | None) -> None:
        self.tenancy, self.name, self.ask = tenancy, name, ask
        self.closed = False

    def done(self, variant: str, outcome: str, usage: dict | None, output_bytes: int) -> None:
        if self.closed:
            return
        self.closed = True
        usage = usage or {}
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        dollars = (
            self.tenancy.pricer.dollars(variant, prompt, completion) if prompt or completion
            else 0.0
        )  # fmt: skip
        used = Usage(requests=1, errors=int(outcome != acc.OK), prompt_tokens=prompt,
                     completion_tokens=completion, output_bytes=output_bytes,
                     dollars=dollars or 0.0, unpriced=int(dollars is None))  # fmt: skip
        self.tenancy.book.served(self.name, variant, outcome, used)
        if self.ask is not None:
            self.tenancy.settle(self.ask, prompt + completion)
