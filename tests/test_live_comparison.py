"""The live comparison under real traffic: one ledger per engine whatever the topology (several
gateway workers and gateways, shadow copies, failed and cancelled requests), cost on equal
work between variants that get different traffic, and live quality in bits per byte."""

import asyncio
import os
import signal
import socket
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port, metric, run_cli, wait_for

LONG = " ".join(f"the value of item {i} is returned by the call" for i in range(6))
SHORT = "The for statement"
PROBE_EVERY = 2  # a cost probe round per this many requests on an engine


def ledger(url: str) -> dict[str, float]:
    """An engine's own books: busy seconds and charges by account and outcome."""
    out = {"busy": metric(url, "sparsegate_engine_busy_seconds_total")}
    out["charged"] = metric(url, "sparsegate_engine_charged_seconds_total")
    for account in ("user", "shadow", "quality", "probe", "direct"):
        out[account] = metric(url, "sparsegate_engine_charged_seconds_total", account=account)
    for outcome in ("ok", "invalid", "cancelled", "error"):
        out[outcome] = metric(
            url, "sparsegate_engine_charged_seconds_total", account="user", outcome=outcome
        )
    return out


def quiet(url: str) -> None:
    """Wait until the engine has no request in flight: then its charges equal its busy time."""
    wait_for(
        lambda: metric(url, "sparsegate_engine_ledger_inflight") == 0,
        timeout=120,
        what="engine idle",
    )


async def _requests(url: str, bodies: list[dict], concurrency: int) -> list[int]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:

        async def one(body: dict) -> int:
            async with gate:
                if body.get("stream") == "cancel":  # read the first event, then leave
                    async with http.stream(
                        "POST", "/v1/completions", json={**body, "stream": True}
                    ) as r:
                        async for _ in r.aiter_bytes():
                            break
                    return r.status_code
                return (await http.post("/v1/completions", json=body)).status_code

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def send(url: str, bodies: list[dict], concurrency: int = 4) -> list[int]:
    return asyncio.run(_requests(url, bodies, concurrency))


@pytest.fixture(scope="module")
def slow(engines, tiny_registry) -> str:
    """The tiny model slowed to at least 50 ms a decoding step: a request of 400 tokens is
    still generating long after its client has left."""
    from app.registry.embedded import EmbeddedRegistry

    folder = EmbeddedRegistry(tiny_registry).path_of("tiny")
    return engines(
        {"tiny-slow": folder},
        extra_args=["--logits-processors", "tests.slow_engine:SlowSteps"],
        env={"PYTHONPATH": str(ROOT)},
    )["tiny-slow"]


def test_engine_ledger_adds_up_across_workers_gateways_and_shadow(slow, start_gateway):
    engine = slow
    deployment = {
        "variants": {
            "tiny-slow": {"url": engine, "price_per_hour": 36.0},
            "mirror": {"url": engine, "served_name": "tiny-slow", "price_per_hour": 36.0},
        },
        "aliases": {
            "live": {"split": {"tiny-slow": 1.0}, "shadow": {"variant": "mirror", "fraction": 1.0}}
        },
    }
    two_workers = start_gateway(deployment, "--workers", "2")
    other = start_gateway(deployment)
    quiet(engine)
    before = ledger(engine)
    ok = {"model": "live", "prompt": LONG, "max_tokens": 8, "ignore_eos": True}
    invalid = {**ok, "top_k": -5}  # the engine refuses it: a 400 from vLLM
    cancel = {**ok, "max_tokens": 400, "stream": "cancel"}
    plan = [ok] * 6 + [{**ok, "stream": True}] * 2 + [invalid, cancel]
    results: dict[str, list[int]] = {}
    threads = [
        threading.Thread(target=lambda u=u: results.setdefault(u, send(u, plan)))
        for u in (two_workers, other)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for statuses in results.values():
        assert statuses.count(200) == 9 and statuses.count(400) == 1, statuses

    # Every successful request gets its shadow copy, in the background: wait for all 16.
    def copies() -> float:
        return sum(
            metric(u, "sparsegate_shadow_requests_total", variant="mirror")
            for u in (two_workers, other)
        )

    wait_for(lambda: copies() >= 16, timeout=180, what="shadow copies")
    quiet(engine)
    after = ledger(engine)
    delta = {k: after[k] - before[k] for k in after}
    # One ledger for the engine: whatever process sent a request, the charges of all of them
    # add up to its busy seconds (x price: the dollars), shadow and failures included.
    assert delta["busy"] > 0
    assert delta["charged"] == pytest.approx(delta["busy"], rel=0.02)
    assert delta["user"] + delta["shadow"] + delta["quality"] + delta["direct"] == pytest.approx(
        delta["charged"], rel=1e-9
    )
    assert delta["shadow"] > 0  # shadow copies on their own account
    for outcome in ("ok", "invalid", "cancelled"):  # failures on their own outcome
        assert delta[outcome] > 0, (outcome, delta)


def test_spawned_engines_do_not_see_the_gateways_metrics_folder(spawning_serve):
    proc, url = spawning_serve("--workers", "2")
    try:
        wait_for(lambda: _answers(url), timeout=600, what="serve with a spawned engine")
        children = {pid: _cmdline(pid) for pid in _children(proc.pid)}
        engine = next(pid for pid, cmd in children.items() if "vllm" in cmd)
        worker = next(pid for pid, cmd in children.items() if "spawn_main" in cmd)
        # The gateway's workers share a metrics folder; the engine it spawned does not.
        assert "PROMETHEUS_MULTIPROC_DIR" in _environ(worker)
        assert "PROMETHEUS_MULTIPROC_DIR" not in _environ(engine)
        assert _environ(engine)["SPARSEGATE_VARIANT"] == "tiny"
        # vLLM's AOT compile cache does not load on the CPU: its older cache does (restarts)
        assert _environ(engine)["VLLM_USE_AOT_COMPILE"] == "0"
        # W4A16 served with 16-bit activations, as evaluated (tests/test_smollm2.py)
        assert _environ(engine)["VLLM_CPU_INT4_W4A8"] == "0"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def _read(path: str) -> str:
    return Path(path).read_bytes().decode(errors="replace")


def _cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace("\0", " ")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_read(f"/proc/{entry.name}/stat").rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _environ(pid: int) -> dict[str, str]:
    return dict(item.split("=", 1) for item in _read(f"/proc/{pid}/environ").split("\0") if item)


def _answers(url: str) -> bool:
    try:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        return httpx.post(f"{url}/v1/completions", json=body, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _compare(url: str) -> dict[str, dict]:
    return {r["variant"]: r for r in httpx.get(f"{url}/v1/variants/compare").json()["data"]}


async def _both(*loads) -> list:
    return list(await asyncio.gather(*loads))


async def _completions(url: str, bodies: list[dict], concurrency: int) -> list[dict]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:

        async def one(body: dict) -> dict:
            async with gate:
                r = await http.post("/v1/completions", json=body)
                r.raise_for_status()
                return r.json()

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_equal_work_prices_the_gateways_mean_request_on_every_variant(
    tiny_engines, start_gateway, capsys
):
    """Identical engines given unequal traffic. Asserted: what equal work is made of (the
    reference request is this traffic's mean in bytes, each variant's tokens per byte is its
    own, each price comes from its engine's fit). Printed, not asserted (a figure that
    timing decides): the equal-work and raw ratios, which the README reports."""
    twins = {"twin-a": tiny_engines["tiny-a"], "twin-b": tiny_engines["tiny-b"]}
    served = {"twin-a": "tiny-a", "twin-b": "tiny-b"}
    long_short = {"prompt": LONG, "max_tokens": 4, "ignore_eos": True, "temperature": 0}
    short_long = {"prompt": SHORT, "max_tokens": 48, "ignore_eos": True, "temperature": 0}
    for name, url in twins.items():  # both shapes on each engine first: warm, as in service
        for body in (long_short, short_long):
            send(url, [{**body, "model": served[name]}] * 4)
    variants = {n: {"url": u, "served_name": served[n], "price_per_hour": 1.0}
                for n, u in twins.items()}  # fmt: skip
    booked = {n: ledger(u)["probe"] for n, u in twins.items()}
    stalled = {n: metric(u, "sparsegate_engine_step_stall_seconds_total") for n, u in twins.items()}
    gateway = start_gateway({"variants": variants, "gateway": {"cost_probe_every": PROBE_EVERY}})
    # Long prompts with short answers at concurrency 2 on one, short prompts with long
    # answers at concurrency 5 on the other, at the same time: whatever else the machine
    # runs then slows both alike (one after the other, each fit met other load).
    sent = dict(zip(("twin-a", "twin-b"), asyncio.run(_both(
        _completions(gateway, [{**long_short, "model": "twin-a"}] * 30, 2),
        _completions(gateway, [{**short_long, "model": "twin-b"}] * 30, 5),
    )), strict=True))  # fmt: skip
    for name, url in twins.items():  # every round ended (one each PROBE_EVERY requests)
        wait_for(lambda n=name: _probe_rounds(gateway, n) == 30 // PROBE_EVERY, timeout=120,
                 what=f"{name}'s cost probes")  # fmt: skip
        assert metric(gateway, "sparsegate_cost_probes_total", variant=name, outcome="sent") > 0
        quiet(url)
        assert ledger(url)["probe"] > booked[name]  # charged to their own account
    compared = httpx.get(f"{gateway}/v1/variants/compare").json()
    rows = {r["variant"]: r for r in compared["data"]}
    prompts = {"twin-a": LONG, "twin-b": SHORT}
    out_bytes = {n: [len(a["choices"][0]["text"].encode()) for a in sent[n]] for n in sent}
    mix = compared["reference_mix"]
    assert mix["prompt_bytes"] == pytest.approx(
        sum(30 * len(prompts[n].encode()) for n in sent) / 60
    )
    assert mix["output_bytes"] == pytest.approx(sum(map(sum, out_bytes.values())) / 60)
    usage = {n: [a["usage"] for a in sent[n]] for n in sent}
    # One tokenizer: both are priced at the tokens per byte of all the traffic's texts.
    shared = {
        "prompt": sum(u["prompt_tokens"] for n in sent for u in usage[n])
        / sum(30 * len(prompts[n].encode()) for n in sent),
        "output": sum(u["completion_tokens"] for n in sent for u in usage[n])
        / sum(map(sum, out_bytes.values())),
    }
    for name, row in rows.items():
        own = row["tokens_per_byte"]
        assert own["prompt"] == pytest.approx(
            sum(u["prompt_tokens"] for u in usage[name]) / (30 * len(prompts[name].encode()))
        )
        assert own["output"] == pytest.approx(
            sum(u["completion_tokens"] for u in usage[name]) / sum(out_bytes[name])
        )
        rates = row["pricing_tokens_per_byte"]
        assert rates == pytest.approx(shared)
        assert row["tokens_per_byte_source"] == "traffic of its tokenizer"
        # the stalls left out of the fit: the engine's, since the gateway started
        assert row["step_stalls"]["seconds"] == pytest.approx(
            metric(twins[name], "sparsegate_engine_step_stall_seconds_total") - stalled[name]
        )
        fit = row["step_cost_s"]
        assert fit["steps"] >= 20 and min(fit["fixed"], fit["per_prompt_token"]) >= 0
        prompt_tokens, output_tokens = (
            mix["prompt_bytes"] * rates["prompt"],
            mix["output_bytes"] * rates["output"],
        )
        seconds = (
            output_tokens * fit["fixed"] / max(mix["inflight"], 1)
            + fit["per_request"]
            + fit["per_prompt_token"] * prompt_tokens
            + fit["per_output_token"] * output_tokens
        )
        assert row["equal_work_dollars_per_million_bytes"] == pytest.approx(
            1.0 * seconds / 3600 / mix["output_bytes"] * 1e6
        )
    _prices_a_workload_given_in_the_query(gateway)
    a, b = rows["twin-a"], rows["twin-b"]
    equal = a["equal_work_dollars_per_million_bytes"] / b["equal_work_dollars_per_million_bytes"]
    raw = a["raw_dollars_per_million_bytes"] / b["raw_dollars_per_million_bytes"]
    with capsys.disabled():  # into the CI log, pass or fail
        print(f"\nidentical engines, unequal traffic: equal-work ratio {equal:.3f}, raw ratio "
              f"{raw:.3f}; fits {a['step_cost_s']} {b['step_cost_s']}; prompts per prefill "
              f"{a['step_prompt']} {b['step_prompt']}")  # fmt: skip


def _probe_rounds(gateway: str, variant: str) -> float:
    return sum(metric(gateway, "sparsegate_cost_probes_total", variant=variant, outcome=o)
               for o in ("sent", "skipped", "failed"))  # fmt: skip


def _prices_a_workload_given_in_the_query(gateway: str) -> None:
    """A benchmark's load priced on the same live fits; a workload given in part or out of
    range is refused in OpenAI's format."""
    workload = {"prompt_bytes": 400.0, "output_bytes": 90.0, "inflight": 3.0}
    priced = httpx.get(f"{gateway}/v1/variants/compare", params=workload).json()
    assert priced["reference_mix"] == {**workload, "requests": 0.0}
    assert priced["reference_mix_source"] == "query"
    for row in priced["data"]:
        fit, rates = row["step_cost_s"], row["pricing_tokens_per_byte"]
        out_tokens = 90.0 * rates["output"]
        seconds = (out_tokens * fit["fixed"] / 3.0 + fit["per_request"] + fit["per_prompt_token"]
                   * 400.0 * rates["prompt"] + fit["per_output_token"] * out_tokens)  # fmt: skip
        assert row["equal_work_dollars_per_million_bytes"] == pytest.approx(
            seconds / 3600 / 90.0 * 1e6
        )
    for bad in ({"prompt_bytes": 400}, {**workload, "inflight": 0.5},
                {**workload, "output_bytes": "x"}):  # fmt: skip
        r = httpx.get(f"{gateway}/v1/variants/compare", params=bad)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture(scope="module")
def damaged(engines, damaged_model) -> str:
    return engines({"tiny-damaged": damaged_model})["tiny-damaged"]


def _refusing_upstream() -> socket.socket:
    """An engine that refuses every request (400, OpenAI's format): as an engine that does
    not allow prompt_logprobs answers the scoring request."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    body = b'{"error": {"message": "prompt_logprobs is not allowed", "code": 400}}'

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_live_quality_in_bits_per_byte(tiny_engines, damaged, start_gateway, capsys):
    refusing = _refusing_upstream()
    variants = {
        "ref": {"url": tiny_engines["tiny-a"], "served_name": "tiny-a"},
        "twin": {"url": tiny_engines["tiny-b"], "served_name": "tiny-b"},
        "damaged": {"url": damaged, "served_name": "tiny-damaged"},
        "refuses": {"url": f"http://127.0.0.1:{refusing.getsockname()[1]}"},
    }
    split = {"ref": 1.0, "twin": 0.0, "damaged": 0.0, "refuses": 0.0}
    gateway = start_gateway(
        {"variants": variants, "aliases": {"live": {"split": split, "quality_sample": 1.0}}}
    )
    n = 30
    prompts = [f"{SHORT} {i} in the" for i in range(n)]
    bodies = [{"model": "live", "prompt": p, "max_tokens": 24, "temperature": 0} for p in prompts]
    assert send(gateway, bodies, 2) == [200] * n  # scoring never fails a user request

    def sampled(variant: str) -> float:
        return metric(gateway, "sparsegate_quality_samples_total", variant=variant)

    wait_for(lambda: all(sampled(v) >= n for v in ("twin", "damaged", "refuses")),
             timeout=300, what="every sample scored or counted")  # fmt: skip
    rows = _compare(gateway)
    twin, hurt = rows["twin"], rows["damaged"]
    for name, row in (("twin", twin), ("damaged", hurt)):
        with capsys.disabled():
            print(
                f"\nlive quality {name}: {row['live_bpb_ratio']:.4f} "
                f"{row['live_bpb_ratio_ci95']} over {row['live_bpb_samples']:.0f} texts"
            )
    # The same weights: an interval around 1.00 (to two decimals).
    low, high = twin["live_bpb_ratio_ci95"]
    assert low <= 1.005 and high >= 0.995 and twin["live_bpb_samples"] >= n / 2
    # Noise on every weight: far worse, and told apart with fewer than 50 texts.
    assert hurt["live_bpb_ratio"] > 1.5 and hurt["live_bpb_ratio_ci95"][0] > 1.2
    assert 2 <= hurt["live_bpb_samples"] < 50
    # Equal work prices a candidate's tokens from the same texts as the reference's: one
    # tokenizer here, so exactly the reference's own rates, whatever the candidate writes.
    for row in (twin, hurt):
        assert row["live_tokens_ratio"] == 1.0
        assert row["tokens_per_byte_source"] == "ref x same-text ratio"
        assert row["pricing_tokens_per_byte"] == rows["ref"]["tokens_per_byte"]
    assert rows["refuses"]["tokens_per_byte_source"] == "traffic of its tokenizer"
    # An engine that refuses the scoring request: failed samples, a log line, nothing else.
    assert rows["refuses"]["live_bpb_failed"] > 0 and rows["refuses"]["live_bpb_samples"] == 0
    log = start_gateway.logs[gateway].read_text()
    assert "quality scoring on refuses failed" in log
    refusing.close()


@pytest.mark.parametrize(
    ("alias", "message"),
    [
        ({"split": {"tiny-a": 1.0}, "quality_sample": 1.5},
         "aliases.live.quality_sample: Input should be less than or equal to 1"),
        ({"split": {"tiny-a": 1.0}, "quality_sample": 0.1, "reference": "nope"},
         "reference 'nope' is not served"),
    ],
)  # fmt: skip
def test_bad_quality_settings_are_one_line_at_start(tmp_path, alias, message):
    config = tmp_path / "bad.yaml"
    deployment = {
        "gateway": {"open": True},
        "variants": {"tiny-a": {"url": "http://127.0.0.1:9"}},
        "aliases": {"live": alias},
    }
    config.write_text(yaml.safe_dump(deployment))
    proc = run_cli("serve", "--config", str(config), "--port", str(free_port()), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
