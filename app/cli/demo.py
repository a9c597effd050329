"""`sparsegate demo` (the README's main job): import the default model, compress it,
serve dense and variants through the gateway, benchmark them and print the comparison."""

import subprocess
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from app.cli.deploy import build_variants, sparsegate_command
from app.cli.models import RegistryOpt, _home, console
from app.deploy import main_job
from app.errors import SparsegateError


def demo(
    model: Annotated[
        str | None,
        typer.Option(help="Another model's main job: deploy/variants-MODEL.yaml (smollm2-135m)"),
    ] = None,
    variants: Annotated[
        Path | None, typer.Option(help="What to build and compare [default: deploy/variants.yaml]")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Deployment file [default: deploy/sparsegate.yaml's gateway settings "
            "with the variants' engines and aliases]"
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Gateway port")] = 8080,
    requests: Annotated[int, typer.Option(min=1, help="Bench requests per variant")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, help="Bench concurrent streams")] = 8,
    output_tokens: Annotated[int, typer.Option(min=1, help="Bench output tokens")] = 64,
    calibration_samples: Annotated[int, typer.Option(min=1, help="Per compress job")] = 16,
    keep_serving: Annotated[bool, typer.Option(help="Leave the gateway up (Ctrl-C)")] = False,
    registry: RegistryOpt = None,
) -> None:
    """The main job, end to end: build the variants, serve them beside dense, compare."""
    from app.bench.load import Load
    from app.bench.serve_bench import run_serve_bench

    started = time.monotonic()
    definition = _definition(model, variants)
    job = main_job.load(definition)
    home = _home(registry)
    exe = sparsegate_command()
    reg_args = ["--registry", str(home)]
    console.rule(f"1/3 build {len(job.build)} variants of {job.base} ({definition})")
    build_variants(job, home, calibration_samples)
    log = home / ".logs" / "demo-serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    config = config or _deployment_file(job, log.parent / "demo-deployment.yaml")
    console.rule("2/3 serve dense and variants behind the gateway")
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        server = subprocess.Popen(
            [*exe, "serve", "--config", str(config), "--port", str(port), *reg_args],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_ready(url, server, log)
        console.rule("3/3 benchmark through the gateway")
        load = Load(concurrency=concurrency, requests=requests, output_tokens=output_tokens)
        rows = run_serve_bench(
            url, job.serve, load, interleave=2, out=home / "demo-bench.json",
            chart_path=home / "demo-bench.png", wait_ready_s=1200, console=console,
        )  # fmt: skip
        _no_variant_failed_outright(rows, log)
        if alias := _scored_alias(job):
            _shadow_sample(url, alias)
        _summary(url, home, started)
        if keep_serving:
            console.print("serving until Ctrl-C")
            server.wait()
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def _no_variant_failed_outright(rows: list[dict], log: Path) -> None:
    """A comparison in which a variant answered nothing compares nothing: stop there."""
    for r in rows:
        if r["requests"] and r["errors"] == r["requests"]:
            raise SparsegateError(
                f"every benchmark request to {r['variant']} failed, the first with "
                f"{(r.get('first_error') or 'no answer')[:300]}; see {log}"
            )


def _definition(model: str | None, variants: Path | None) -> Path:
    if model is None:
        return variants or main_job.DEFINITION
    if variants is not None:
        raise SparsegateError("give --model or --variants, not both")
    path = main_job.DEFINITION.with_name(f"variants-{model}.yaml")
    if not path.is_file():
        known = sorted(p.stem.removeprefix("variants-") for p in path.parent.glob("variants-*"))
        raise SparsegateError(
            f"no main job is defined for {model!r} ({path} is missing); defined: "
            + ", ".join(known)
        )
    return path


def _deployment_file(job: main_job.MainJob, out: Path) -> Path:
    """deploy/sparsegate.yaml's gateway settings, serving `job`'s variants (for the default
    definition this is the committed file itself: a test checks it is rendered)."""
    from app.deploy.render import DEMO_DEPLOYMENT, VARIANTS_PART, gateway_part, replace_part

    text = replace_part(DEMO_DEPLOYMENT.read_text(), VARIANTS_PART,
                        gateway_part(job, spawned=True), str(DEMO_DEPLOYMENT))  # fmt: skip
    out.write_text(text)
    return out


def _scored_alias(job: main_job.MainJob) -> str | None:
    """The first alias that shadows or scores its traffic, if any."""
    for name, spec in job.aliases.items():
        if spec.get("shadow") or spec.get("quality_sample"):
            return name
    return None


def _wait_ready(url: str, server: subprocess.Popen, log: Path, timeout: float = 1200) -> None:
    deadline = time.monotonic() + timeout
    with console.status("starting the vLLM engines and the gateway (log: " + str(log) + ")"):
        while time.monotonic() < deadline:
            if server.poll() is not None:
                tail = log.read_text()[-3000:]
                raise SparsegateError(
                    f"the gateway exited ({server.returncode}); log {log}:\n{tail}"
                )
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
    raise SparsegateError(f"engines not ready after {timeout:.0f} s; see {log}")


def _shadow_sample(url: str, alias: str, n: int = 24, concurrency: int = 4) -> None:
    """Greedy requests to `alias`, a few at a time: some are shadowed to the candidate, some
    scored under it (live quality); waits until the background work is done."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from app.bench.load import Load, prompts

    status = console.status(f"{n} greedy requests to the alias `{alias}` (shadowed, scored)")
    with status, httpx.Client(base_url=url, timeout=120) as http:

        def send(prompt: str) -> None:
            body = {"model": alias, "prompt": prompt, "max_tokens": 32, "temperature": 0}
            http.post("/v1/completions", json=body).raise_for_status()

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, prompts(Load(prompt_words=32), n, random.randrange(1 << 30))))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and _background_pending(http):
            time.sleep(1)


def _background_pending(http: httpx.Client) -> bool:
    """Whether shadow copies or quality scoring are still in flight or waiting."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http.get("/metrics").text
    busy = ("sparsegate_inflight_requests", "sparsegate_quality_pending")
    return any(
        s.value > 0 for f in text_string_to_metric_families(text) if f.name in busy
        for s in f.samples
    )  # fmt: skip


def _live(row: dict) -> str:
    if row["live_bpb_ratio"] is None:
        return "–"
    ci = row["live_bpb_ratio_ci95"]
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{row['live_bpb_ratio']:.3f}{interval}, {row['live_bpb_samples']:.0f}"


def _summary(url: str, home: Path, started: float) -> None:
    from rich.table import Table

    rows = httpx.get(f"{url}/v1/variants/compare", timeout=10).json()["data"]
    table = Table(title="quality: registry, live traffic (bits per byte), shadow agreement")
    for col in ("variant", "bits/byte ×dense pydoc", "news (out of domain)",
                "live bits/byte ×dense (95%, texts)", "params", "MB at rest",
                "shadow agreement (secondary)"):  # fmt: skip
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        agree = r["shadow_prefix_agreement"]
        table.add_row(
            r["variant"] + (" (dense)" if r["is_base"] else ""),
            "–" if r["bpb_ratio_pydoc"] is None else f"{r['bpb_ratio_pydoc']:.3f}",
            "–" if r["bpb_ratio_news"] is None else f"{r['bpb_ratio_news']:.3f}",
            _live(r),
            "–" if r["parameters"] is None else f"{r['parameters'] / 1e6:.1f} M",
            "–" if r["bytes"] is None else f"{r['bytes'] / 1e6:.0f}",
            "–" if agree is None else f"{agree:.1%} of tokens ({r['shadow_compared']:.0f} req)",
        )
    console.print(table)
    minutes = (time.monotonic() - started) / 60
    console.print(
        f"main job done in {minutes:.1f} min. Next: results {home / 'demo-bench.json'}, chart "
        f"{home / 'demo-bench.png'}; serve again with `sparsegate serve` and open "
        f"{url}/dashboard (charts), {url}/metrics (Prometheus), or `docker compose --profile "
        "cpu up` for Prometheus and Grafana."
    )
