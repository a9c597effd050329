"""`sparsegate bench ...`: commands that measure and print figures (never timed tests)."""

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.cli.compress import quality
from app.cli.models import RegistryOpt, _home, console
from app.errors import SparsegateError

bench_app = typer.Typer(help="Benchmarks that print figures: quality, serving, overhead, soak.")
bench_app.command()(quality)

ConcurrencyOpt = Annotated[int, typer.Option(min=1, help="Concurrent streams")]
RequestsOpt = Annotated[int, typer.Option(min=1, help="Requests per variant")]
PromptOpt = Annotated[int, typer.Option(min=1, help="Prompt length in words")]
OutputOpt = Annotated[int, typer.Option(min=1, help="Output tokens per request")]


@bench_app.command("serve")
def bench_serve(
    variants: Annotated[str, typer.Option(help="Comma-separated; the first is the baseline")],
    url: Annotated[str, typer.Option(help="Gateway address")] = "http://127.0.0.1:8080",
    concurrency: ConcurrencyOpt = 4,
    requests: RequestsOpt = 32,
    duration: Annotated[float | None, typer.Option(help="Seconds per variant, at most")] = None,
    prompt_words: PromptOpt = 128,
    output_tokens: OutputOpt = 64,
    interleave: Annotated[int, typer.Option(min=1, help="Rounds alternating variants")] = 1,
    slo_ttft_ms: Annotated[float, typer.Option(help="Goodput SLO on TTFT")] = 2000,
    slo_tpot_ms: Annotated[float, typer.Option(help="Goodput SLO on TPOT")] = 200,
    price: Annotated[list[str] | None, typer.Option(help="variant=dollars/hour")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SPARSEGATE_API_KEY")] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="A file holding the key (a container's mounted secret)")
    ] = None,
    wait_ready: Annotated[float, typer.Option(help="Seconds to wait for the engines")] = 0.0,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("bench.json"),
    chart: Annotated[Path, typer.Option(help="PNG chart")] = Path("bench.png"),
    seed: Annotated[
        int | None, typer.Option(help="Prompt seed (a rerun then meets a warm prefix cache)")
    ] = None,
    shared_prefix_words: Annotated[
        int, typer.Option(min=0, help="Words every prompt starts with (prefix-cache workload)")
    ] = 0,
) -> None:
    """Drive the gateway with the same load per variant and compare them to the first.

    Prompts are random words, new for every run and round (the same for every variant
    within a round), so no figure comes from a prefix cache an earlier run filled."""
    from app.bench.load import Load
    from app.bench.serve_bench import run_serve_bench
    from app.bench.summary import Slo

    names = [v.strip() for v in variants.split(",") if v.strip()]
    run_serve_bench(
        url,
        names,
        Load(concurrency, requests, duration, prompt_words, output_tokens, shared_prefix_words),
        interleave=interleave,
        seed=seed,
        slo=Slo(slo_ttft_ms / 1000, slo_tpot_ms / 1000),
        prices=_prices(price or []),
        headers=_auth(api_key, api_key_file),
        out=out,
        chart_path=chart,
        wait_ready_s=wait_ready,
        console=console,
    )
    console.print(f"results: {out}, chart: {chart}")


@bench_app.command("overhead")
def bench_overhead(
    variant: Annotated[str, typer.Option(help="Variant to address through the gateway")],
    engine_url: Annotated[str, typer.Option(help="The same variant's engine, directly")],
    url: Annotated[str, typer.Option(help="Gateway address")] = "http://127.0.0.1:8080",
    served_name: Annotated[str | None, typer.Option(help="Engine's model id")] = None,
    concurrency: ConcurrencyOpt = 16,
    requests: RequestsOpt = 128,
    prompt_words: PromptOpt = 32,
    output_tokens: OutputOpt = 32,
    rounds: Annotated[int, typer.Option(min=1, help="Alternations direct/gateway")] = 4,
    api_key: Annotated[str | None, typer.Option(envvar="SPARSEGATE_API_KEY")] = None,
    limited_key: Annotated[
        str | None,
        typer.Option(
            envvar="SPARSEGATE_LIMITED_KEY",
            help="A tenant key with limits: also run its rounds, limits on vs off",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="JSON results")] = None,
) -> None:
    """Latency the gateway adds and throughput it loses, against the engine itself (and
    what a tenant key's limits cost, with --limited-key)."""
    from app.bench.load import Load
    from app.bench.overhead import measure_overhead

    load = Load(concurrency, requests, None, prompt_words, output_tokens)
    with console.status("measuring (direct and through the gateway, alternating)"):
        auth = _auth(api_key, None)
        result = asyncio.run(
            measure_overhead(
                url,
                engine_url,
                variant,
                served_name or variant,
                load,
                rounds,
                auth,
                _auth(limited_key, None) or None,
            )
        )
    for side in ("direct", "gateway", "limits")[: 3 if limited_key else 2]:
        r = result[side]
        console.print(
            f"{side:8s} TTFT p50 {r['ttft_ms']['p50']:.2f} ms p99 {r['ttft_ms']['p99']:.2f} ms  "
            f"E2E p50 {r['e2e_ms']['p50']:.1f} ms p99 {r['e2e_ms']['p99']:.1f} ms  "
            f"{r['output_tokens_per_s']:.1f} tok/s  errors {r['errors']}"
        )
    added = result["added_ms"]
    console.print(
        f"gateway adds TTFT p50 {added['ttft_ms']['p50']:+.2f} ms, p99 "
        f"{added['ttft_ms']['p99']:+.2f} ms; E2E p50 {added['e2e_ms']['p50']:+.2f} ms, p99 "
        f"{added['e2e_ms']['p99']:+.2f} ms; throughput lost {result['throughput_lost']:.2%} "
        f"at {concurrency} concurrent streams"
    )
    cpu = result["gateway_cpu"]
    if cpu:
        console.print(
            f"gateway CPU {cpu['ms_per_request']:.2f} ms per request, "
            f"{cpu['us_per_token']:.0f} µs per streamed token "
            f"({cpu['share_of_wall']:.1%} of one core during its rounds)"
        )
    limits = result.get("limits_cpu")
    if limited_key:
        console.print(
            f"limits on (tenant key) vs off (static key): throughput lost "
            f"{result['limits_throughput_lost']:.2%}"
            + (f"; gateway CPU {limits['ms_per_request']:.2f} ms per request with limits, "
               f"{cpu['ms_per_request']:.2f} ms without" if limits and cpu else "")
        )  # fmt: skip
    if out:
        out.write_text(json.dumps(result, indent=2))


@bench_app.command("soak")
def bench_soak(
    model: Annotated[str, typer.Option(help="Alias (or variant) to drive")],
    url: Annotated[str, typer.Option(help="Gateway address")] = "http://127.0.0.1:8080",
    concurrency: ConcurrencyOpt = 64,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of sustained load")] = 120,
    prompt_words: PromptOpt = 32,
    output_tokens: OutputOpt = 32,
    api_key: Annotated[str | None, typer.Option(envvar="SPARSEGATE_API_KEY")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON results")] = None,
) -> None:
    """Sustained streams through the gateway: completed, lost, 429s, fallbacks, memory."""
    from app.bench.soak import run_soak

    with console.status(f"{concurrency} streams to {model} for {duration:.0f} s"):
        result = asyncio.run(
            run_soak(
                url, model, concurrency=concurrency, duration_s=duration,
                prompt_words=prompt_words, output_tokens=output_tokens,
                headers=_auth(api_key, None),
            )
        )  # fmt: skip
    r = result.as_dict()
    console.print(
        f"streams: {r['started']} started, {r['completed']} completed, {r['lost']} lost, "
        f"{r['rejected_429']} answered 429, {sum(r['errors'].values())} other errors "
        f"{r['errors'] or ''}; {r['fallbacks']} served by a fallback; by variant {r['variants']}"
    )
    if r["lost"]:
        console.print(f"lost: {r['lost_reasons']}")
    console.print(
        f"{r['completion_tokens']} tokens in {r['wall_s']:.1f} s "
        f"({r['output_tokens_per_s']:.1f} tok/s)"
    )
    if r["gateway_rss_growth_bytes"] is not None:
        console.print(
            f"gateway memory: {r['gateway_rss_bytes_before'] / 2**20:.1f} MiB before, "
            f"{r['gateway_rss_bytes_after'] / 2**20:.1f} MiB after "
            f"({r['gateway_rss_growth_bytes'] / 2**20:+.1f} MiB)"
        )
    else:
        console.print("gateway memory: not exported (multi-worker gateway)")
    if out:
        out.write_text(json.dumps(r, indent=2))


@bench_app.command("crosscheck")
def bench_crosscheck(
    model: Annotated[str, typer.Option(help="Model name the server serves")],
    url: Annotated[str, typer.Option(help="Gateway or engine address")] = "http://127.0.0.1:8080",
    tokenizer: Annotated[
        Path | None, typer.Option(help="Tokenizer folder [default: the model's, from the registry]")
    ] = None,
    concurrency: ConcurrencyOpt = 8,
    requests: RequestsOpt = 48,
    prompt_tokens: Annotated[int, typer.Option(min=2, help="Prompt length in tokens")] = 128,
    output_tokens: OutputOpt = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Alternations vLLM / sparsegate")] = 2,
    out: Annotated[Path | None, typer.Option(help="JSON results")] = None,
    registry: RegistryOpt = None,
) -> None:
    """This bench against `vllm bench serve` under the same load, alternating: output
    tokens/s and mean TPOT of each, and their ratio."""
    from app.bench.crosscheck import crosscheck
    from app.bench.load import Load
    from app.registry import open_registry

    folder = tokenizer or open_registry(_home(registry)).servable_path(model)
    load = Load(concurrency, requests, None, 0, output_tokens, prompt_tokens=prompt_tokens)
    with console.status(f"{rounds} rounds of vllm bench serve and sparsegate bench, alternating"):
        r = crosscheck(url, model, str(folder), load, rounds)
    t = Table(
        title=f"{model}: {requests} requests, concurrency {concurrency}, "
        f"{prompt_tokens} prompt / {output_tokens} output tokens, {rounds} rounds"
    )
    for col in ("figure", "vllm bench serve", "sparsegate bench", "sparsegate / vllm"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    for key, label in (
        ("output_tokens_per_s", "output tokens/s"),
        ("tpot_mean_ms", "mean TPOT ms"),
    ):
        f = r[key]
        t.add_row(label, f"{f['vllm']:.1f}", f"{f['sparsegate']:.1f}", f"{f['ratio']:.3f}")
    console.print(t)
    if out:
        out.write_text(json.dumps(r, indent=2))


@bench_app.command("rollout")
def bench_rollout(
    alias: Annotated[str, typer.Argument(help="The alias whose live rollout to drive")],
    url: Annotated[str, typer.Option(help="Gateway address")] = "http://127.0.0.1:8080",
    concurrency: ConcurrencyOpt = 4,
    prompt_words: PromptOpt = 48,
    output_tokens: OutputOpt = 48,
    timeout_s: Annotated[float, typer.Option(min=1, help="Give up after this long")] = 3600,
    controller: Annotated[
        bool, typer.Option(help="Run a rollout controller here (the lease picks one of several)")
    ] = True,
    api_key: Annotated[str | None, typer.Option(envvar="SPARSEGATE_API_KEY")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON results")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Synthetic users on ALIAS until its rollout (`sparsegate rollout start`) ends or
    pauses; then each step's time, samples per gate and decision, from the rollout's events."""
    import dataclasses

    from app.bench.load import Load
    from app.bench.rollout_bench import drive_rollout
    from app.registry import open_registry

    load = Load(concurrency=concurrency, prompt_words=prompt_words, output_tokens=output_tokens)
    with console.status(f"{concurrency} users on {alias} until its rollout ends"):
        run = drive_rollout(lambda: open_registry(_home(registry)), url, alias, load,
                            _auth(api_key, None), timeout_s, controller)  # fmt: skip
    r = run.rollout
    console.print(f"rollout {r.id}: {r.candidate} against {r.reference} on {alias}: {r.state} "
                  f"after {run.wall_s:.0f} s ({r.reason or 'no reason given'})")  # fmt: skip
    table = Table("step", "users", "decision", "seconds", "samples per gate",
                  "decided after its last evidence")  # fmt: skip
    for f in run.steps:
        samples = ", ".join(f"{gate} {n}" for gate, n in f.samples.items())
        after = "–" if f.decided_after_evidence_s is None else f"{f.decided_after_evidence_s:.1f} s"
        table.add_row(str(f.step + 1), f"{f.weight}%", f.decision, f"{f.seconds:.0f}", samples,
                      after)  # fmt: skip
    console.print(table)
    console.print(f"user requests answered, by variant: {dict(run.served)}; failed: "
                  f"{sum(run.failed.values())} {dict(run.failed) or ''}")  # fmt: skip
    if out:
        record = {"rollout": {"id": r.id, "alias": alias, "candidate": r.candidate,
                              "reference": r.reference, "state": r.state, "reason": r.reason},
                  "wall_s": run.wall_s, "steps": [dataclasses.asdict(f) for f in run.steps],
                  "served": dict(run.served), "failed": dict(run.failed)}  # fmt: skip
        out.write_text(json.dumps(record, indent=2))


def _prices(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise SparsegateError(f"--price takes variant=dollars_per_hour, not {item!r}") from None
    return out


def _auth(key: str | None, key_file: Path | None) -> dict[str, str]:
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as e:
            raise SparsegateError(f"--api-key-file {key_file}: {e.strerror}") from None
    return {"Authorization": f"Bearer {key}"} if key else {}
