"""`sparsegate bench rollout`: synthetic traffic through the gateway to an alias with a
live rollout, until the rollout ends (promoted, rolled back, aborted) or pauses, with a
controller in this process (of several, the lease picks one). Then what each step needed,
from the rollout's own events: its time, the samples each gate rested on, its decision,
and how long after the last evidence it used reached the database the decision came."""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

from app.bench.load import Load, one_request, prompts
from app.registry import Registry
from app.rollouts.store import LIVE, Rollout, RolloutStore


@dataclass
class StepFigure:
    step: int
    weight: int  # percent of users the candidate served at this step
    decision: str  # the event: advanced, rolled back, promoted, ...
    seconds: float  # from the step's start to its decision
    samples: dict[str, int]  # per gate
    decided_after_evidence_s: float | None  # decision time - the last sample row's time
    reason: str


@dataclass
class RolloutRun:
    rollout: Rollout
    steps: list[StepFigure] = field(default_factory=list)
    served: Counter = field(default_factory=Counter)  # variant -> user requests answered
    failed: Counter = field(default_factory=Counter)  # error -> count
    wall_s: float = 0.0


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


class _Controller(threading.Thread):
    """A controller with its own connection to the registry (SQLite's belong to a thread)."""

    def __init__(self, open_registry: Callable[[], Registry]) -> None:
        super().__init__(name="rollout-controller", daemon=True)
        self.open_registry = open_registry
        self.stop = threading.Event()

    def run(self) -> None:
        from app.rollouts.controller import Controller

        registry = self.open_registry()
        controller = Controller(registry)
        try:
            while not self.stop.wait(0.5):
                controller.tick()
        finally:
            controller.close()
            registry.close()


async def _traffic(
    url: str, alias: str, load: Load, headers: dict, done: Callable[[], bool], run: RolloutRun
) -> None:
    texts = prompts(load, 512, seed=0)
    counter = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0)

    async def user(http: aiohttp.ClientSession) -> None:
        while not done():
            prompt = texts[next(counter) % len(texts)]
            out = await one_request(http, url, alias, prompt, load.output_tokens, headers)
            if out.ok:
                run.served[out.variant] += 1
            else:
                run.failed[out.error[:80]] += 1
                await asyncio.sleep(0.5)  # a gateway that is down is not hammered

    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(user(http) for _ in range(load.concurrency)))


def drive_rollout(
    open_registry: Callable[[], Registry], gateway_url: str, alias: str, load: Load,
    headers: dict, timeout_s: float, controller: bool = True,
) -> RolloutRun:  # fmt: skip
    registry = open_registry()
    try:
        return _drive(registry, open_registry, gateway_url, alias, load, headers, timeout_s,
                      controller)  # fmt: skip
    finally:
        registry.close()


def _drive(
    registry: Registry, open_registry: Callable[[], Registry], gateway_url: str, alias: str,
    load: Load, headers: dict, timeout_s: float, controller: bool,
) -> RolloutRun:  # fmt: skip
    store = RolloutStore(registry)
    run = RolloutRun(store.live(alias))
    deadline = time.monotonic() + timeout_s
    state = {"at": 0.0, "over": False}

    def done() -> bool:
        if time.monotonic() - state["at"] > 1.0:  # the registry read once a second
            state["at"] = time.monotonic()
            now = next(r for r in store.listed(alias) if r.id == run.rollout.id)
            state["over"] = now.state not in LIVE or now.state == "paused"
        return state["over"] or time.monotonic() > deadline

    ctl = _Controller(open_registry) if controller else None
    if ctl:
        ctl.start()
    began = time.monotonic()
    try:
        url = gateway_url.rstrip("/") + "/v1/completions"
        asyncio.run(_traffic(url, alias, load, headers, done, run))
    finally:
        if ctl:
            ctl.stop.set()
            ctl.join()
    run.wall_s = time.monotonic() - began
    run.rollout = next(r for r in store.listed(alias) if r.id == run.rollout.id)
    run.steps = step_figures(registry, run.rollout)
    return run


def step_figures(registry: Registry, rollout: Rollout) -> list[StepFigure]:
    """Each decision of the rollout, with what it rested on."""
    figures, began = [], None
    for event in RolloutStore(registry).events(rollout.id):
        detail, at = event["detail"], _time(event["at"])
        began = at if began is None else began  # a step starts at the decision before it
        if "gates" not in detail:
            continue
        last = registry.query(
            "SELECT MAX(at) AS at FROM rollout_samples WHERE rollout_id = ? AND step = ? "
            "AND at <= ?", (rollout.id, detail["step"], event["at"]),
        )  # fmt: skip
        evidence_at = last[0]["at"] if last and last[0]["at"] else None
        figures.append(StepFigure(
            step=detail["step"], weight=detail["weight"], decision=event["kind"],
            seconds=at - began, samples={g["gate"]: g["samples"] for g in detail["gates"]},
            decided_after_evidence_s=at - _time(evidence_at) if evidence_at else None,
            reason=detail.get("reason") or "",
        ))  # fmt: skip
        began = at
    return figures
