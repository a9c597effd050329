"""This worker's copy of the tenant keys in the registry's database (app/tenants/), read
again every REFRESH_S seconds, so that a revoked, rotated or new key takes effect on every
gateway process within that time, without a restart."""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.gateway.errors import GatewayError
from app.tenants.records import TenantKey

log = logging.getLogger("sparsegate.gateway")
REFRESH_S = 2.0
# Past this long without a successful read, tenant keys are refused (503) rather than
# served from a copy that may still hold a revoked key; static keys keep working.
STALE_AFTER_S = 30.0


class TenantKeys:
    def __init__(self, registry_home: Path | None) -> None:
        self.home = registry_home
        self._by_digest: dict[str, TenantKey] = {}
        self._read_at = float("-inf")
        self._registry = None
        # One thread, always the same: the registry's connection (SQLite's too) stays in it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenant-keys")
        self._failing = False

    def _read(self) -> dict[str, TenantKey]:
        from app.registry import open_registry
        from app.tenants.store import KeyStore

        if self._registry is None:
            self._registry = open_registry(self.home)
        return {k.digest: k for k in KeyStore(self._registry).listed()}

    async def refresh(self) -> None:
        try:
            keys = await asyncio.get_running_loop().run_in_executor(self._thread, self._read)
        except Exception as e:  # the database may come back: keep the last copy meanwhile
            if not self._failing:
                log.warning("cannot read the tenant keys (keeping the last copy): %s", e)
            self._failing = True
            self._drop_connection()
            return
        if self._failing:
            log.info("tenant keys read again")
        self._by_digest, self._read_at, self._failing = keys, time.monotonic(), False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.refresh()

    def find(self, digest: str) -> TenantKey | None:
        if time.monotonic() - self._read_at > STALE_AFTER_S:
            raise GatewayError(503, "the key store cannot be read: tenant keys are refused")
        return self._by_digest.get(digest)

    def _drop_connection(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None:
            self._thread.submit(registry.close)

    def close(self) -> None:
        self._drop_connection()
        self._thread.shutdown(wait=True)
