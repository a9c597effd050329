"""Rollouts on real engines: two gateway processes follow the rollout in the registry, a
controller decides on their evidence. An identical candidate goes to production, a damaged
one is rolled back at the shadow step without serving a user, and a candidate whose engine
dies mid-canary is rolled back while the reference serves every user."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from app.registry import open_registry
from tests.conftest import ROOT, SPARSEGATE, free_port, metric, run_cli, wait_for
from tests.servers import Prometheus
from tests.test_deploy import argo_queries
from tests.test_observability import _tool

# The error gate's bound sets how many requests a step needs when neither side fails: the
# two sides' always-valid half-widths must sum under it, about 150 requests a side at 0.2,
# 60 at 0.5 (minutes apart on 2 cores). A dead engine's error rate goes to 1, past either.
GATES = ["--steps", "0,50,100", "--max-bpb-ratio", "1.05", "--max-error-rate-increase", "0.5",
         "--confidence", "0.95", "--min-samples", "20", "--quality-sample", "0.5",
         "--shadow-fraction", "0.5"]  # fmt: skip
PROMPTS = ["The history of", "Write a sentence about", "In Python, a list", "Once upon a"]
# Between one thread's requests: users who pause, leaving the candidates' engines some of
# the two cores (flat out, the reference's engine alone starved them for minutes).
PACE_S = 0.05


@pytest.fixture(scope="module")
def damaged_engine(engines, damaged_model):
    """This module's one engine: the damaged model. It is rolled back at the shadow step
    by the quality gate; rolled out again with the quality gate opened wide, its engine is
    the one killed mid-canary (one more engine would starve the others on 2 cores)."""
    url = engines({"tiny-damaged": damaged_model})["tiny-damaged"]
    engine = engines.started[-1]
    # Unbound, as several engines on one host must be: vLLM's own binding put every
    # engine's worker on CPU 0, where they starved each other for a minute at a time.
    assert _pinned(engine.proc.pid) == []
    _warm(url, "tiny-damaged")
    return url, engine


def _pinned(group: int) -> list[int]:
    """Processes of the group that may not run on every CPU of the host."""
    listed = subprocess.run(["ps", "-o", "pid=", "-g", str(group)], capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    every, pinned = set(range(os.cpu_count() or 1)), []
    for pid in map(int, listed):
        try:
            if os.sched_getaffinity(pid) != every:
                pinned.append(pid)
        except ProcessLookupError:  # gone meanwhile
            continue
    return pinned


def _warm(url: str, name: str) -> None:
    """A fresh engine compiles its sampler (torch inductor) at its first batches, which on
    a busy 2-core machine can take minutes: done here, so that the rollouts time the
    candidates' answers and not their compiler. Batches of the sizes and kinds to come."""
    generate = {"model": name, "prompt": "Once upon a", "max_tokens": 8}
    score = {"model": name, "prompt": "Once upon a time there was", "max_tokens": 1,
             "prompt_logprobs": 0, "temperature": 0, "return_token_ids": True}  # fmt: skip
    for size in (1, 2, 4, 8, 16):
        with ThreadPoolExecutor(size) as pool:
            bodies = [generate if i % 3 else score for i in range(size)]
            answers = pool.map(lambda b: httpx.post(f"{url}/v1/completions", json=b,
                                                    timeout=900), bodies)  # fmt: skip
            assert all(r.status_code == 200 for r in answers)


class Traffic:
    """Requests to the alias over both gateways, two at a time, until stopped; each
    answer's status and serving variant kept."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.seen = urls, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(2)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        n = 0
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                n += 1
                # Half streamed: only streamed answers are timed (the latency gates).
                body = {"model": "chat", "prompt": PROMPTS[n % len(PROMPTS)], "max_tokens": 8,
                        "user": f"user-{i}-{n}", "stream": n % 4 < 2}  # fmt: skip
                try:
                    r = http.post(f"{self.urls[n % 2]}/v1/completions", json=body)
                    self.seen.append((r.status_code, r.headers.get("x-sparsegate-variant")))
                except httpx.HTTPError as e:
                    self.seen.append((0, str(e)))
                self._stop.wait(PACE_S)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def _status(home) -> dict:
    proc = run_cli("rollout", "status", "chat", "--json", registry=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[-1]


def _wait_state(home, states: tuple[str, ...], timeout: float) -> dict:
    found = {}

    def reached() -> bool:
        found.update(_status(home))
        return found["state"] in states

    wait_for(reached, timeout=timeout, what=f"rollout {states}")
    return found


def _samples(rollout: dict) -> list[str]:
    """Per decision: what it was and what it rested on."""
    out = []
    for e in rollout["events"]:
        gates = e["detail"].get("gates")
        if gates:
            used = ", ".join(f"{g['gate']} {g['samples']}" for g in gates)
            out.append(f"{e['kind']} at step {e['detail']['step']} ({e['at']}): {used}")
    return out


def test_rollouts_promote_the_identical_and_roll_back_the_damaged_and_the_dead(
    tiny_engines, damaged_engine, start_gateway, tmp_path
):
    damaged_url, damaged = damaged_engine
    home = tmp_path / "reg"
    reg = open_registry(home, create=True)
    for name, base in {"tiny": None, "tiny-twin": "tiny", "tiny-damaged": "tiny"}.items():
        with reg.draft(name) as draft:  # the engines serve the files; records are enough
            (draft.path / "w.bin").write_bytes(name.encode())
            extra = {"base": base, "parent": base} if base else {}
            draft.publish(param_count=10, quality={"bpb_ratio_max": 1.0}, **extra)
    reg.close()
    variants = {
        "ref": {"url": tiny_engines["tiny-a"], "served_name": "tiny-a", "registry_name": "tiny"},
        "twin": {"url": tiny_engines["tiny-b"], "served_name": "tiny-b",
                 "registry_name": "tiny-twin"},
        "damaged": {"url": damaged_url, "served_name": "tiny-damaged",
                    "registry_name": "tiny-damaged"},
    }  # fmt: skip
    for cfg in variants.values():
        # Copies past this wait are skipped (counted, never an error): on 2 cores, five
        # engines that all take every copy slow each other to a crawl.
        cfg["max_inflight"] = 8
    deployment = {"variants": variants,
                  "aliases": {"chat": {"split": {"ref": 1.0, "twin": 0.0}}}}  # fmt: skip
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump(deployment | {"gateway": {"open": True}}))
    gateways = [start_gateway(json.loads(json.dumps(deployment)), "--registry", str(home))
                for _ in range(2)]  # fmt: skip
    log = (tmp_path / "controller.log").open("w")
    port = free_port()
    controller = subprocess.Popen(
        [str(SPARSEGATE), "rollout", "controller", "--interval", "0.5", "--metrics-port",
         str(port), "--registry", str(home)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    scraped = [u.removeprefix("http://") for u in gateways] + [f"127.0.0.1:{port}"]
    traffic = Traffic(gateways)
    try:
        _damaged_is_rolled_back_unseen(home, config, traffic)
        _twin_is_promoted(home, config, traffic, gateways, start_gateway, scraped)
        _dead_candidate_is_rolled_back(home, config, traffic, damaged, gateways)
        _bench_drives_a_rollout_to_its_end(home, config, gateways[0])
    finally:
        traffic.stop()
        os.killpg(controller.pid, signal.SIGTERM)
        controller.wait(30)
        log.close()
    assert ": rollback (" in (tmp_path / "controller.log").read_text()  # its decisions, logged


def _start(home, config, candidate: str, *more: str) -> float:
    proc = run_cli("rollout", "start", "chat", candidate, "--config", str(config), *GATES,
                   *more, registry=home)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return time.monotonic()


def _damaged_is_rolled_back_unseen(home, config, traffic: Traffic) -> None:
    began, first = _start(home, config, "damaged"), len(traffic.seen)
    rollout = _wait_state(home, ("rolled_back",), timeout=300)
    print(f"damaged: rolled back {time.monotonic() - began:.1f} s after its start; "
          + "; ".join(_samples(rollout)))  # fmt: skip
    assert rollout["step"] == 0 and "bits-per-byte" in rollout["reason"]
    served = Counter(v for status, v in traffic.seen[first:] if status == 200)
    assert served["damaged"] == 0 and served["ref"] > 0  # never a user's answer
    reg = open_registry(home)
    rejected = reg.get("tiny-damaged")  # its stage says so, with the reason
    reg.close()
    assert rejected.stage.value == "rejected"
    assert rejected.quality["rollout"]["rejected"] == rollout["reason"]


def _weights(urls: list[str]) -> list[float]:
    return [metric(u, "sparsegate_rollout_weight_percent", alias="chat") for u in urls]


def _twin_is_promoted(home, config, traffic: Traffic, gateways, start_gateway, scraped) -> None:
    # A latency gate on the median TTFT (a p95 needs many hundreds of timed requests a
    # side), wide enough that two identical engines on a busy machine never fail it. Not
    # TPOT: the tiny model streams its 8 tokens so fast that most arrive in one read.
    began = _start(home, config, "twin", "--pause-at", "50", "--max-ttft-ratio", "3",
                   "--latency-quantile", "0.5")  # fmt: skip
    _wait_state(home, ("paused",), timeout=300)  # at 50%, by itself
    moved = time.monotonic()
    wait_for(lambda: _weights(gateways) == [50.0, 50.0], timeout=60, what="50% on both")
    print(f"both gateways at 50% {time.monotonic() - moved:.1f} s after the step was taken")
    _dashboard_shows_the_rollout(gateways[0])
    _rollout_rows_have_data(scraped)
    # A gateway started mid-rollout routes as the rollout says from its first request.
    deployment = yaml.safe_load(config.read_text())
    late = start_gateway(deployment, "--registry", str(home))
    assert _weights([late]) == [50.0]
    assert run_cli("rollout", "resume", "chat", registry=home).returncode == 0
    rollout = _wait_state(home, ("promoted",), timeout=300)
    print(f"twin: promoted {time.monotonic() - began:.1f} s after its start; "
          + "; ".join(_samples(rollout)))  # fmt: skip
    reg = open_registry(home)
    assert {v.name: v.stage.value for v in reg.variants()}["tiny-twin"] == "production"
    reg.close()
    wait_for(lambda: _weights(gateways) == [100.0, 100.0], timeout=60, what="100% on both")
    mark = len(traffic.seen)
    wait_for(lambda: len(traffic.seen) > mark + 20, what="traffic after the promotion")
    served = Counter(v for s, v in traffic.seen[mark:] if s == 200)
    assert set(served) == {"twin"}, served


def _dashboard_shows_the_rollout(gateway: str) -> None:
    """/v1/rollouts and the dashboard's rollout section, in headless Chromium."""
    (row,) = httpx.get(f"{gateway}/v1/rollouts", timeout=30).json()["data"]
    assert (row["candidate"], row["state"], row["weight"]) == ("twin", "paused", 50)
    assert {g["gate"] for g in row["gates"]} == {"bpb_ratio", "error_rate_increase",
                                                 "ttft_ratio"}  # fmt: skip
    assert [e["kind"] for e in row["events"]][-2:] == ["advanced and paused", "paused"] or row[
        "events"
    ][-1]["kind"] == "advanced and paused"
    dom = subprocess.run(
        [_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
         "--virtual-time-budget=8000", "--dump-dom", f"{gateway}/dashboard"],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert re.search(r'class="rollout" data-alias="chat" data-state="paused" data-weight="50"',
                     dom), dom[-3000:]  # fmt: skip
    assert 'data-gate="bpb_ratio"' in dom and "advanced and paused" in dom


def _rollout_rows_have_data(scraped: list[str]) -> None:
    """Every query of the rollouts' Grafana dashboard answers from a real Prometheus that
    scrapes the gateways and the controller (only now: each scrape of a gateway reads every
    engine's /metrics, load this small machine does not need throughout)."""
    board = json.loads((ROOT / "deploy/grafana/dashboards/sparsegate-rollouts.json").read_text())
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    # And Argo's AnalysisTemplate on the same gates: at 50%, paused, every gate passed.
    argo = argo_queries({"alias": "chat", "candidate": "twin"})
    prom = Prometheus([{"job_name": "all", "static_configs": [{"targets": scraped}]}])
    try:
        wait_for(lambda: all(prom.values(q) for q in queries), timeout=120,
                 what="data in every rollout panel")  # fmt: skip
        # (judged on the evidence of the 50% step, which keeps coming while it is paused)
        seen: dict[str, list[float]] = {}

        def every_gate_passed() -> bool:
            seen.update({q: prom.values(q) for q in argo})
            return all(v == [1.0] for v in seen.values())

        try:
            wait_for(every_gate_passed, timeout=240,
                     what="every gate passed, as Argo's analysis reads it")  # fmt: skip
        except AssertionError as e:
            raise AssertionError(f"{e}; last read: {seen}") from None
    finally:
        prom.stop()


def _bench_drives_a_rollout_to_its_end(home, config, gateway: str) -> None:
    """`sparsegate bench rollout` drives an alias until its rollout ends and reports each
    step from the rollout's events (with a controller of its own beside the test's: the
    lease lets one decide). The candidate: the first reference, identical to the twin that
    now serves the alias."""
    _start(home, config, "ref", "--steps", "0,100")
    out = home.parent / "bench-rollout.json"
    proc = run_cli("bench", "rollout", "chat", "--url", gateway, "--concurrency", "2",
                   "--prompt-words", "8", "--output-tokens", "8", "--timeout-s", "300",
                   "--out", str(out), registry=home)  # fmt: skip
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert "ref against twin on chat: promoted" in proc.stdout
    report = json.loads(out.read_text())
    (step,) = report["steps"]
    assert (step["step"], step["weight"], step["decision"]) == (0, 0, "promoted")
    assert step["samples"]["bpb_ratio"] >= 20 and report["served"]["twin"] > 0


def _dead_candidate_is_rolled_back(home, config, traffic: Traffic, doomed, gateways) -> None:
    # Rolled back on quality before: its quality gate opened wide, so only its death counts.
    _start(home, config, "damaged", "--pause-at", "50", "--max-bpb-ratio", "10")
    _wait_state(home, ("paused",), timeout=300)  # at 50%, by itself
    doomed.stop()  # its engine dies mid-canary
    mark = len(traffic.seen)
    killed = time.monotonic()
    assert run_cli("rollout", "resume", "chat", registry=home).returncode == 0
    rollout = _wait_state(home, ("rolled_back",), timeout=300)
    print(f"dead candidate: rolled back {time.monotonic() - killed:.1f} s after its engine "
          "died; " + "; ".join(_samples(rollout)))  # fmt: skip
    assert "error rate" in rollout["reason"]
    after = traffic.seen[mark:]
    failed = [a for a in after if a[0] != 200]
    assert len(failed) <= 2, failed  # at most the requests in flight when it died
    assert {v for s, v in after if s == 200} == {"twin"}  # by the reference it was against
    wait_for(lambda: _weights(gateways) == [0.0, 0.0], timeout=60, what="0% on both")
