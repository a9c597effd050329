"""What a new user found by probing a running gateway (issue: hardening), each as a test:
engine processes never outlive their supervisor, requests are bounded, the deployment file
is strict, keys never reach a log, accounting names the right variant, 0 is shown as 0."""

import hashlib
import json
import os
import signal
import socket
import subprocess

import httpx
import pytest
import yaml

from tests.conftest import free_port, metric, run_cli, wait_for

PROMPT = "The for statement is used to"


# --- 1. engine processes -------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()  # noqa: SIM115
        except OSError:
            continue  # ended meanwhile
        state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        out[int(entry)] = (int(ppid), int(pgrp), state)
    return out


def _alive_in_group(pgid: int) -> list[int]:
    return [p for p, (_pp, g, st) in _processes().items() if g == pgid and st not in "ZX"]


def _engine_groups(serve_pid: int) -> set[int]:
    """The process groups of the engines `sparsegate serve` spawned (each led by its server)."""
    return {p for p, (pp, g, st) in _processes().items() if pp == serve_pid and g == p}


def _serves(url: str) -> bool:
    try:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2}
        return httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def _stop_and_check(proc: subprocess.Popen, groups: set[int]) -> None:
    proc.send_signal(signal.SIGTERM)
    # serve's own bounds: 3 s for open streams, 8 s for engines, then SIGKILL.
    assert proc.wait(timeout=60) in (0, 130)
    for group in groups:
        assert _alive_in_group(group) == [], f"engine group {group} outlived serve"


def test_sigterm_while_engines_start_leaves_no_engine_process(spawning_serve):
    proc, _url = spawning_serve()
    wait_for(lambda: _engine_groups(proc.pid), what="engine spawned")
    groups = _engine_groups(proc.pid)
    _stop_and_check(proc, groups)


def test_a_killed_engine_server_takes_its_engine_core_along_and_comes_back(spawning_serve):
    proc, url = spawning_serve()
    wait_for(lambda: _serves(url), timeout=600, what="gateway serving")
    (group,) = _engine_groups(proc.pid)
    assert len(_alive_in_group(group)) >= 2  # vLLM's API server and its EngineCore
    os.kill(group, signal.SIGKILL)  # the API server only, as a crash would
    wait_for(lambda: _alive_in_group(group) == [], what="old engine group gone")
    wait_for(lambda: _serves(url), timeout=600, what="restarted engine serving")
    (restarted,) = _engine_groups(proc.pid)
    assert restarted != group
    # Crash it again and stop serve while the supervisor is restarting it.
    os.kill(restarted, signal.SIGKILL)
    wait_for(lambda: _engine_groups(proc.pid) - {restarted}, what="second restart begun")
    _stop_and_check(proc, {group, restarted, *_engine_groups(proc.pid)})


# --- 3-7. the gateway's edges ----------------------------------------------------------


KEY = "sk-test-" + "x" * 24
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def gateway(tiny_engines, tiny_registry, start_gateway):
    variants = {
        "tiny-a": {"url": tiny_engines["tiny-a"], "registry_name": "tiny"},
        "tiny-p": {"url": tiny_engines["tiny-p"]},
        "dead": {"url": f"http://127.0.0.1:{free_port()}"},
    }
    deployment = {
        "gateway": {"api_keys_sha256": [DIGEST], "max_tokens_cap": 64, "default_max_tokens": 8,
                    "max_n": 2, "max_logprobs": 3, "max_prompts": 2, "max_body_bytes": 262144},
        "variants": variants,
        "aliases": {"gone": {"split": {"dead": 1.0}}},
    }  # fmt: skip
    return start_gateway(deployment, "--registry", str(tiny_registry))


def _post(url: str, body: dict, path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=AUTH, timeout=60)


def _is_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    return error


def test_a_request_without_max_tokens_gets_the_default(gateway):
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}],
            "ignore_eos": True}  # fmt: skip
    r = _post(gateway, body, "/v1/chat/completions")
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8  # default_max_tokens, not the context


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("n", 3, "/v1/completions"),
        ("best_of", 3, "/v1/completions"),
        ("logprobs", 4, "/v1/completions"),
        ("prompt_logprobs", 4, "/v1/completions"),
        ("top_logprobs", 4, "/v1/chat/completions"),
        ("prompt", ["a", "b", "c"], "/v1/completions"),
    ],
)
def test_costly_parameters_are_capped(gateway, field, value, path):
    body = {"model": "tiny-a", "max_tokens": 2, "prompt": PROMPT, field: value}
    if path.endswith("chat/completions"):
        body = {"model": "tiny-a", "max_tokens": 2, "logprobs": True, field: value,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    error = _is_openai_error(_post(gateway, body, path), 400)
    assert error["param"] == field and "over the cap" in error["message"]


def test_a_body_nested_100000_levels_deep_is_a_400(gateway):
    for depth in (100_000, 1000):  # past Python's recursion limit, and within it
        raw = b'{"model": "tiny-a", "prompt": ' + b"[" * depth + b"]" * depth + b"}"
        r = httpx.post(f"{gateway}/v1/completions", content=raw, timeout=60,
                       headers={**AUTH, "content-type": "application/json"})  # fmt: skip
        assert "nested" in _is_openai_error(r, 400)["message"]


def test_a_body_without_length_is_refused_once_over_the_limit_not_read_whole(gateway):
    """A chunked upload that goes on past the limit: the 413 comes while the client is still
    sending (the body's end never comes, so a server that reads it whole never answers)."""
    host, port = gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 8192
        for _ in range(40):  # 320 KiB, over the 256 KiB limit, and no closing chunk
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


def test_unknown_key_in_the_deployment_file_is_one_line(tiny_engines, tmp_path):
    config = tmp_path / "deploy.yaml"
    cases = {
        "unknown key 'gateway.api_key_sha256'": {
            "gateway": {"api_key_sha256": [DIGEST]},
            "variants": {"a": {"url": tiny_engines["tiny-a"]}},
        },
        "unknown key 'variants.a.max_inflite'": {
            "gateway": {"open": True},
            "variants": {"a": {"url": tiny_engines["tiny-a"], "max_inflite": 3}},
        },
        "set open: true": {"gateway": {}, "variants": {"a": {"url": tiny_engines["tiny-a"]}}},
        "64 hex digits": {
            "gateway": {"api_keys_sha256": [KEY]},
            "variants": {"a": {"url": tiny_engines["tiny-a"]}},
        },
    }
    for expected, deployment in cases.items():
        config.write_text(yaml.safe_dump(deployment))
        proc = run_cli("serve", "--config", str(config), timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert KEY not in proc.stderr  # a key pasted in the wrong place is not echoed


def test_open_or_unreadable_keys_are_refused_in_one_line(tiny_engines, tmp_path):
    """An open gateway may not listen beyond this machine; a key file that is missing or
    holds a key instead of a digest stops the start, without echoing what it holds."""
    config = tmp_path / "deploy.yaml"
    keys, good = tmp_path / "keys.txt", tmp_path / "good.txt"
    keys.write_text(f"{KEY} api\n")
    good.write_text(f"{DIGEST} api\n")
    variants = {"a": {"url": tiny_engines["tiny-a"]}}
    cases = {
        "listens on this machine only": ({"open": True}, ["--host", "0.0.0.0"]),
        "cannot read api_keys_file": ({"api_keys_file": str(tmp_path / "none")}, []),
        "line 1 is not": ({"api_keys_file": str(keys)}, []),
        "contradict": ({"open": True, "api_keys_file": str(good)}, []),
    }
    for expected, (gateway, args) in cases.items():
        config.write_text(yaml.safe_dump({"gateway": gateway, "variants": variants}))
        proc = run_cli("serve", "--config", str(config), *args, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert KEY not in proc.stderr


def test_no_key_reaches_a_log(gateway, start_gateway):
    assert httpx.get(f"{gateway}/v1/models").status_code == 401
    assert httpx.get(f"{gateway}/v1/models", headers=AUTH).status_code == 200
    assert _post(gateway, {"model": "tiny-a", "prompt": "x", "max_tokens": 2}).status_code == 200
    # An old bookmark with the key in its URL still leaves no key in the log.
    assert httpx.get(f"{gateway}/dashboard", params={"key": KEY}).status_code == 200
    page = httpx.get(f"{gateway}/dashboard").text
    assert 'id="auth"' in page and "location.search" not in page  # form + header only
    log = start_gateway.logs[gateway].read_text()
    assert "GET /dashboard?[redacted]" in log  # the request was logged, its query was not
    assert KEY not in log and KEY[8:] not in log


def test_engine_4xx_is_an_invalid_request_of_that_variant(gateway):
    before = metric(
        gateway, "sparsegate_requests_total", headers=AUTH, variant="tiny-a", outcome="invalid"
    )
    # vLLM refuses top_k -5 with a 400 (the gateway passes top_k on unchecked): the
    # request's fault, not the engine's.
    r = _post(gateway, {"model": "tiny-a", "prompt": "x", "max_tokens": 2, "top_k": -5})
    assert r.status_code == 400 and "top_k" in r.text
    after = metric(
        gateway, "sparsegate_requests_total", headers=AUTH, variant="tiny-a", outcome="invalid"
    )
    assert after - before == 1
    assert metric(gateway, "sparsegate_requests_total", headers=AUTH, variant="tiny-a",
                  outcome="engine_error") == 0  # fmt: skip


def test_a_refusal_is_counted_for_its_alias_and_first_choice(gateway, start_gateway):
    r = _post(gateway, {"model": "gone", "prompt": "x", "max_tokens": 2})
    _is_openai_error(r, 503)
    assert metric(gateway, "sparsegate_requests_total", headers=AUTH, variant="dead", alias="gone",
                  status="503") == 1  # fmt: skip
    assert (
        metric(gateway, "sparsegate_requests_total", headers=AUTH, variant="none", status="503")
        == 0
    )
    log = start_gateway.logs[gateway]
    wait_for(lambda: "engine dead: ClientConnectorError" in log.read_text(),
              what="cause of the engine failure logged")  # fmt: skip


def test_shadow_agreement_of_zero_or_more_is_shown_as_a_value(tiny_engines, start_gateway):
    """Sampled (non-greedy) shadow traffic: no token agreement is defined, the exact-match
    rate is, and the dashboard shows it as a number however low it is (0% included)."""
    url = start_gateway({
        "variants": {"tiny-a": {"url": tiny_engines["tiny-a"]},
                     "tiny-p": {"url": tiny_engines["tiny-p"]}},
        "aliases": {"sampled": {"split": {"tiny-a": 1.0},
                                "shadow": {"variant": "tiny-p", "fraction": 1.0}}},
    })  # fmt: skip
    for i in range(3):
        body = {"model": "sampled", "prompt": f"{PROMPT} {i}", "max_tokens": 8, "temperature": 1}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200

    def row() -> dict:
        data = httpx.get(f"{url}/v1/variants/compare").json()["data"]
        return next(r for r in data if r["variant"] == "tiny-p")

    wait_for(lambda: row()["shadow_compared"] >= 3, what="shadow copies compared")
    rate = row()["shadow_exact_match_rate"]
    assert rate is not None and row()["shadow_prefix_agreement"] is None
    dom = _dashboard_dom(url)
    assert 'data-loaded="true"' in dom, dom[-2000:]
    cells = dom[dom.index('<tr data-variant="tiny-p">') :].split("</tr>")[0]
    assert f"<td>{100 * rate:.1f}%</td>" in cells


def test_dashboard_asks_for_the_key_in_a_form(gateway):
    dom = _dashboard_dom(gateway)
    form = dom[dom.index('<form id="auth"') :].split(">")[0]
    assert "hidden" not in form  # shown: the gateway answered 401 without a key
    assert "invalid or missing API key" in dom


def _dashboard_dom(url: str) -> str:
    """The dashboard after its script ran, in headless Chromium."""
    import shutil

    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: scripts/system-deps.sh installs it"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", f"{url}/dashboard"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc.stdout


# --- 9. soak ---------------------------------------------------------------------------


def test_bench_soak_counts_streams_fallbacks_and_gateway_memory(
    tiny_engines, start_gateway, tmp_path
):
    url = start_gateway({
        "variants": {"tiny-a": {"url": tiny_engines["tiny-a"]},
                     "dead": {"url": f"http://127.0.0.1:{free_port()}"}},
        "aliases": {"standby": {"split": {"dead": 1.0, "tiny-a": 0.0}}},
    })  # fmt: skip
    out = tmp_path / "soak.json"
    proc = run_cli(
        "bench", "soak", "--url", url, "--model", "standby", "--concurrency", "8",
        "--duration", "5", "--output-tokens", "8", "--prompt-words", "10", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    r = json.loads(out.read_text())
    assert r["completed"] >= 8 and r["lost"] == 0 and r["errors"] == {}
    assert r["started"] == r["completed"] + r["rejected_429"]
    # Every stream was served by the standby, token counts exact, and the gateway said so.
    assert r["fallbacks"] == r["completed"] and r["variants"] == {"tiny-a": r["completed"]}
    assert r["completion_tokens"] == 8 * r["completed"]
    assert (
        metric(url, "sparsegate_completion_tokens_total", variant="tiny-a")
        == (r["completion_tokens"])
    )
    assert r["gateway_rss_bytes_before"] > 0 and r["gateway_rss_bytes_after"] > 0
    assert f"{r['completed']} completed, 0 lost" in proc.stdout


# --- the engines' CPU attention kernel ------------------------------------------------


def test_vllm_loads_sparsegates_plugin_and_attention_avoids_the_amx_kernel(monkeypatch):
    """vLLM's AMX attention kernel dies with SIGILL on some hosts that report AMX (this
    project's CI machines): the plugin vLLM loads maps that choice to its AVX-512 kernel."""
    from importlib.metadata import entry_points

    import torch
    from vllm.v1.attention.backends import cpu_attn

    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins["sparsegate_cpu_attention"] == "app.engines.vllm_plugin:register"
    from app.engines.vllm_plugin import register

    original = cpu_attn._get_attn_isa
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert original(torch.bfloat16, 32) == "amx"  # what vLLM itself would run
    register()
    try:
        assert cpu_attn._get_attn_isa(torch.bfloat16, 32) == "vec"
        assert cpu_attn._get_attn_isa(torch.float32, 32) == original(torch.float32, 32)
    finally:
        cpu_attn._get_attn_isa = original
    monkeypatch.setenv("SPARSEGATE_CPU_ATTENTION", "auto")
    register()
    assert cpu_attn._get_attn_isa is original  # auto: vLLM's own choice


@pytest.mark.parametrize("broken", ["absent", "not callable"])
def test_the_plugin_leaves_vllms_choice_when_vllm_changed(monkeypatch, caplog, broken):
    """A vLLM that renamed or changed the private function: one warning, vLLM's own
    choice, and the process goes on (the plugin runs in every vLLM process)."""
    from vllm.v1.attention.backends import cpu_attn

    from app.engines.vllm_plugin import register

    if broken == "absent":
        monkeypatch.delattr(cpu_attn, "_get_attn_isa")
    else:
        monkeypatch.setattr(cpu_attn, "_get_attn_isa", "amx")
    before = getattr(cpu_attn, "_get_attn_isa", None)
    with caplog.at_level("WARNING", logger="sparsegate.vllm_plugin"):
        register()
    assert getattr(cpu_attn, "_get_attn_isa", None) == before
    warnings = [r for r in caplog.records if r.name == "sparsegate.vllm_plugin"]
    assert len(warnings) == 1 and "CPU attention left to vLLM" in warnings[0].getMessage()
