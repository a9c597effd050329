"""`sparsegate keys init`: keys made once, in a folder (compose) or as a Secret made from
inside a pod (Kubernetes), with the user's key printed once and only digests kept."""

import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from app.deploy.kubernetes import create_secret
from app.errors import SparsegateError
from app.tenants.keys import digest, parse_key_file
from tests.conftest import SPARSEGATE


def test_two_inits_at_once_leave_one_set_of_keys(tmp_path):
    folder = tmp_path / "keys"
    argv = [str(SPARSEGATE), "keys", "init", str(folder), "--save", "prometheus:metrics"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    printed = [o.split("stored nowhere): ")[1].split()[0] for o in outs if "stored nowhere" in o]
    assert len(printed) == 1, outs  # one run made the keys, the other found them
    scopes = parse_key_file((folder / "api_keys_sha256").read_text())
    scraper = (folder / "prometheus.key").read_text().strip()
    assert scopes == {digest(printed[0]): "api", digest(scraper): "metrics"}
    assert sorted(p.name for p in folder.iterdir()) == ["api_keys_sha256", "prometheus.key"]


class _FakeApiServer(BaseHTTPRequestHandler):
    """The one call `create_secret` makes, answered as the Kubernetes API answers it."""

    answers: ClassVar[list[int]] = []
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.seen.append({"path": self.path, "auth": self.headers["authorization"], "body": body})
        status = self.answers.pop(0)
        reply = json.dumps({"kind": "Status", "message": f"status {status} here"}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api_server(tmp_path, monkeypatch):
    """An HTTPS server on a self-signed certificate, and a service account folder for it."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(account / "ca.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    (account / "token").write_text("pod-token\n")
    (account / "namespace").write_text("sparsegate\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApiServer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(account / "ca.crt", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_address[1]))
    _FakeApiServer.answers, _FakeApiServer.seen = [], []
    yield account
    server.shutdown()


def test_a_secret_is_created_once_with_the_pods_own_token(api_server: Path):
    _FakeApiServer.answers = [201, 409, 403]
    files = {"api_keys_sha256": "ab" * 32 + " api\n"}
    assert create_secret("sparsegate-api-keys", files, api_server) is True
    assert create_secret("sparsegate-api-keys", files, api_server) is False  # exists: kept
    with pytest.raises(SparsegateError, match="refused to create Secret sparsegate/x: 403"):
        create_secret("x", files, api_server)
    first = _FakeApiServer.seen[0]
    assert first["path"] == "/api/v1/namespaces/sparsegate/secrets"
    assert first["auth"] == "Bearer pod-token"
    assert first["body"]["metadata"]["name"] == "sparsegate-api-keys"
    assert first["body"]["stringData"] == files


def test_outside_a_pod_the_secret_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SparsegateError, match="runs in a pod"):
        create_secret("x", {}, tmp_path)
