"""Tenant limits, budgets and usage: counted in a real Redis shared by two gateway
processes, keys and usage rows in a real PostgreSQL (the gateways on the read-only role a
deployment gives them), enforced in OpenAI's error format."""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.gateway.limit_store import Ask, LocalStore, RedisStore
from app.registry import open_registry
from app.tenants.keys import digest
from app.tenants.usage import Usage, add_rows, spent, summed
from tests.conftest import ROOT, metric, run_cli, wait_for
from tests.servers import Prometheus, Redis

PRICE = 36.0  # dollars an hour on tiny-a: $0.01 an engine-second
OPERATOR = "sk-operator-" + "o" * 20  # a static key: the operator's figures (/metrics)
SEES = {"Authorization": f"Bearer {OPERATOR}"}


@pytest.mark.parametrize("where", ["local", "redis"])
def test_limit_stores_count_requests_tokens_and_slots_alike(where, redis_server):
    async def run() -> None:
        store = LocalStore() if where == "local" else RedisStore(redis_server.url, 1.0)
        name = f"t-{where}-{id(store)}"
        burst = [Ask(name, f"r{i}", 20, None, 1, None, 60) for i in range(40)]
        refused = await asyncio.gather(*(store.take(a) for a in burst))
        assert sum(r is None for r in refused) == 20  # exactly: a sliding window of 60 s
        assert {r.limit for r in refused if r} == {"rpm"}
        assert all(1 <= r.retry_after_s <= 60 for r in refused if r)

        first, second = (Ask(name + "t", rid, None, 100, 60, None, 60) for rid in "ab")
        assert await store.take(first) is None
        assert (await store.take(second)).limit == "tpm"  # 60 reserved + 60 > 100
        await store.settle(first, 30)  # it used 30: the window holds 30 now
        assert await store.take(second) is None

        slots = [Ask(name + "s", f"s{i}", None, None, 1, 2, 60) for i in range(3)]
        assert [await store.take(a) is None for a in slots] == [True, True, False]
        await store.settle(slots[0], None)
        assert await store.take(slots[2]) is None
        await store.close()

    asyncio.run(run())


def test_usage_rows_sum_per_key_variant_and_day(backend, tmp_path):
    reg = open_registry(tmp_path / "reg", create=True)
    add_rows(reg, {("acme", "a"): Usage(2, 1, 10, 5, 20, 0.25, 0),
                   ("acme", "b"): Usage(1, 0, 3, 4, 9, 0.5, 1),
                   ("zeta", "a"): Usage(1, 0, 1, 1, 1, 0.125, 0)})  # fmt: skip
    (acme,) = summed(reg, "acme", None, "key")
    assert (acme["requests"], acme["errors"], acme["prompt_tokens"]) == (3, 1, 13)
    assert (acme["completion_tokens"], acme["output_bytes"], acme["unpriced"]) == (9, 29, 1)
    assert acme["dollars"] == 0.75
    assert [r["variant"] for r in summed(reg, "acme", None, "variant")] == ["a", "b"]
    assert spent(reg, {"zeta": "2000-01-01"}) == {"zeta": 0.125}
    assert spent(reg, {"zeta": "2999-01-01"}) == {"zeta": 0.0}
    reg.close()


def _made_key(proc) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("stored nowhere): ")[1].split()[0]


def _post(url: str, key: str, **body) -> httpx.Response:
    payload = {"model": "tiny-a", "prompt": "x", "max_tokens": 1, **body}
    return httpx.post(f"{url}/v1/completions", json=payload,
                      headers={"Authorization": f"Bearer {key}"}, timeout=120)  # fmt: skip


def _streamed_usage(url: str, key: str) -> dict:
    body = {"model": "tiny-a", "prompt": "Once", "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    usage = {}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=headers,
                      timeout=120) as r:  # fmt: skip
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return usage


def test_limits_budgets_and_usage_hold_across_two_gateways(
    tiny_engines, start_gateway, shared_servers, tmp_path, monkeypatch
):
    pg, s3 = shared_servers
    database = pg.new_database()
    reader = pg.add_reader(database)  # as a deployment's first start makes it, before tables
    owner = {"SPARSEGATE_REGISTRY_URL": pg.url(database),
             "SPARSEGATE_ARTIFACTS": "s3://sparsegate-test/limits", **s3.env()}  # fmt: skip
    home = tmp_path / "reg"

    def cli(*args: str):
        return run_cli(*args, registry=home, **owner)

    keys = {
        "burst": _made_key(cli("keys", "create", "burst", "--rpm", "20")),
        "tokens": _made_key(cli("keys", "create", "tokens", "--tpm", "400")),
        "meter": _made_key(cli("keys", "create", "meter")),
        "budget": _made_key(cli("keys", "create", "budget", "--budget", "0.0005")),
        "roomy": _made_key(cli("keys", "create", "roomy", "--rpm", "100000", "--tpm", "10000000",
                               "--max-inflight", "1000", "--budget", "1000")),
    }  # fmt: skip
    redis = Redis()  # this test's own: it stops it to see what the gateways do then
    try:
        for k, v in (owner | s3.env(reader=True) | {"SPARSEGATE_REGISTRY_URL": reader}).items():
            monkeypatch.setenv(k, v)  # the gateways' own read-only credentials
        urls = [_gateway(start_gateway, tiny_engines, redis, mode, home)
                for mode in ("open", "closed")]  # fmt: skip
        _burst_is_held_to_rpm(urls, keys["burst"])
        _tokens_are_held_to_tpm(urls[0], keys["tokens"])
        _usage_rows_equal_what_the_client_got(urls, keys["meter"], cli)
        _budget_runs_out(urls, keys["budget"], cli)
        _limit_changes_reach_both(urls, keys["burst"], cli)
        for bad in ("Bearer", "Basic dXNlcjpwdw==", f"Bearer {keys['meter']} x"):
            r = httpx.post(f"{urls[0]}/v1/completions", json={}, headers={"Authorization": bad})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"

        _bench_limits_on_and_off(urls[0], tiny_engines["tiny-a"], keys["roomy"], tmp_path)
        _tenant_rows_have_data(urls[0], keys, tmp_path)

        cli("keys", "limit", "burst", "--rpm", "1")
        wait_for(lambda: all(_post(u, keys["burst"]).status_code == 429 for u in urls),
                 what="rpm 1 on both gateways")  # fmt: skip
        redis.stop()
        assert _post(urls[0], keys["burst"]).status_code == 200  # fails open: uncounted
        shut = _post(urls[1], keys["burst"])  # fails closed
        assert shut.status_code == 503 and "limit store" in shut.json()["error"]["message"]
        assert _post(urls[1], keys["meter"]).status_code == 200  # no limits: no store needed
        errors = metric(urls[0], "sparsegate_limit_store_errors_total", headers=SEES)
        assert errors >= 1
    finally:
        redis.stop()
    texts = [start_gateway.logs[u].read_text() for u in urls]
    texts += [httpx.get(f"{u}/metrics", headers=SEES).text for u in urls]
    assert not [k for k in keys.values() for t in texts if k in t]


def _gateway(start_gateway, tiny_engines, redis, on_store_error: str, home) -> str:
    gateway = {
        "tenant_keys": True,
        "api_keys_sha256": [digest(OPERATOR)],
        "limits": {"redis_url": redis.url, "on_store_error": on_store_error},
    }
    variants = {"tiny-a": {"url": tiny_engines["tiny-a"], "price_per_hour": PRICE}}
    return start_gateway({"gateway": gateway, "variants": variants}, "--registry", str(home))


def _tenant_rows_have_data(url: str, keys: dict[str, str], tmp_path) -> None:
    """Every query of the tenants' Grafana rows answers from a real Prometheus scraping the
    gateway with a scraper's key, under tenant traffic (served, and refused by the budget)."""
    (tmp_path / "scrape-key").write_text(OPERATOR)
    job = {"job_name": "gateway", "static_configs": [{"targets": [url.removeprefix("http://")]}],
           "authorization": {"credentials_file": str(tmp_path / "scrape-key")}}  # fmt: skip
    board = json.loads((ROOT / "deploy/grafana/dashboards/sparsegate-tenants.json").read_text())
    queries = [t["expr"].replace("$__rate_interval", "30s").replace("$key", ".*")
               for p in board["panels"] for t in p.get("targets", [])]  # fmt: skip

    def answered() -> bool:
        _post(url, keys["meter"])  # served and priced
        _post(url, keys["budget"])  # refused: over its budget
        return all(any(v > 0 for v in prom.values(q)) for q in queries)

    prom = Prometheus([job])
    try:
        wait_for(answered, timeout=180, what="data in every tenant panel")
    finally:
        prom.stop()


def _bench_limits_on_and_off(url: str, engine: str, roomy: str, tmp_path) -> None:
    """`bench overhead --limited-key`: the same rounds with limits counted and without."""
    out = tmp_path / "overhead.json"
    bench = run_cli("bench", "overhead", "--url", url, "--variant", "tiny-a", "--engine-url",
                    engine, "--requests", "4", "--concurrency", "2", "--rounds", "1", "--out",
                    str(out), SPARSEGATE_API_KEY=OPERATOR,
                    SPARSEGATE_LIMITED_KEY=roomy)  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert "limits on (tenant key) vs off" in bench.stdout
    result = json.loads(out.read_text())
    assert result["limits"]["errors"] == result["gateway"]["errors"] == 0
    assert result["limits"]["requests"] == 4 and result["limits_cpu"]["ms_per_request"] > 0


def _burst_is_held_to_rpm(urls: list[str], key: str) -> None:
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda i: _post(urls[i % 2], key), range(40)))
    passed = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    print(f"burst of 40 at rpm 20 over two gateways: {len(passed)} through")
    assert 19 <= len(passed) <= 21 and len(passed) + len(limited) == 40
    error = limited[0].json()["error"]
    assert error["type"] == "rate_limit_error" and "rpm limit (20)" in error["message"]
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in limited)
    both = sum(metric(u, "sparsegate_key_requests_total", headers=SEES, key="burst",
                      outcome="limited") for u in urls)  # fmt: skip
    assert both == len(limited)


def _tokens_are_held_to_tpm(url: str, key: str) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 24  # ~270 tokens estimated
    assert _post(url, key, prompt=long, max_tokens=4).status_code == 200
    second = _post(url, key, prompt=long, max_tokens=4)
    assert second.status_code == 429 and "tpm limit (400)" in second.json()["error"]["message"]
    too_big = _post(url, key, prompt=long * 2, max_tokens=4)
    assert too_big.status_code == 429 and too_big.headers["x-should-retry"] == "false"
    assert "over its limit of 400 tokens" in too_big.json()["error"]["message"]


def _usage_rows_equal_what_the_client_got(urls: list[str], key: str, cli) -> None:
    got = []
    for i in range(6):
        if i % 2:
            got.append(_streamed_usage(urls[i % 2], key))
        else:
            r = _post(urls[i % 2], key, prompt="Hello there", max_tokens=6)
            assert r.status_code == 200
            got.append(r.json()["usage"])
    want = {k: sum(u[k] for u in got) for k in ("prompt_tokens", "completion_tokens")}

    def saved() -> bool:
        rows = json.loads(cli("keys", "usage", "meter", "--json").stdout)
        return (
            bool(rows)
            and rows[0]["requests"] == 6
            and all(rows[0][k] == v for k, v in want.items())
        )

    wait_for(saved, timeout=60, what="usage rows equal to the client's usage")
    counted = sum(metric(u, "sparsegate_key_tokens_total", headers=SEES, key="meter",
                         kind="completion") for u in urls)  # fmt: skip
    assert counted == want["completion_tokens"]


def _budget_runs_out(urls: list[str], key: str, cli) -> None:
    last: list[httpx.Response] = []

    def refused() -> bool:
        r = _post(urls[len(last) % 2], key, prompt="Tell me a story", max_tokens=16)
        last.append(r)
        return r.status_code == 429

    wait_for(refused, timeout=240, what="the budget spent")
    error = last[-1].json()["error"]
    assert error["type"] == "insufficient_quota" and "budget of $0.0005" in error["message"]
    assert last[-1].headers["x-should-retry"] == "false"
    assert all(r.status_code == 200 for r in last[:-1])

    def saved() -> float:
        rows = json.loads(cli("keys", "usage", "budget", "--json").stdout)
        return rows[0]["dollars"] if rows else 0.0

    wait_for(lambda: saved() >= 0.0005, timeout=30, what="the spent budget in the usage rows")
    wait_for(lambda: all(_post(u, key).status_code == 429 for u in urls), timeout=30,
             what="both gateways refuse the spent key")  # fmt: skip


def _limit_changes_reach_both(urls: list[str], key: str, cli) -> None:
    assert all(_post(u, key).status_code == 429 for u in urls)  # rpm 20 spent this minute
    assert cli("keys", "limit", "burst", "--rpm", "100").returncode == 0
    wait_for(lambda: all(_post(u, key).status_code == 200 for u in urls), timeout=30,
             what="the new limit on both gateways")  # fmt: skip
    shown = json.loads(cli("keys", "show", "burst").stdout)
    change = shown["audit"][-1]
    assert change["action"] == "limits changed"
    assert (change["detail"]["before"]["rpm"], change["detail"]["after"]["rpm"]) == (20, 100)
