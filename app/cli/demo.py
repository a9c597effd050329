"""`sparsegate demo` (the README's main job): import the default model, compress it,
serve dense and variants through the gateway, benchmark them and print the comparison."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from app.cli.models import RegistryOpt, _home, console
from app.errors import SparsegateError

BASE = "gemma-3-270m"
# name -> (parent, compress arguments); the deployment file serves these names. Pruning and
# INT8 alone leave the 168 M-parameter embedding / LM head as it is (and decode about as fast
# as dense): trimming the vocabulary is what makes a variant cheaper. 96k rows keep both
# evaluation texts within 1.5% of dense; under the trimmed head INT8 starts to pay.
RECIPES = {
    f"{BASE}-trim96k": (BASE, ["--trim-vocab", "98304"]),
    f"{BASE}-trim96k-w8a8": (f"{BASE}-trim96k", ["--quant", "w8a8"]),
}  # fmt: skip


def demo(
    config: Annotated[Path, typer.Option(help="Deployment file")] = Path("deploy/sparsegate.yaml"),
    port: Annotated[int, typer.Option(help="Gateway port")] = 8080,
    requests: Annotated[int, typer.Option(min=1, help="Bench requests per variant")] = 64,
    concurrency: Annotated[int, typer.Option(min=1, help="Bench concurrent streams")] = 8,
    output_tokens: Annotated[int, typer.Option(min=1, help="Bench output tokens")] = 64,
    calibration_samples: Annotated[int, typer.Option(min=1, help="Per compress job")] = 16,
    keep_serving: Annotated[bool, typer.Option(help="Leave the gateway up (Ctrl-C)")] = False,
    registry: RegistryOpt = None,
) -> None:
    """The main job, end to end, on the default model."""
    from app.bench.load import Load
    from app.bench.serve_bench import run_serve_bench

    started = time.monotonic()
    home = _home(registry)
    exe = _sparsegate()
    reg_args = ["--registry", str(home)]
    console.rule("1/4 import the default model")
    _run([*exe, "models", "import", BASE, "--exist-ok", *reg_args])
    console.rule("2/4 compress")
    for name, (parent, args) in RECIPES.items():
        if (home / name).is_dir():
            console.print(f"{name} is registered already")
            continue
        _run([*exe, "compress", parent, *args, "--name", name,
              "--calibration-samples", str(calibration_samples), *reg_args])  # fmt: skip
    console.rule("3/4 serve dense and variants behind the gateway")
    url = f"http://127.0.0.1:{port}"
    log = home / ".logs" / "demo-serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        server = subprocess.Popen(
            [*exe, "serve", "--config", str(config), "--port", str(port), *reg_args],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_ready(url, server, log)
        console.rule("4/4 benchmark through the gateway")
        names = [BASE, *RECIPES]
        load = Load(concurrency=concurrency, requests=requests, output_tokens=output_tokens)
        run_serve_bench(
            url, names, load, interleave=2, out=home / "demo-bench.json",
            chart_path=home / "demo-bench.png", wait_ready_s=1200, console=console,
        )  # fmt: skip
        _shadow_sample(url)
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


def _sparsegate() -> list[str]:
    found = shutil.which("sparsegate", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "app.cli.main"]


def _run(cmd: list[str]) -> None:
    code = subprocess.call(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if code != 0:
        raise SparsegateError(f"`sparsegate {' '.join(cmd[1:4])} ...` failed (exit {code})")


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


def _shadow_sample(url: str, n: int = 24) -> None:
    """Greedy requests to the `gemma` alias: some are shadowed to the candidate, some
    scored under it (live quality); waits until the background work is done."""
    import random

    from app.bench.load import Load, prompts

    status = console.status(f"{n} greedy requests to the alias `gemma` (shadowed, scored)")
    with status, httpx.Client(base_url=url, timeout=120) as http:
        for prompt in prompts(Load(prompt_words=32), n, random.randrange(1 << 30)):
            body = {"model": "gemma", "prompt": prompt, "max_tokens": 32, "temperature": 0}
            http.post("/v1/completions", json=body).raise_for_status()
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
