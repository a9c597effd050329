"""Rollouts as every gateway process applies them: every REFRESH_S seconds this process adds
what it saw of the live rollouts (app/gateway/rollout_evidence.py) to the registry's
database, reads the rollouts again, and routes each alias as its latest rollout says.
The decisions are the controller's (app/rollouts/controller.py); gateways only follow.

How a rollout routes its alias (the deployment file's split otherwise):
- a share w > 0 of users: the reference gets 100 - w, the candidate w (each the other's
  fallback; the alias's other variants wait until the rollout ends);
- step 0 (shadow): the reference serves every user (the candidate is not even a
  fallback), and a share of the requests is copied to the candidate;
- while live, a share of the reference's answers is scored under the candidate (live
  quality, app/gateway/quality.py);
- promoted: the candidate serves every user, the reference stays as the fallback;
- rolled back or aborted: the reference serves everyone: the deployment file's split
  again, without the candidate, or, where an earlier rollout promoted the reference, that
  reference alone (the file's other variants as fallbacks).
"""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.gateway.config import AliasConfig, ShadowConfig, resolve_reference
from app.gateway.rollout_evidence import EvidenceBook, Live
from app.metrics import definitions as m
from app.rollouts.store import LIVE, Rollout

log = logging.getLogger("sparsegate.gateway")
REFRESH_S = 2.0


def routed(base: AliasConfig, rollout: Rollout | None) -> AliasConfig:
    """The alias's routing under its latest rollout."""
    if rollout is None:
        return base
    cand, ref = rollout.candidate, rollout.reference
    if rollout.state == "promoted":
        others = {v: 0.0 for v in base.split if v not in (cand, ref)}  # standbys, as before
        split = {cand: 1.0, ref: 0.0, **others}
        return base.model_copy(update={"split": split, "reference": cand, "shadow": None,
                                       "quality_sample": 0.0})  # fmt: skip
    if rollout.state not in LIVE:
        shadow = base.shadow if base.shadow and base.shadow.variant != cand else None
        if ref == resolve_reference(base):  # the deployment file's own split, less the candidate
            split = {v: w for v, w in base.split.items() if v != cand} or {ref: 1.0}
            return base.model_copy(update={"split": split, "shadow": shadow})
        # The reference came from an earlier promotion: it keeps serving everyone.
        others = {v: 0.0 for v in base.split if v not in (cand, ref)}
        return base.model_copy(update={"split": {ref: 1.0, **others}, "reference": ref,
                                       "shadow": shadow})  # fmt: skip
    # Live: the reference and the candidate alone, so that only the candidate is scored
    # and the reference is its one fallback.
    weight, spec = rollout.weight, rollout.spec
    update = {"reference": ref, "quality_sample": spec.quality_sample, "shadow": None}
    if weight == 0:
        update |= {
            "split": {ref: 1.0},
            "shadow": ShadowConfig(variant=cand, fraction=spec.shadow_fraction),
        }
    else:
        update["split"] = {ref: float(100 - weight), cand: float(weight)}
    return base.model_copy(update=update)


class RolloutSync:
    def __init__(self, registry_home: Path | None, gateway) -> None:
        self.home, self.gateway = registry_home, gateway
        self.base = dict(gateway.deployment.aliases)  # the deployment file's own routing
        self.book = EvidenceBook()
        gateway.evidence = self.book
        self._registry = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts")
        self._applied: dict[str, tuple] = {}
        self._failing = False

    def _open(self):
        from app.registry import open_registry

        if self._registry is None:
            self._registry = open_registry(self.home)
        return self._registry

    def _sync(self, quality: list[tuple], requests: dict, latency: list[tuple]) -> list[Rollout]:
        from app.rollouts.evidence import add_samples
        from app.rollouts.store import RolloutStore

        add_samples(self._open(), quality, requests, latency)
        return RolloutStore(self._open()).listed()

    async def refresh(self) -> None:
        rows = self.book.take()
        try:
            rollouts = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._sync, *rows
            )
        except Exception as e:  # the database may come back: routing stays as it is
            self.book.not_saved()
            if not self._failing:
                log.warning("cannot read the rollouts or save their evidence: %s", e)
            self._failing, self._registry = True, None
            return
        self._failing = False
        latest = {r.alias: r for r in rollouts if r.alias in self.base}  # by creation time
        self.apply(latest)

    def apply(self, latest: dict[str, Rollout]) -> None:
        aliases = {a: routed(cfg, latest.get(a)) for a, cfg in self.base.items()}
        self.book.live = {
            a: Live(r.id, r.step, r.candidate, r.reference)
            for a, r in latest.items() if r.state in LIVE
        }  # fmt: skip
        for alias, r in latest.items():
            state = (r.id, r.state, r.step)
            if self._applied.get(alias) != state:
                log.info("alias %s: rollout %s of %s is %s, candidate at %d%%", alias, r.id,
                         r.candidate, r.state, r.weight)  # fmt: skip
                self._applied[alias] = state
            m.ROLLOUT_WEIGHT.labels(alias).set(r.weight)
            m.ROLLOUT_STEP.labels(alias).set(r.step)
        self.gateway.retarget(aliases)

    async def view(self) -> list[dict]:
        """Each alias's latest rollout with its gates so far (app/rollouts/view.py)."""
        from app.rollouts.view import rollouts_view

        def read() -> list[dict]:
            return rollouts_view(self._open(), list(self.base))

        return await asyncio.get_running_loop().run_in_executor(self._thread, read)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.refresh()

    async def close(self) -> None:
        await self.refresh()  # the last evidence saved
        registry, self._registry = self._registry, None
        if registry is not None:
            self._thread.submit(registry.close)
        self._thread.shutdown(wait=True)
