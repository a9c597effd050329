"""Real servers for the tests: Debian's PostgreSQL and Redis, and SeaweedFS's S3.

Each runs in its own process group under a temporary folder and is stopped by that group.
PostgreSQL refuses to run as root: under root the server runs as the `postgres` user.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

STARTUP_S = 120


def _port_pair() -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts gRPC at +10000 by default)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _wait(proc: subprocess.Popen, ready, what: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {STARTUP_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, sig: int, grace_s: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "the PostgreSQL server is not installed (apt-get install postgresql; "
            "`make system-deps` does it)"
        )
    return Path(initdb).resolve().parent


class Postgres:
    user, password = "sparsegate", "pw-" + uuid.uuid4().hex[:12]

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sparsegate-pg-"))
        self.root.chmod(0o755)
        bindir = pg_bindir()
        as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if as_user:
            shutil.chown(pwfile, "postgres")
        self.log = self.root / "log"
        with self.log.open("w") as log:
            subprocess.run(
                [*as_user, bindir / "initdb", "-D", self.root / "data", "-U", self.user,
                 "-A", "scram-sha-256", f"--pwfile={pwfile}", "--no-sync"],
                stdout=log, stderr=subprocess.STDOUT, check=True,
            )  # fmt: skip
            self.port = _port_pair()
            self.proc = subprocess.Popen(
                [*as_user, bindir / "postgres", "-D", self.root / "data", "-p", str(self.port),
                 "-k", self.root, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _wait(self.proc, self._ready, "postgres", self.log)

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        return (
            f"postgresql://{self.user}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"
        )

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def add_reader(self, dbname: str) -> str:
        """The URL of a read-only role on `dbname`, made by the script deployments run on
        the database's first start (deploy/k8s/registry/initdb-reader.sh)."""
        role, password = "reader_" + uuid.uuid4().hex[:8], "rp-" + uuid.uuid4().hex[:12]
        env = {"PATH": f"{pg_bindir()}:{os.environ['PATH']}", "POSTGRES_USER": self.user,
               "POSTGRES_DB": dbname, "PGHOST": "127.0.0.1", "PGPORT": str(self.port),
               "PGPASSWORD": self.password, "SPARSEGATE_READER": role,
               "SPARSEGATE_READER_PASSWORD": password}  # fmt: skip
        script = Path(__file__).resolve().parents[1] / "deploy/k8s/registry/initdb-reader.sh"
        subprocess.run([str(script)], env=env, check=True, capture_output=True)
        return f"postgresql://{role}:{password}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # "fast" shutdown
        shutil.rmtree(self.root, ignore_errors=True)


class Redis:
    """Debian's redis-server on a free port, with a password (as a deployment runs it)."""

    password = "rp-" + uuid.uuid4().hex[:12]

    def __init__(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError(
                "the Redis server is not installed (apt-get install redis-server; "
                "`make system-deps` does it)"
            )
        self.root = Path(tempfile.mkdtemp(prefix="sparsegate-redis-"))
        self.port = _port_pair()
        self.log = self.root / "log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.root,
                 "--save", "", "--appendonly", "no", "--requirepass", self.password],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _wait(self.proc, self._ready, "redis-server", self.log)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def _ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=2).ping())
        except redis.exceptions.RedisError:
            return False

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


class Prometheus:
    """Debian's Prometheus scraping `jobs` (scrape_configs entries) every second."""

    def __init__(self, jobs: list[dict]) -> None:
        import yaml

        server = shutil.which("prometheus")
        if server is None:
            raise RuntimeError("prometheus is missing: scripts/system-deps.sh installs it")
        self.root = Path(tempfile.mkdtemp(prefix="sparsegate-prom-"))
        config = {"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = _port_pair()
        self.api = f"http://127.0.0.1:{port}"
        self.log = self.root / "log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [server, f"--config.file={self.root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _wait(self.proc, self._ready, "prometheus", self.log)

    def _ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.api}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def values(self, query: str) -> list[float]:
        """The query's values now (NaN left out)."""
        import math

        import httpx

        r = httpx.get(f"{self.api}/api/v1/query", params={"query": query}, timeout=30).json()
        found = [float(s["value"][1]) for s in r.get("data", {}).get("result", [])]
        return [v for v in found if not math.isnan(v)]

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


class SeaweedS3:
    access_key, secret_key = "sparsegate", "sk-" + uuid.uuid4().hex[:16]
    # as deploy/compose/s3-identities.json gives the gateway and the engines
    reader_key, reader_secret = "sparsegate-reader", "rk-" + uuid.uuid4().hex[:16]

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sparsegate-s3-"))
        (self.root / "data").mkdir()
        identities = {
            "identities": [
                {
                    "name": "sparsegate",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "reader",
                    "credentials": [
                        {"accessKey": self.reader_key, "secretKey": self.reader_secret}
                    ],
                    "actions": ["Read", "List"],
                },
            ]
        }
        (self.root / "s3.json").write_text(json.dumps(identities))
        ports = {k: _port_pair() for k in ("master", "volume", "filer", "s3")}
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        weed = Path(sys.prefix) / "bin" / "weed"
        self.log = self.root / "log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [weed, "server", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
                 "-ip.bind=127.0.0.1", f"-master.port={ports['master']}",
                 f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
                 "-s3", f"-s3.port={ports['s3']}", f"-s3.config={self.root / 's3.json'}",
                 "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64",
                 "-volume.max=50"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        _wait(self.proc, self._ready, "seaweedfs", self.log)

    def env(self, secret: str | None = None, *, reader: bool = False) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.reader_key if reader else self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret or (self.reader_secret if reader else self.secret_key),
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def _ready(self) -> bool:
        # Ready once a bucket can be written (the S3 port opens before the volumes do).
        try:
            client = self.client()
            client.create_bucket(Bucket="ready-check")
            client.put_object(Bucket="ready-check", Key="k", Body=b"x")
        except Exception:
            return False
        return True

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, grace_s=10)
        shutil.rmtree(self.root, ignore_errors=True)
