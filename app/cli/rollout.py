"""`sparsegate rollout`: a candidate variant moved step by step onto an alias's users
(shadow, then a share of users, then production), gated on live quality and errors. The
rollout lives in the registry's database; these commands change it, and every gateway
on that registry reads it."""

import json
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.cli.models import RegistryOpt, _home, _open, console
from app.errors import SparsegateError
from app.gateway.config import Deployment, load_deployment, resolve_production, resolve_reference
from app.registry import Registry
from app.rollouts.spec import DEFAULT_STEPS, Gates, RolloutSpec, parse_steps

rollout_app = typer.Typer(
    help="Progressive rollouts of a candidate on an alias, gated on live quality and errors.",
    no_args_is_help=True,
)
AliasArg = Annotated[str, typer.Argument(help="The alias (as the deployment file names it)")]


@rollout_app.command("start")
def start(
    alias: AliasArg,
    candidate: Annotated[str, typer.Argument(help="The variant to roll out")],
    config: Annotated[Path, typer.Option(help="The gateway's deployment file")],
    steps: Annotated[str, typer.Option(help="Percent of users per step; 0: shadow only")] = (
        ",".join(map(str, DEFAULT_STEPS))
    ),
    max_bpb_ratio: Annotated[
        float, typer.Option(help="Live bits per byte over the reference")
    ] = 1.02,
    max_error_rate_increase: Annotated[float, typer.Option(help="Over the reference's")] = 0.01,
    min_cost_saving: Annotated[float, typer.Option(help="Equal-work, to advance (0.1: 10%)")] = 0.0,
    max_ttft_ratio: Annotated[
        float | None, typer.Option(help="Time to first token quantile over the reference's")
    ] = None,
    max_tpot_ratio: Annotated[
        float | None, typer.Option(help="Time per output token quantile over the reference's")
    ] = None,
    latency_quantile: Annotated[float, typer.Option(help="Of the latency gates")] = 0.95,
    confidence: Annotated[float, typer.Option(help="Of every verdict, over the rollout")] = 0.99,
    min_samples: Annotated[int, typer.Option(help="Quality samples per step, at least")] = 50,
    quality_sample: Annotated[
        float, typer.Option(help="Share of the reference's answers scored under the candidate")
    ] = 0.2,
    shadow_fraction: Annotated[
        float, typer.Option(help="Share of requests copied to it at step 0")
    ] = 1.0,
    pause_at: Annotated[
        str | None, typer.Option(help="Steps to pause at on arrival, until resumed (25,50)")
    ] = None,
    registry: RegistryOpt = None,
) -> None:
    """Start a rollout: checked against the deployment and the registry, then stored."""
    from pydantic import ValidationError

    from app.gateway.config import describe
    from app.registry import open_registry
    from app.rollouts.store import RolloutStore

    try:
        spec = RolloutSpec(
            steps=parse_steps(steps),
            gates=Gates(
                max_bpb_ratio=max_bpb_ratio,
                max_error_rate_increase=max_error_rate_increase,
                min_cost_saving=min_cost_saving,
                max_ttft_ratio=max_ttft_ratio,
                max_tpot_ratio=max_tpot_ratio,
                latency_quantile=latency_quantile,
                confidence=confidence,
                min_samples=min_samples,
            ),
            quality_sample=quality_sample,
            shadow_fraction=shadow_fraction,
            pause_at=parse_steps(pause_at) if pause_at else [],
        )
    except ValidationError as e:
        raise SparsegateError(describe(e)) from None
    except ValueError as e:
        raise SparsegateError(str(e)) from None
    deployment = load_deployment(config)
    with closing(open_registry(_home(registry), create=True)) as reg:
        deployment = resolve_production(deployment, _home(registry))
        entry, reference = reference_for(deployment, reg, alias, candidate)
        rollout = RolloutStore(reg).start(alias, candidate, entry, reference, spec)
    typer.echo(
        f"rollout {rollout.id} of {candidate!r} on {alias!r} (reference {reference!r}) "
        f"started at step 1 of {len(spec.steps)}: {spec.steps[0]}% of users"
    )


@rollout_app.command("status")
def status(
    alias: Annotated[str | None, typer.Argument(help="One alias (default: every rollout)")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="With every event and its evidence")
    ] = False,
    registry: RegistryOpt = None,
) -> None:
    """Rollouts, where each stands, and (with --json) their events and evidence."""
    from app.rollouts.store import RolloutStore

    with closing(_open(registry)) as reg:
        store = RolloutStore(reg)
        rollouts = store.listed(alias)
        events = {r.id: store.events(r.id) for r in rollouts} if as_json else {}
    if as_json:
        typer.echo(json.dumps([_record(r) | {"events": events[r.id]} for r in rollouts],
                              indent=2))  # fmt: skip
        return
    table = Table("id", "alias", "candidate", "reference", "state", "step", "users", "reason")
    for r in rollouts:
        step = f"{r.step + 1}/{len(r.spec.steps)}"
        table.add_row(r.id, r.alias, r.candidate, r.reference, r.state, step, f"{r.weight}%",
                      r.reason or "")  # fmt: skip
    console.print(table)


@rollout_app.command("pause")
def pause(alias: AliasArg, registry: RegistryOpt = None) -> None:
    """Hold the rollout at its step: weights stay, no decision is taken."""
    _move(registry, alias, "paused", "paused", expect="running")


@rollout_app.command("resume")
def resume(alias: AliasArg, registry: RegistryOpt = None) -> None:
    """Let a paused rollout decide again."""
    _move(registry, alias, "running", "resumed", expect="paused")


@rollout_app.command("abort")
def abort(
    alias: AliasArg,
    reason: Annotated[str, typer.Option(help="Why, for the record")] = "aborted by hand",
    registry: RegistryOpt = None,
) -> None:
    """End the rollout: the candidate goes back to 0% and the reference serves everyone."""
    _move(registry, alias, "aborted", "aborted", reason=reason)


@rollout_app.command("promote")
def promote(
    alias: AliasArg,
    force: Annotated[bool, typer.Option(help="Past the registry's quality gate")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Skip the remaining steps: the candidate is promoted in the registry (its quality gate
    applies) and serves every user; the previous production variant stays as the fallback."""
    from app.config import Settings
    from app.registry.records import Stage
    from app.rollouts.store import RolloutStore

    with closing(_open(registry)) as reg:
        store = RolloutStore(reg)
        live = store.live(alias)
        reg.set_stage(live.candidate_entry, Stage.production, force=force,
                      quality_gate=Settings().quality_gate)  # fmt: skip
        store.set_state(alias, "promoted", "promoted", reason="promoted by hand",
                        step=len(live.spec.steps) - 1)  # fmt: skip
    typer.echo(f"{live.candidate!r} promoted on {alias!r}: it serves every user")


def _move(registry, alias: str, state: str, kind: str, *, expect: str | None = None,
          reason: str | None = None) -> None:  # fmt: skip
    from app.rollouts.store import RolloutStore

    with closing(_open(registry)) as reg:
        store = RolloutStore(reg)
        live = store.live(alias)
        if expect and live.state != expect:
            raise SparsegateError(f"the rollout on {alias!r} is {live.state}, not {expect}")
        moved = store.set_state(alias, state, kind, reason=reason)
    typer.echo(f"rollout {moved.id} on {alias!r}: {moved.state}, candidate at {moved.weight}%")


def _record(r) -> dict:
    return {"id": r.id, "alias": r.alias, "candidate": r.candidate, "reference": r.reference,
            "state": r.state, "step": r.step, "weight": r.weight, "reason": r.reason,
            "spec": r.spec.model_dump(), "step_started_at": r.step_started_at,
            "created_at": r.created_at}  # fmt: skip


def reference_for(deployment: Deployment, registry: Registry, alias: str, candidate: str):
    """(the candidate's registry name, the reference variant); one line otherwise."""
    cfg = deployment.aliases.get(alias)
    if cfg is None:
        known = ", ".join(sorted(deployment.aliases)) or "none"
        raise SparsegateError(f"unknown alias {alias!r} (the deployment's aliases: {known})")
    if candidate not in deployment.variants:
        raise SparsegateError(f"unknown candidate {candidate!r}: the deployment does not serve it")
    reference = resolve_reference(_as_routed_now(cfg, registry, alias))
    if candidate == reference:
        raise SparsegateError(f"{candidate!r} is the alias's reference: nothing to roll out")
    entries = {v: deployment.variants[v].registry_name or v for v in (candidate, reference)}
    bases = {}
    for variant, entry in entries.items():
        found = [r for r in registry.variants() if r.name == entry]
        if not found:
            raise SparsegateError(
                f"unknown candidate {variant!r}: {entry!r} is not in the registry"
            )
        bases[variant] = found[0].base
    if bases[candidate] != bases[reference]:
        raise SparsegateError(f"{candidate!r} is a variant of {bases[candidate]!r}, not of the "
                              f"alias's base {bases[reference]!r}")  # fmt: skip
    return entries[candidate], reference


def _as_routed_now(cfg, registry: Registry, alias: str):
    """The alias as its latest rollout routes it: after a promotion, the promoted variant
    is the reference the next rollout is judged against (and serves beside it)."""
    from app.gateway.rollout_sync import routed
    from app.rollouts.store import RolloutStore

    listed = RolloutStore(registry).listed(alias)
    return routed(cfg, listed[-1] if listed else None)


@rollout_app.command("controller")
def controller(
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between decisions")] = 2.0,
    lease_s: Annotated[float, typer.Option(min=1, help="Seconds the lease lasts")] = 10.0,
    gateway_url: Annotated[
        str | None, typer.Option(help="A gateway whose compare view gives the cost saving")
    ] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="Its operator key, in a file")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve the gates' /metrics here")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of that /metrics")] = "127.0.0.1",
    once: Annotated[bool, typer.Option(help="One round, then exit (a CronJob)")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Decide running rollouts on the gateways' evidence, holding a lease in the registry so
    that of several controllers one decides. Stops on SIGTERM or Ctrl-C."""
    import logging
    import time

    from app.config import Settings
    from app.rollouts.controller import Controller

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)
    cost = _compare_cost(gateway_url, api_key_file) if gateway_url else None
    with closing(_open(registry)) as reg:
        ctl = Controller(reg, lease_s, Settings().quality_gate, cost)
        console.print(f"rollout controller {ctl.holder} on {reg.describe()}")
        try:
            while True:
                ctl.tick()
                if once:
                    break
                time.sleep(interval)
        finally:
            ctl.close()


def _compare_cost(url: str, key_file: Path | None):
    """The equal-work cost saving of a rollout's candidate over its reference, from a
    gateway's compare view (None where either figure is missing)."""
    import httpx

    headers = {}
    if key_file is not None:
        headers["Authorization"] = f"Bearer {key_file.read_text().strip()}"

    def saving(rollout) -> float | None:
        try:
            rows = httpx.get(f"{url.rstrip('/')}/v1/variants/compare", headers=headers,
                             timeout=10).raise_for_status().json()  # fmt: skip
        except (httpx.HTTPError, ValueError):
            return None
        key = "equal_work_dollars_per_million_bytes"
        cost = {r["variant"]: r.get(key) for r in rows["data"]}
        cand, ref = cost.get(rollout.candidate), cost.get(rollout.reference)
        return 1 - cand / ref if cand and ref else None

    return saving
