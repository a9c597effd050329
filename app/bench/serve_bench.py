"""`sparsegate bench serve`: the same load against each variant through the gateway."""

import asyncio
import random
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

from app.bench.load import Load, run_load
from app.bench.report import chart, table, write_json
from app.bench.summary import Slo, add_ratios, summarize
from app.errors import SparsegateError


def run_serve_bench(
    url: str,
    names: list[str],
    load: Load,
    *,
    interleave: int = 1,
    seed: int | None = None,
    slo: Slo | None = None,
    prices: dict[str, float] | None = None,
    headers: dict | None = None,
    out: Path | None = None,
    chart_path: Path | None = None,
    wait_ready_s: float = 0.0,
    console: Console,
) -> list[dict]:
    """Runs the load per variant (in `interleave` alternating rounds), prints the table,
    writes the JSON and the chart; returns the rows (the first variant is the baseline)."""
    headers = headers or {}
    if wait_ready_s:
        wait_for_engines(url, names, wait_ready_s, console)
    served = gateway_facts(url, headers)
    unknown = [n for n in names if n not in served["models"]]
    if unknown:
        raise SparsegateError(f"{url} does not serve {', '.join(unknown)}")
    prices = {**served["prices"], **(prices or {})}
    per_round = Load(**{**load.__dict__, "requests": max(1, load.requests // interleave)})
    results: dict[str, tuple[list, float]] = {n: ([], 0.0) for n in names}
    # Each round draws new prompts (the same for every variant within it): nothing is
    # served from a prefix cache an earlier round or run filled.
    seed = random.randrange(1 << 30) if seed is None else seed
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks = {n: progress.add_task(n, total=per_round.requests * interleave) for n in names}
        for round_ in range(interleave):
            for name in names:
                pinned = {**headers, "x-sparsegate-variant": name}
                advance = lambda _o, n=name: progress.advance(tasks[n])  # noqa: E731
                outcomes, wall = asyncio.run(
                    run_load(url, name, per_round, seed=seed + round_, headers=pinned,
                             on_done=advance)
                )  # fmt: skip
                results[name] = (results[name][0] + outcomes, results[name][1] + wall)
    slo = slo or Slo()
    rows = [
        summarize(n, o, w, slo=slo, price_per_hour=prices.get(n)) for n, (o, w) in results.items()
    ]
    for row in rows:
        row.update(served["quality"].get(row["variant"], {}))
    add_ratios(rows, names[0])
    console.print(table(rows))
    if out:
        meta = {"url": url, "load": load.__dict__, "interleave": interleave, "seed": seed}
        write_json(rows, meta, out)
    if chart_path:
        chart(rows, chart_path)
    return rows


def wait_for_engines(url: str, names: list[str], timeout: float, console: Console) -> None:
    """Wait until the gateway reports every listed variant's engine ready."""
    import time

    deadline = time.monotonic() + timeout
    pending = names
    with console.status(f"waiting for the engines of {', '.join(names)}"):
        while time.monotonic() < deadline:
            try:
                engines = httpx.get(f"{url}/ready", timeout=5).json().get("engines", {})
                pending = [n for n in names if not engines.get(n)]
                if not pending:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
    raise SparsegateError(f"engines not ready after {timeout:.0f} s: {', '.join(pending)}")


def gateway_facts(url: str, headers: dict) -> dict:
    """Served models, configured prices (from /metrics) and registry quality figures."""
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
            models = http.get("/v1/models")
            if models.status_code != 200:
                raise SparsegateError(f"{url}/v1/models answered {models.status_code}")
            metrics = http.get("/metrics").text
            compare = http.get("/v1/variants/compare").json().get("data", [])
    except httpx.HTTPError as e:
        raise SparsegateError(f"cannot reach the gateway at {url}: {e}") from None
    prices = {
        sample.labels["variant"]: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "sparsegate_engine_price_dollars_per_hour"
        for sample in family.samples
    }
    keys = ("ppl_ratio", "bpb_ratio_pydoc", "bpb_ratio_news", "bytes", "parameters")
    quality = {row["variant"]: {k: row.get(k) for k in keys} for row in compare}
    return {"models": {m["id"] for m in models.json()["data"]}, "prices": prices,
            "quality": quality}  # fmt: skip
