"""Tenant keys in the registry's database: created, listed, rotated and revoked by the CLI
(audited, the key printed once and stored nowhere), and enforced by every gateway process
within seconds: models outside a key's list, revoked, rotated and expired keys."""

import hashlib
import json
import time

import httpx
import pytest

from app.registry import open_registry
from app.tenants.store import KeyStore
from tests.conftest import run_cli, wait_for


def _made_key(proc) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("stored nowhere): ")[1].split()[0]


def test_key_lifecycle_is_audited_and_never_shows_the_key(backend, tmp_path):
    home = tmp_path / "reg"
    open_registry(home, create=True).close()
    key = _made_key(run_cli("keys", "create", "acme", "--expires", "2099-01-01", registry=home))
    listed = run_cli("keys", "list", registry=home)
    assert "acme" in listed.stdout and "active" in listed.stdout and key not in listed.stdout
    new = _made_key(run_cli("keys", "rotate", "acme", registry=home))
    assert new != key
    assert run_cli("keys", "revoke", "acme", registry=home).returncode == 0
    shown = run_cli("keys", "show", "acme", registry=home)
    assert key not in shown.stdout and new not in shown.stdout
    record = json.loads(shown.stdout)
    assert record["state"] == "revoked" and record["expires_at"] == "2099-01-01T00:00:00+00:00"
    assert [a["action"] for a in record["audit"]] == ["created", "rotated", "revoked"]
    assert all("@" in a["actor"] for a in record["audit"])  # who, at which host
    stored = json.dumps([dict(r) for r in open_registry(home).query("SELECT * FROM api_keys")])
    assert key not in stored and new not in stored


@pytest.mark.parametrize(
    "args, says",
    [
        (["keys", "create", "acme"], "exists"),
        (["keys", "create", "b", "--models", "no-such-model"], "unknown 'no-such-model'"),
        (["keys", "create", "c", "--expires", "2001-01-01"], "in the past"),
        (["keys", "create", "d", "--expires", "soon"], "a date"),
        (["keys", "create", "bad name!"], "name"),
        (["keys", "revoke", "nobody"], "no API key named 'nobody'"),
        (["keys", "create", "e", "--rpm", "-5"], "--rpm -5: a limit is a count of at least 1"),
        (["keys", "create", "f", "--budget", "-1"], "--budget -1.0: dollars, 0 or more"),
        (["keys", "create", "g", "--budget", "5", "--budget-period", "month"], "30d"),
        (["keys", "limit", "acme"], "give a limit to set"),
        (["keys", "limit", "acme", "--remove", "speed"], "--remove 'speed'"),
        (["keys", "usage", "acme", "--by", "hour"], "--by 'hour'"),
    ],
)
def test_bad_key_commands_are_one_line(tmp_path, args, says):
    home = tmp_path / "reg"
    if not (home / "registry.db").exists():
        run_cli("keys", "create", "acme", registry=home)
    proc = run_cli(*args, registry=home)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _post(url: str, key: str, model: str, **headers: str) -> httpx.Response:
    """A new connection each time, so requests spread over the gateway's workers."""
    return httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "x",
                      "max_tokens": 1}, headers={"Authorization": f"Bearer {key}", **headers},
                      timeout=60)  # fmt: skip


def _all_refused(url: str, key: str, says: str, n: int = 16) -> bool:
    answers = [_post(url, key, "tiny-a") for _ in range(n)]
    return all(r.status_code == 401 and says in r.json()["error"]["message"] for r in answers)


def test_two_gateway_processes_enforce_tenant_keys_within_seconds(
    tiny_engines, start_gateway, tmp_path
):
    home = tmp_path / "reg"
    static = "sk-static-" + "s" * 20
    deployment = tmp_path / "deploy.yaml"
    config = {
        "gateway": {"tenant_keys": True,
                    "api_keys_sha256": [hashlib.sha256(static.encode()).hexdigest()]},
        "variants": {"tiny-a": {"url": tiny_engines["tiny-a"]},
                     "tiny-b": {"url": tiny_engines["tiny-b"]}},
    }  # fmt: skip
    deployment.write_text(json.dumps(config))
    key = _made_key(run_cli("keys", "create", "acme", "--models", "tiny-a", "--config",
                            str(deployment), registry=home))  # fmt: skip
    url = start_gateway(config, "--workers", "2", "--registry", str(home))
    assert all(_post(url, key, "tiny-a").status_code == 200 for _ in range(8))
    other = _post(url, key, "tiny-b")
    assert other.status_code == 403 and other.json()["error"]["type"] == "permission_error"
    pinned = _post(url, key, "tiny-a", **{"x-sparsegate-variant": "tiny-b"})
    assert pinned.status_code == 403
    listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    assert [m["id"] for m in listed["data"]] == ["tiny-a"]
    for operator_only in ("/metrics", "/v1/variants/compare"):  # every tenant's figures
        r = httpx.get(f"{url}{operator_only}", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403, operator_only
    assert _post(url, static, "tiny-b").status_code == 200  # the static digests still work

    # A key made after the gateways started works on every process, without a restart.
    late = _made_key(run_cli("keys", "create", "late", registry=home))
    wait_for(lambda: all(_post(url, late, "tiny-b").status_code == 200 for _ in range(8)),
             timeout=60, what="a new key accepted by every worker")  # fmt: skip
    started = time.monotonic()
    assert run_cli("keys", "revoke", "acme", registry=home).returncode == 0
    wait_for(lambda: _all_refused(url, key, "revoked"), timeout=60, what="revocation")
    print(f"revocation seen by every worker after {time.monotonic() - started:.1f} s")

    rotated = _made_key(run_cli("keys", "rotate", "late", registry=home))
    wait_for(lambda: _all_refused(url, late, "invalid or missing"), timeout=60, what="rotation")
    assert _post(url, rotated, "tiny-a").status_code == 200

    registry = open_registry(home)  # time passes: the key's end is now behind us
    with registry.transaction() as tx:
        tx.execute("UPDATE api_keys SET expires_at = ? WHERE name = ?",
                   ("2001-01-01T00:00:00+00:00", "late"))  # fmt: skip
    wait_for(lambda: _all_refused(url, rotated, "expired"), timeout=60, what="expiry")
    assert [k.state for k in KeyStore(registry).listed()] == ["revoked", "expired"]
    log = start_gateway.logs[url].read_text()
    assert not [k for k in (key, late, rotated, static) if k in log]
