"""This worker's copy of the tenant keys in the registry's database (app/tenants/), read
again every REFRESH_S seconds, so that a revoked, rotated or new key, or a changed limit,
takes effect on every gateway process within that time, without a restart. Each refresh
first adds this process's usage rows (app/gateway/usage_book.py), then reads what each key
with a budget has spent in its period, those rows included."""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.gateway.errors import GatewayError
from app.gateway.usage_book import UsageBook
from app.tenants.records import TenantKey
from app.tenants.usage import Usage

log = logging.getLogger("sparsegate.gateway")
REFRESH_S = 2.0
# Past this long without a successful read, tenant keys are refused (503) rather than
# served from a copy that may still hold a revoked key; static keys keep working.
STALE_AFTER_S = 30.0


class TenantKeys:
    def __init__(self, registry_home: Path | None) -> None:
        self.home = registry_home
        self.book = UsageBook()
        self.spent: dict[str, float] = {}  # dollars in the budget's period, as saved
        self._by_digest: dict[str, TenantKey] = {}
        self._read_at = float("-inf")
        self._registry = None
        # One thread, always the same: the registry's connection (SQLite's too) stays in it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenant-keys")
        self._failing = False

    def _open(self):
        from app.registry import open_registry

        if self._registry is None:
            self._registry = open_registry(self.home)
        return self._registry

    def _save(self, rows: dict[tuple[str, str], Usage]) -> None:
        from app.tenants.usage import add_rows

        if rows:
            add_rows(self._open(), rows)

    def _read(self) -> tuple[dict[str, TenantKey], dict[str, float]]:
        from app.tenants.store import KeyStore
        from app.tenants.usage import spent

        keys = {k.digest: k for k in KeyStore(self._open()).listed()}
        budgets = {
            k.name: k.budget_since().isoformat(timespec="seconds")
            for k in keys.values() if k.limits.budget_dollars is not None
        }  # fmt: skip
        return keys, spent(self._open(), budgets)

    async def refresh(self) -> None:
        loop = asyncio.get_running_loop()
        rows = self.book.take()
        try:
            await loop.run_in_executor(self._thread, self._save, rows)
        except Exception as e:
            self.book.not_saved()  # added with the next rows, once the database takes them
            return self._failed(e)
        try:
            found = await loop.run_in_executor(self._thread, self._read)
        except Exception as e:
            return self._failed(e)
        finally:
            self.book.saved()  # (counted by the budgets from now on as rows read back)
        if self._failing:
            log.info("tenant keys read again")
        (self._by_digest, self.spent), self._read_at = found, time.monotonic()
        self._failing = False

    def _failed(self, e: Exception) -> None:
        """The database may come back: the last copy of the keys holds meanwhile."""
        if not self._failing:
            log.warning("cannot read the tenant keys or save usage (keeping the last copy): "
                        "%s", e)  # fmt: skip
        self._failing = True
        self._drop_connection()

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

    async def close(self) -> None:
        """The last usage rows saved, then the connection closed."""
        await self.refresh()
        self._drop_connection()
        self._thread.shutdown(wait=True)
