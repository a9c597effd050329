"""Metrics as users see them: the compare view, the dashboard page in a real browser, every
Grafana panel's query through a real Prometheus, and the bench commands."""

import json
import math
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from app.registry.embedded import EmbeddedRegistry
from tests.conftest import free_port, run_cli

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sparsegate.json"
PRICES = {"tiny-a": 2.0, "tiny-p": 1.0}


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/system-deps.sh installs it (Debian package)"
    return path


@pytest.fixture(scope="module")
def gateway(tiny_engines, tiny_registry, start_gateway):
    variants = {
        "tiny-a": {"url": tiny_engines["tiny-a"], "registry_name": "tiny",
                   "price_per_hour": PRICES["tiny-a"]},
        "tiny-p": {"url": tiny_engines["tiny-p"], "price_per_hour": PRICES["tiny-p"]},
        "dead": {"url": f"http://127.0.0.1:{free_port()}"},
    }  # fmt: skip
    deployment = {
        "variants": variants,
        "aliases": {
            "tiny": {"split": {"tiny-a": 1.0}, "quality_sample": 1.0,
                     "shadow": {"variant": "tiny-p", "fraction": 1.0}},
            "standby": {"split": {"dead": 1.0, "tiny-a": 0.0}},
        },
    }  # fmt: skip
    return start_gateway(deployment, "--registry", str(tiny_registry))


def _traffic(url: str, rounds: int = 3) -> None:
    """Streams and plain requests to both variants, shadowed greedy requests, a fallback,
    and an error: something for every panel."""
    with httpx.Client(base_url=url, timeout=120) as http:
        for i in range(rounds):
            for model in ("tiny-a", "tiny-p", "tiny"):
                body = {"model": model, "prompt": f"The for statement {i}", "max_tokens": 24,
                        "temperature": 0, "ignore_eos": True, "user": f"u{i}"}  # fmt: skip
                with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                    assert r.status_code == 200
                    for _ in r.iter_lines():
                        pass
                assert http.post("/v1/completions", json=body).status_code == 200
            standby = {"model": "standby", "prompt": "x", "max_tokens": 2}
            assert http.post("/v1/completions", json=standby).status_code == 200
            unknown = {"model": "nope", "prompt": "x"}
            assert http.post("/v1/completions", json=unknown).status_code == 404


def test_compare_puts_each_variant_beside_its_dense_base(gateway, tiny_registry):
    before = _compare(gateway)["tiny-p"]["shadow_compared"]
    _traffic(gateway)
    # Shadow copies finish in the background, after the user's answers: wait for all three.
    deadline = time.monotonic() + 120
    while _compare(gateway)["tiny-p"]["shadow_compared"] < before + 3:
        assert time.monotonic() < deadline, "shadow copies not compared"
        time.sleep(0.2)
    rows = _compare(gateway)
    registry = EmbeddedRegistry(tiny_registry)
    pruned, dense = registry.get("tiny-p"), registry.get("tiny")
    p, a = rows["tiny-p"], rows["tiny-a"]
    assert a["is_base"] and not p["is_base"]
    assert p["base"] == "tiny" and p["base_served_as"] == "tiny-a"
    assert p["ppl_ratio"] == pytest.approx(pruned.quality["ppl_ratio"])
    assert a["ppl_ratio"] == 1.0
    assert (p["parameters"], p["bytes"]) == (pruned.param_count, pruned.bytes_on_disk)
    assert a["bytes"] == dense.bytes_on_disk
    assert p["bytes"] < a["bytes"]  # sparse at rest
    for name, row in (("tiny-a", a), ("tiny-p", p)):
        assert row["requests"] >= 6 and row["errors"] == 0
        assert 0 < row["ttft_p50_s"] <= row["ttft_p95_s"]
        assert 0 < row["itl_p50_s"] <= row["itl_p95_s"]
        assert row["tokens_per_s_per_stream"] > 0
        # Raw cost per unit of text: the engine's charges to user traffic (its own ledger)
        # over the bytes the gateway streamed and returned.
        assert row["engine_read"] and row["completion_bytes"] > 0 and row["charged_s"]["user"] > 0
        assert row["raw_dollars_per_million_bytes"] == pytest.approx(
            PRICES[name] * row["charged_s"]["user"] / 3600 / row["completion_bytes"] * 1e6
        )
        # Equal work: the step fit of each engine prices the same reference request.
        assert row["step_cost_s"]["steps"] >= 20 and row["equal_work_dollars_per_million_bytes"] > 0
    assert p["charged_s"]["shadow"] > 0 and a["charged_s"]["shadow"] == 0  # shadow: its account
    mix = httpx.get(f"{gateway}/v1/variants/compare").json()["reference_mix"]
    assert mix["output_bytes"] > 0 and mix["prompt_bytes"] > 0 and mix["inflight"] >= 1
    for text in ("pydoc", "news"):  # registry facts: bits per byte in and out of domain
        assert p[f"bpb_ratio_{text}"] == pytest.approx(pruned.quality["bpb_ratio"][text])
        assert a[f"bpb_ratio_{text}"] == 1.0
    assert p["shadow_compared"] >= 3 and 0 <= p["shadow_prefix_agreement"] <= 1
    ratios = p["ratio_to_base"]
    assert ratios["ttft_p50_s"] == pytest.approx(p["ttft_p50_s"] / a["ttft_p50_s"])
    assert ratios["bytes"] == pytest.approx(p["bytes"] / a["bytes"])
    assert a["ratio_to_base"]["itl_p50_s"] == pytest.approx(1.0)
    assert rows["dead"]["ppl_ratio"] is None and rows["dead"]["requests"] == 0


def _compare(gateway: str) -> dict[str, dict]:
    return {r["variant"]: r for r in httpx.get(f"{gateway}/v1/variants/compare").json()["data"]}


def test_dashboard_page_renders_in_chromium(gateway, tiny_registry):
    _traffic(gateway, rounds=1)
    dom = subprocess.run(
        [_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
         "--virtual-time-budget=8000", "--dump-dom", f"{gateway}/dashboard"],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert 'data-loaded="true"' in dom, dom[-2000:]
    ratio = EmbeddedRegistry(tiny_registry).get("tiny-p").quality["ppl_ratio"]
    row = dom[dom.index('<tr data-variant="tiny-p">') :].split("</tr>")[0]
    assert f"{ratio:.3f}" in row  # the registry's quality, next to the speed figures
    assert "tiny-a (dense)" in dom
    for variant in ("tiny-a", "tiny-p"):  # a bar per variant in the charts
        assert re.search(rf'<rect [^>]*data-variant="{variant}"', dom)
    assert dom.count("<svg") >= 8  # one chart per figure
    # Quality against cost: a point per variant and text, inside the plot, on real axes.
    pareto = dom[dom.index('id="pareto"') :].split("</svg>")[0]
    left, top, right, bottom = map(float, re.search(r'data-plot="([^"]+)"', pareto)[1].split(","))
    points = re.findall(r'<circle cx="([^"]+)" cy="([^"]+)"[^>]*data-variant="([^"]+)"', pareto)
    for variant in ("tiny-a", "tiny-p"):
        assert sum(v == variant for *_, v in points) >= 2
    for x, y, _ in points:
        assert left <= float(x) <= right and top <= float(y) <= bottom
    # Ticks on both axes, labelled with their values, placed along the plot's sides.
    x_ticks = re.findall(r'<text x="([^"]+)"[^>]*class="tick-x" data-value="([^"]+)">\$', pareto)
    y_ticks = re.findall(
        r'<text x="[^"]+" y="([^"]+)"[^>]*class="tick-y" data-value="([^"]+)">', pareto
    )
    assert len(x_ticks) >= 2 and len(y_ticks) >= 2, pareto[:3000]
    for ticks, lo, hi in ((x_ticks, left, right), (y_ticks, top, bottom)):
        assert all(lo - 1 <= float(pos) <= hi + 1 for pos, _ in ticks)
        values = [float(v) for _, v in ticks]
        assert values == sorted(values) and len(set(values)) == len(values)


def _panel_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def test_every_dashboard_query_returns_data_from_a_real_prometheus(gateway, tiny_engines, tmp_path):
    port = free_port()
    targets = [gateway.removeprefix("http://")]
    engines = [tiny_engines[v].removeprefix("http://") for v in ("tiny-a", "tiny-p")]
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": "sparsegate-gateway", "static_configs": [{"targets": targets}]},
            {"job_name": "vllm", "static_configs": [{"targets": engines}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(
        [_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(api)
        # Load while Prometheus scrapes, so every rate window holds fresh samples.
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                _traffic(gateway, 1)

        loader = threading.Thread(target=load)
        loader.start()
        # Until every panel has data (rate windows need a few scrapes), or the deadline.
        deadline = time.monotonic() + 300
        while True:
            failures = []
            for title, expr in _panel_queries():
                query = expr.replace("$__rate_interval", "30s").replace("$dense", "tiny-a")
                r = httpx.get(f"{api}/api/v1/query", params={"query": query}, timeout=30).json()
                values = [float(s["value"][1]) for s in r.get("data", {}).get("result", [])]
                if r["status"] != "success" or not any(not math.isnan(v) for v in values):
                    failures.append(f"{title}: {query} -> {r.get('error') or values}")
            if not failures or time.monotonic() > deadline:
                break
            time.sleep(1)
        stop.set()
        loader.join(120)
        assert not failures, "\n".join(failures)
    finally:
        prom.terminate()
        prom.wait(30)


def _wait_ready(api: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/-/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("prometheus did not start")


def test_bench_serve_prints_writes_and_draws_the_comparison(gateway, tmp_path, tiny_registry):
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = run_cli(
        "bench", "serve", "--url", gateway, "--variants", "tiny-a,tiny-p", "--requests", "6",
        "--concurrency", "2", "--output-tokens", "16", "--prompt-words", "20",
        "--interleave", "2", "--out", str(out), "--chart", str(chart),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "tiny-p" in proc.stdout and "TTFT" in proc.stdout
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    for name, row in rows.items():
        assert row["requests"] == 6 and row["errors"] == 0
        assert row["output_tokens"] == 6 * 16  # ignore_eos: fixed lengths
        assert row["ttft_p50_s"] > 0 and row["tpot_p50_s"] > 0
        expected = PRICES[name] * row["wall_s"] / 3600 / row["output_tokens"] * 1e6
        assert row["dollars_per_million_tokens"] == pytest.approx(expected)
        # Per unit of text too: the bytes of the text that streamed back.
        assert row["output_bytes"] > 0
        per_byte = PRICES[name] * row["wall_s"] / 3600 / row["output_bytes"] * 1e6
        assert row["dollars_per_million_bytes"] == pytest.approx(per_byte)
    assert rows["tiny-a"]["ratio_to_baseline"]["ttft_p50_s"] == pytest.approx(1.0)
    pruned = EmbeddedRegistry(tiny_registry).get("tiny-p")
    assert rows["tiny-p"]["ppl_ratio"] == pytest.approx(pruned.quality["ppl_ratio"])
    assert rows["tiny-p"]["bpb_ratio_news"] == pytest.approx(pruned.quality["bpb_ratio"]["news"])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_serve_refuses_an_unknown_variant(gateway):
    proc = run_cli("bench", "serve", "--url", gateway, "--variants", "tiny-a,nope")
    assert proc.returncode == 2 and "does not serve nope" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bench_overhead_compares_gateway_and_engine(gateway, tiny_engines, tmp_path):
    out = tmp_path / "overhead.json"
    proc = run_cli(
        "bench", "overhead", "--url", gateway, "--variant", "tiny-a",
        "--engine-url", tiny_engines["tiny-a"], "--requests", "8", "--concurrency", "4",
        "--rounds", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(out.read_text())
    for side in ("direct", "gateway"):
        assert result[side]["requests"] == 8 and result[side]["errors"] == 0
    assert "throughput lost" in proc.stdout
    assert set(result["added_ms"]["e2e_ms"]) == {"p50", "p99"}
    # The gateway's own CPU over its rounds: some, and less than the rounds' wall time.
    cpu = result["gateway_cpu"]
    assert 0 < cpu["share_of_wall"] < 1 and cpu["ms_per_request"] > 0
    assert "gateway CPU" in proc.stdout


def test_models_path_gives_engines_a_folder_they_can_load(tiny_registry):
    """What engine containers get: the variant's folder, or its sparse files expanded."""
    dense = run_cli("models", "path", "tiny", registry=tiny_registry)
    assert dense.returncode == 0 and Path(dense.stdout.strip()) == tiny_registry / "tiny"
    pruned = run_cli("models", "path", "tiny-p", registry=tiny_registry)
    folder = Path(pruned.stdout.strip())
    assert pruned.returncode == 0 and folder.parent.name == ".expanded"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert not list(folder.glob("*.sparse.safetensors"))


def _prefix_cache_hits(engine_url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{engine_url}/metrics", timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "vllm:prefix_cache_hits"
        for s in f.samples
        if s.name.endswith("_total")
    )


def test_bench_prompts_never_meet_a_warm_prefix_cache(gateway, tiny_engines, tmp_path):
    """Two runs, rounds in each: vLLM's prefix cache never hits (prompts of 200 words fill
    whole KV blocks, so a repeated prompt would). The same seed twice does hit: the check
    can fail."""
    args = ["bench", "serve", "--url", gateway, "--variants", "tiny-a", "--requests", "6",
            "--concurrency", "2", "--output-tokens", "4", "--prompt-words", "200",
            "--interleave", "2", "--out", str(tmp_path / "b.json"),
            "--chart", str(tmp_path / "b.png")]  # fmt: skip
    engine = tiny_engines["tiny-a"]
    before = _prefix_cache_hits(engine)
    for _ in range(2):
        assert run_cli(*args).returncode == 0
    assert _prefix_cache_hits(engine) == before
    for _ in range(2):
        assert run_cli(*args, "--seed", "5", "--interleave", "1").returncode == 0
    assert _prefix_cache_hits(engine) > before


def test_bench_prompts_are_distinct_and_can_share_a_prefix():
    from app.bench.load import Load, prompts

    load = Load(prompt_words=30)
    a, b = prompts(load, 50, seed=1), prompts(load, 50, seed=2)
    assert len(set(a)) == 50 and not set(a) & set(b)
    assert prompts(load, 50, seed=1) == a  # a seed reproduces its prompts
    assert all(len(p.split()) == 30 for p in a)
    shared = prompts(Load(prompt_words=30, shared_prefix_words=10), 20, seed=3)
    assert len({" ".join(p.split()[:10]) for p in shared}) == 1 and len(set(shared)) == 20
    ids = prompts(Load(prompt_tokens=16, token_ids=list(range(5, 100))), 20, seed=4)
    assert all(len(p) == 16 and min(p) >= 5 for p in ids) and len({tuple(p) for p in ids}) == 20


def test_bench_crosscheck_runs_vllm_bench_under_the_same_load(
    tiny_engines, tiny_registry, tmp_path
):
    """The command that compares this bench with `vllm bench serve` (its figures are read,
    not asserted: timing). Both sent the same number of requests of the same lengths."""
    out = tmp_path / "crosscheck.json"
    proc = run_cli(
        "bench", "crosscheck", "--url", tiny_engines["tiny-a"], "--model", "tiny-a",
        "--tokenizer", str(tiny_registry / "tiny"), "--requests", "6", "--concurrency", "2",
        "--prompt-tokens", "32", "--output-tokens", "8", "--rounds", "1", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(out.read_text())
    assert result["runs"]["vllm"][0]["completed"] == 6
    ours = result["runs"]["sparsegate"][0]
    assert ours["completed"] == 6 and ours["prompt_tokens_mean"] == 32
    for key in ("output_tokens_per_s", "tpot_mean_ms"):
        figures = result[key]
        assert figures["vllm"] > 0 and figures["sparsegate"] > 0
        assert figures["ratio"] == pytest.approx(figures["sparsegate"] / figures["vllm"])
    assert "sparsegate / vllm" in proc.stdout
