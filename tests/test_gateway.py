"""The gateway in front of real vLLM engines (the tiny model), driven by the openai client."""

import asyncio
import hashlib
import json
import math
import socket
import threading

import httpx
import openai
import pytest
import yaml

from tests.conftest import ROOT, free_port, metric, run_cli, wait_for

PROMPT = "The for statement is used to"


@pytest.fixture(scope="module")
def gateway(tiny_engines, tiny_registry, start_gateway):
    variants = {name: {"url": url} for name, url in tiny_engines.items()}
    variants["tiny-a"]["registry_name"] = "tiny"
    # An upstream that accepts connections and never answers: a deterministic timeout.
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    # A deep backlog: every read of /metrics reads the engines' books too, and a connection
    # never accepted stays in the queue, so a short one would fill and refuse connections.
    stalled.listen(1024)
    variants["stalled"] = {
        "url": f"http://127.0.0.1:{stalled.getsockname()[1]}", "request_timeout_s": 0.5
    }  # fmt: skip
    variants["dead"] = {"url": f"http://127.0.0.1:{free_port()}"}
    broken = _start_broken_upstream()
    variants["broken"] = {"url": f"http://127.0.0.1:{broken.getsockname()[1]}"}
    deployment = {
        "gateway": {"max_tokens_cap": 1000, "max_body_bytes": 65536},
        "variants": variants,
        "aliases": {
            "tiny": {"split": {"tiny-a": 0.7, "tiny-b": 0.3}},
            "standby": {"split": {"dead": 1.0, "tiny-b": 0.0}},
            "shadowed": {
                "split": {"tiny-a": 1.0},
                "shadow": {"variant": "tiny-p", "fraction": 1.0},
            },
            "tiny-prod": {"production_of": "tiny"},
        },
    }
    yield start_gateway(deployment, "--registry", str(tiny_registry))
    stalled.close()
    broken.close()


_FIRST_EVENT = {"id": "cmpl-x", "object": "text_completion", "created": 0, "model": "broken",
                "choices": [{"index": 0, "text": "Hello", "finish_reason": None}]}  # fmt: skip


def _start_broken_upstream() -> socket.socket:
    """An engine that starts a stream, sends one event and drops the connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed at teardown
            with conn:
                conn.recv(65536)
                event = f"data: {json.dumps(_FIRST_EVENT)}\n\n".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                    + f"{len(event):x}\r\n".encode()
                    + event
                    + b"\r\n"
                )  # and no last chunk: the stream breaks

    threading.Thread(target=serve, daemon=True).start()
    return server


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)


def test_models_lists_variants_and_aliases(client):
    ids = {m.id for m in client.models.list()}
    assert {"tiny-a", "tiny-b", "tiny-p", "tiny", "standby"} <= ids


def test_completion_matches_the_engine_and_its_usage(client, tiny_engines):
    via_gateway = client.completions.with_raw_response.create(
        model="tiny-a", prompt=PROMPT, max_tokens=12, temperature=0
    )
    assert via_gateway.headers["x-sparsegate-variant"] == "tiny-a"
    assert float(via_gateway.headers["x-sparsegate-latency-ms"]) > 0
    got = via_gateway.parse()
    direct = openai.OpenAI(base_url=f"{tiny_engines['tiny-a']}/v1", api_key="x").completions.create(
        model="tiny-a", prompt=PROMPT, max_tokens=12, temperature=0
    )
    assert got.choices[0].text == direct.choices[0].text
    assert got.usage == direct.usage and got.usage.completion_tokens == 12


def test_streamed_chat_has_exact_usage_when_asked(client):
    messages = [{"role": "user", "content": "Say something."}]
    whole = client.chat.completions.create(
        model="tiny-b", messages=messages, max_tokens=10, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="tiny-b", messages=messages, max_tokens=10, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stream_without_usage_gets_none_but_ends_with_done(gateway):
    body = {"model": "tiny-a", "prompt": PROMPT, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{gateway}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["x-sparsegate-variant"] == "tiny-a"
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed and all(e["choices"] and not e.get("usage") for e in parsed)


def test_alias_split_is_weighted_and_sticky(gateway):
    n = 200
    counts = {"tiny-a": 0, "tiny-b": 0}
    with httpx.Client(base_url=gateway, timeout=60) as http:
        for i in range(n):
            body = {"model": "tiny", "prompt": "x", "max_tokens": 1, "user": f"user-{i}"}
            r = http.post("/v1/completions", json=body)
            assert r.status_code == 200
            counts[r.headers["x-sparsegate-variant"]] += 1
        # 0.7 of 200: 140 expected, sd ~6.5; 4.5 sd bounds
        assert abs(counts["tiny-a"] - 0.7 * n) < 4.5 * math.sqrt(n * 0.7 * 0.3)
        seen = {
            http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1,
                                               "user": "alice"}).headers["x-sparsegate-variant"]
            for _ in range(10)
        }  # fmt: skip
        assert len(seen) == 1


def test_header_pins_a_variant(client):
    r = client.completions.with_raw_response.create(
        model="tiny", prompt="x", max_tokens=1, extra_headers={"x-sparsegate-variant": "tiny-p"}
    )
    assert r.headers["x-sparsegate-variant"] == "tiny-p"


def test_falls_back_when_the_chosen_engine_is_down(client):
    r = client.completions.with_raw_response.create(model="standby", prompt="x", max_tokens=2)
    assert r.headers["x-sparsegate-variant"] == "tiny-b"
    assert r.headers["x-sparsegate-fallbacks"] == "1"


@pytest.mark.parametrize(
    ("call", "status", "error"),
    [
        (lambda c: c.completions.create(model="nope", prompt="x"), 404, openai.NotFoundError),
        (lambda c: c.completions.create(model="dead", prompt="x"), 503, openai.InternalServerError),
        (
            lambda c: c.completions.create(model="tiny-a", prompt="x", max_tokens=100000),
            400,
            openai.BadRequestError,
        ),
        (
            lambda c: c.chat.completions.create(model="tiny-a", messages=[]),
            400,
            openai.BadRequestError,
        ),
    ],
)
def test_errors_in_openai_format(client, call, status, error):
    with pytest.raises(error) as info:
        call(client)
    assert info.value.status_code == status
    body = info.value.response.json()["error"]
    assert body["message"] and body["code"] == status and body["type"]


def test_engine_error_passes_through(client):
    # The tiny engine serves 1024 tokens of context: vLLM itself refuses this request.
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny-a", prompt="word " * 3000, max_tokens=5)
    assert info.value.response.headers["x-sparsegate-variant"] == "tiny-a"


def test_body_size_cap(gateway):
    r = httpx.post(f"{gateway}/v1/completions",
                   json={"model": "tiny-a", "prompt": "x" * 100_000}, timeout=30)  # fmt: skip
    assert r.status_code == 413 and r.json()["error"]["code"] == 413


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v1/completions", None, 405, "method not allowed on this route"),
        ("POST", "/v1/nothing", None, 404, "no such route"),
        ("POST", "/v1/completions", b'{"model": "tiny-a", "prompt": "a \\ud800 b"}', 400,
         "lone surrogate"),
        ("POST", "/v1/chat/completions",
         b'{"model": "tiny-a", "messages": [{"role": "user", "content": "\\udfff"}]}', 400,
         "lone surrogate"),
    ],
)  # fmt: skip
def test_starlettes_refusals_and_bad_unicode_are_in_openai_format(
    gateway, method, path, body, status, message
):
    r = httpx.request(method, f"{gateway}{path}", content=body, timeout=30,
                      headers={"content-type": "application/json"})  # fmt: skip
    error = r.json()["error"]
    assert r.status_code == status and error["code"] == status, r.text
    assert message in error["message"] and error["type"].endswith("_error")
    if status == 405:
        assert "POST" in r.headers["allow"]


def test_bounded_inflight_answers_429(slow_engine, start_gateway):
    # On the slowed engine the first stream needs 20 s or more, so it is still in flight when
    # the second request arrives, however fast or busy the machine (the tiny engine's 400
    # tokens could end first); leaving the block then aborts it.
    engine, _log = slow_engine
    url = start_gateway(
        {"variants": {"limited": {"url": engine, "served_name": "tiny-slow", "max_inflight": 1}}}
    )

    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            long = {"model": "limited", "prompt": PROMPT, "max_tokens": 400,
                    "stream": True, "ignore_eos": True}  # fmt: skip
            async with http.stream("POST", "/v1/completions", json=long) as first:
                assert first.status_code == 200
                second = await http.post("/v1/completions", json={**long, "stream": False})
            return second

    second = asyncio.run(run())
    assert second.status_code == 429 and second.headers["retry-after"] == "1"


def test_api_keys(tiny_engines, start_gateway):
    digest = hashlib.sha256(b"s3cret").hexdigest()
    url = start_gateway(
        {
            "gateway": {"api_keys_sha256": [digest]},
            "variants": {"tiny-a": {"url": tiny_engines["tiny-a"]}},
        },
    )
    good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
    assert good.completions.create(model="tiny-a", prompt="x", max_tokens=1).usage
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="tiny-a", prompt="x", max_tokens=1)


def test_keys_from_keys_init_open_only_their_routes(tiny_engines, start_gateway, tmp_path):
    """What compose and Kubernetes run: `keys init` makes the keys once (the user's printed,
    Prometheus's saved); the gateway reads the digests; /metrics takes a key, and the
    scraper's key opens /metrics alone. /health and the API's schema stay open."""
    import httpx

    made = run_cli("keys", "init", str(tmp_path / "keys"), "--save", "prometheus:metrics")
    assert made.returncode == 0, made.stderr
    user = made.stdout.split("stored nowhere): ")[1].split()[0]
    scraper = (tmp_path / "keys" / "prometheus.key").read_text().strip()
    digests = (tmp_path / "keys" / "api_keys_sha256").read_text()
    assert user not in digests and scraper not in digests
    again = run_cli("keys", "init", str(tmp_path / "keys"), "--save", "prometheus:metrics")
    assert again.returncode == 0 and "already exist" in again.stdout and user not in again.stdout
    assert (tmp_path / "keys" / "api_keys_sha256").read_text() == digests

    url = start_gateway(
        {
            "gateway": {"api_keys_file": str(tmp_path / "keys" / "api_keys_sha256")},
            "variants": {"tiny-a": {"url": tiny_engines["tiny-a"]}},
        },
    )
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=user, max_retries=0)
    assert client.completions.create(model="tiny-a", prompt="x", max_tokens=1).usage
    scraping = openai.OpenAI(base_url=f"{url}/v1", api_key=scraper, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        scraping.completions.create(model="tiny-a", prompt="x", max_tokens=1)
    assert refused.value.body["type"] == "permission_error"

    def metrics(key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{url}/metrics", headers=headers).status_code

    refused = (metrics(None), metrics("wrong"))
    assert refused == (401, 401) and metrics(scraper) == metrics(user) == 200
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/openapi.json").status_code == 200
    # The bench sends the key, for its requests and for the gateway's /metrics (CPU).
    out = tmp_path / "overhead.json"
    bench = run_cli("bench", "overhead", "--url", url, "--variant", "tiny-a", "--engine-url",
                    tiny_engines["tiny-a"], "--requests", "4", "--concurrency", "2", "--rounds",
                    "1", "--out", str(out), SPARSEGATE_API_KEY=user)  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    result = json.loads(out.read_text())
    assert result["gateway"]["errors"] == 0 and result["gateway_cpu"]["ms_per_request"] > 0


def test_metrics_count_requests_and_tokens_exactly(client, gateway, tiny_engines):
    def figures() -> dict[str, float]:
        return {
            "requests": metric(
                gateway, "sparsegate_requests_total", variant="tiny-b", outcome="ok"
            ),
            "prompt": metric(gateway, "sparsegate_prompt_tokens_total", variant="tiny-b"),
            "completion": metric(gateway, "sparsegate_completion_tokens_total", variant="tiny-b"),
            "ttft": metric(
                gateway, "sparsegate_time_to_first_token_seconds_count", variant="tiny-b"
            ),
        }

    direct = openai.OpenAI(base_url=f"{tiny_engines['tiny-b']}/v1", api_key="x")
    stream_prompt = direct.completions.create(model="tiny-b", prompt=PROMPT, max_tokens=1)
    before = figures()
    seen_prompt = seen_completion = 0
    for i in range(3):
        usage = client.completions.create(
            model="tiny-b", prompt=f"{PROMPT} {i}", max_tokens=7
        ).usage
        seen_prompt += usage.prompt_tokens
        seen_completion += usage.completion_tokens
    for _ in range(2):  # streamed, the client not asking for usage: still counted exactly
        body = {"model": "tiny-b", "prompt": PROMPT, "max_tokens": 9, "stream": True,
                "ignore_eos": True}  # fmt: skip
        with httpx.stream("POST", f"{gateway}/v1/completions", json=body, timeout=60) as r:
            events = [ln for ln in r.iter_lines() if ln.startswith("data: {")]
        assert all(json.loads(e[6:]).get("usage") is None for e in events)
        seen_prompt += stream_prompt.usage.prompt_tokens
        seen_completion += 9
    after = figures()
    assert after["requests"] - before["requests"] == 5
    assert after["prompt"] - before["prompt"] == seen_prompt
    assert after["completion"] - before["completion"] == seen_completion
    assert after["ttft"] - before["ttft"] == 2  # streams only


def test_error_metrics_by_status(client, gateway):
    labels = {"variant": "none", "alias": "none", "outcome": "invalid", "status": "404"}
    before = metric(gateway, "sparsegate_requests_total", **labels)
    for _ in range(2):
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="x")
    assert metric(gateway, "sparsegate_requests_total", **labels) - before == 2


def test_fallback_is_counted(client, gateway):
    labels = {"alias": "standby", "from_variant": "dead", "to_variant": "tiny-b"}
    before = metric(gateway, "sparsegate_fallbacks_total", **labels)
    client.completions.create(model="standby", prompt="x", max_tokens=1)
    assert metric(gateway, "sparsegate_fallbacks_total", **labels) - before == 1


def test_shadow_traffic_is_compared_and_accounted_apart(client, gateway, tiny_engines):
    prompts = [f"{PROMPT} {w}" for w in ("loop", "value", "name", "list")]
    labels = {"alias": "shadowed", "variant": "tiny-p"}

    def shadow(name: str, **extra: str) -> float:
        return metric(gateway, name, **labels, **extra)

    before = {
        "compared": shadow("sparsegate_shadow_requests_total", outcome="compared"),
        "exact": shadow("sparsegate_shadow_exact_matches_total"),
        "prefix": shadow("sparsegate_shadow_common_prefix_tokens_total"),
        "total": shadow("sparsegate_shadow_compared_tokens_total"),
        "user_p": metric(gateway, "sparsegate_completion_tokens_total", variant="tiny-p"),
        "user_a": metric(gateway, "sparsegate_completion_tokens_total", variant="tiny-a"),
    }
    direct_a = openai.OpenAI(base_url=f"{tiny_engines['tiny-a']}/v1", api_key="x")
    direct_p = openai.OpenAI(base_url=f"{tiny_engines['tiny-p']}/v1", api_key="x")
    expected_exact, user_tokens = 0, 0
    for prompt in prompts:
        args = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
        got = client.completions.create(model="shadowed", **args)
        mine = direct_a.completions.create(model="tiny-a", **args).choices[0].text
        theirs = direct_p.completions.create(model="tiny-p", **args).choices[0].text
        assert got.choices[0].text == mine  # the user's answer is the primary's, untouched
        expected_exact += mine == theirs
        user_tokens += got.usage.completion_tokens
    wait_for(
        lambda: (
            shadow("sparsegate_shadow_requests_total", outcome="compared") - before["compared"]
            == len(prompts)
        )
    )
    assert shadow("sparsegate_shadow_exact_matches_total") - before["exact"] == expected_exact
    prefix = shadow("sparsegate_shadow_common_prefix_tokens_total") - before["prefix"]
    total = shadow("sparsegate_shadow_compared_tokens_total") - before["total"]
    assert 0 <= prefix <= total and total >= len(prompts)
    assert (prefix == total) == (expected_exact == len(prompts))
    # Shadow tokens are not user tokens: the candidate's user counters did not move.
    assert (
        metric(gateway, "sparsegate_completion_tokens_total", variant="tiny-p") == before["user_p"]
    )
    assert (
        metric(gateway, "sparsegate_completion_tokens_total", variant="tiny-a") - before["user_a"]
        == user_tokens
    )


@pytest.fixture(scope="module")
def slow_engine(engines, tiny_registry):
    """The tiny model on an engine slowed to at least 50 ms per decoding step: 1000 tokens
    take 50 s or more, so the client always leaves long before the generation could end."""
    from app.registry.embedded import EmbeddedRegistry

    folder = EmbeddedRegistry(tiny_registry).path_of("tiny")
    url = engines(
        {"tiny-slow": folder},
        # Logged requests: vLLM then logs each abort it carries out.
        extra_args=["--logits-processors", "tests.slow_engine:SlowSteps", "--enable-log-requests"],
        env={"PYTHONPATH": str(ROOT)},
    )["tiny-slow"]
    return url, engines.logs / "tiny-slow.log"


def test_client_disconnect_aborts_the_engine_request(slow_engine, start_gateway):
    engine, engine_log = slow_engine
    url = start_gateway({"variants": {"tiny-slow": {"url": engine}}})

    def engine_figure(name: str, **labels: str) -> float:
        return metric(engine, name, model_name="tiny-slow", **labels)

    by_length = engine_figure("vllm:request_success_total", finished_reason="length")
    body = {"model": "tiny-slow", "prompt": PROMPT, "max_tokens": 1000, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        request_id = None
        for i, line in enumerate(r.iter_lines()):
            if line.startswith("data: {"):
                request_id = request_id or json.loads(line[6:])["id"]
            if i >= 6:
                break  # leaving the block closes the connection mid-stream
        assert i >= 6 and request_id
    # The abort, observed where it happens: vLLM logs that it aborted this request. The
    # engine needs 50 s or more for 1000 tokens, so it cannot have ended the request itself.
    wait_for(lambda: f"Aborted request(s) {request_id}" in engine_log.read_text(), timeout=300)
    wait_for(lambda: engine_figure("vllm:num_requests_running") == 0)  # the gauge lags a step
    assert engine_figure("vllm:request_success_total", finished_reason="length") == by_length
    assert engine_figure("vllm:generation_tokens_total") < 1000
    wait_for(
        lambda: (
            metric(url, "sparsegate_requests_total", variant="tiny-slow", outcome="aborted") == 1
        )
    )


def test_upstream_timeout_answers_504(client, gateway):
    before = metric(gateway, "sparsegate_requests_total", variant="stalled", status="504")
    # The upstream never answers, so only the gateway's own timeout can end the request (the
    # client's would raise APITimeoutError, not a status).
    with pytest.raises(openai.APIStatusError) as info:
        client.with_options(timeout=60).completions.create(
            model="stalled", prompt=PROMPT, max_tokens=5
        )
    assert info.value.status_code == 504
    error = info.value.response.json()["error"]
    assert error["code"] == 504 and "did not answer in time" in error["message"]
    after = metric(gateway, "sparsegate_requests_total", variant="stalled", status="504")
    assert after - before == 1


def test_engine_failing_mid_stream_ends_the_stream_with_an_error(gateway):
    before = metric(gateway, "sparsegate_requests_total", variant="broken", outcome="engine_error")
    body = {"model": "broken", "prompt": PROMPT, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{gateway}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["text"] == "Hello"  # what came before the break is relayed
    assert events[-1]["error"]["code"] == 502 and "mid-stream" in events[-1]["error"]["message"]
    after = metric(gateway, "sparsegate_requests_total", variant="broken", outcome="engine_error")
    assert after - before == 1


def test_counters_are_exact_with_several_workers(tiny_engines, start_gateway):
    url = start_gateway({"variants": {"tiny-a": {"url": tiny_engines["tiny-a"]}}}, "--workers", "2")
    n = 12
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(n):
            body = {"model": "tiny-a", "prompt": "x", "max_tokens": 2}
            assert http.post("/v1/completions", json=body).status_code == 200
    # Whichever worker answers /metrics reports every worker's requests.
    seen = {metric(url, "sparsegate_requests_total", variant="tiny-a") for _ in range(6)}
    assert seen == {n}


def test_alias_follows_the_registrys_production_variant(client):
    models = {m.id: m for m in client.models.list()}
    # tiny (served as tiny-a) is in production; its pruned candidate is a weight-0 fallback.
    assert models["tiny-prod"].model_extra["variants"] == ["tiny-a", "tiny-p"]
    r = client.completions.with_raw_response.create(model="tiny-prod", prompt="x", max_tokens=1)
    assert r.headers["x-sparsegate-variant"] == "tiny-a"


def test_production_alias_without_a_production_variant_is_one_line(
    tiny_engines, tiny_registry, tmp_path
):
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"open": True},
        "variants": {"tiny-p": {"url": tiny_engines["tiny-p"]}},
        "aliases": {"p": {"production_of": "tiny"}},
    }))  # fmt: skip
    proc = run_cli("serve", "--config", str(config), registry=tiny_registry, timeout=60)
    assert proc.returncode == 2
    assert "no served variant of 'tiny' is in production" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
