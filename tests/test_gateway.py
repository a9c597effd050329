"""The gateway in front of real vLLM engines (the tiny model), driven by the openai client."""

import asyncio
import hashlib
import json
import math
import subprocess
import time

import httpx
import openai
import pytest
import yaml

from tests.conftest import SPARSEGATE, free_port, run_cli

PROMPT = "The for statement is used to"


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory, tiny_model_dir, engines):
    home = tmp_path_factory.mktemp("gw-registry")
    proc = run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=home)
    assert proc.returncode == 0, proc.stderr
    folder = home / "tiny"
    return engines({"tiny-a": folder, "tiny-b": folder, "tiny-c": folder})


def _start_gateway(tmp_path, deployment: dict) -> str:
    config = tmp_path / f"deploy-{free_port()}.yaml"
    config.write_text(yaml.safe_dump(deployment))
    port = free_port()
    proc = subprocess.Popen(
        [str(SPARSEGATE), "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                _start_gateway.procs.append(proc)
                return url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("gateway did not start")


_start_gateway.procs = []


@pytest.fixture(scope="module")
def gateway(tiny_engines, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw")
    variants = {name: {"url": url} for name, url in tiny_engines.items()}
    variants["tiny-a-limited"] = {
        "url": tiny_engines["tiny-a"], "served_name": "tiny-a", "max_inflight": 1
    }  # fmt: skip
    variants["dead"] = {"url": f"http://127.0.0.1:{free_port()}"}
    deployment = {
        "gateway": {"max_tokens_cap": 512, "max_body_bytes": 65536},
        "variants": variants,
        "aliases": {
            "tiny": {"split": {"tiny-a": 0.7, "tiny-b": 0.3}},
            "standby": {"split": {"dead": 1.0, "tiny-b": 0.0}},
        },
    }
    yield _start_gateway(tmp, deployment)
    for proc in _start_gateway.procs:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)


def test_models_lists_variants_and_aliases(client):
    ids = {m.id for m in client.models.list()}
    assert {"tiny-a", "tiny-b", "tiny-c", "tiny", "standby"} <= ids


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
        model="tiny", prompt="x", max_tokens=1, extra_headers={"x-sparsegate-variant": "tiny-c"}
    )
    assert r.headers["x-sparsegate-variant"] == "tiny-c"


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


def test_bounded_inflight_answers_429(gateway):
    async def run():
        async with httpx.AsyncClient(base_url=gateway, timeout=120) as http:
            long = {"model": "tiny-a-limited", "prompt": PROMPT, "max_tokens": 400,
                    "stream": True, "ignore_eos": True}  # fmt: skip
            async with http.stream("POST", "/v1/completions", json=long) as first:
                assert first.status_code == 200
                second = await http.post("/v1/completions", json={**long, "stream": False})
                async for _ in first.aiter_lines():
                    pass
            return second

    second = asyncio.run(run())
    assert second.status_code == 429 and second.headers["retry-after"] == "1"


def test_api_keys(tiny_engines, tmp_path):
    digest = hashlib.sha256(b"s3cret").hexdigest()
    url = _start_gateway(
        tmp_path,
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
