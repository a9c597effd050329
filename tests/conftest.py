import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.image_build import ImageBuild

# Tests run in the serve environment; the CLI hands compress jobs to its sibling.
SPARSEGATE = Path(sys.prefix) / "bin" / "sparsegate"
ROOT = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("SPARSEGATE_VENVS", Path(sys.prefix).parent))


def run_cli(
    *args: str, registry: Path | None = None, timeout: float = 1800, cwd: Path | None = None,
    **env: str,
):  # fmt: skip
    """Run the real `sparsegate` command; returns the CompletedProcess (text). The timeout
    guards against a hang, never times the work: SmolLM2's budget search (test_budget.py)
    passed 15 min on a 2-core AVX2 host sharing its CPU."""
    cmd = [str(SPARSEGATE), *args]
    if registry is not None:
        cmd += ["--registry", str(registry)]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "SPARSEGATE_VENVS": str(VENVS), "HF_HUB_OFFLINE": "1", **env},
    )


def compress_jobs(home: Path, base: str, jobs: dict[str, list[str]], *common: str):
    """Run `sparsegate compress BASE ARGS... --name NAME` for each job; the registry."""
    from app.registry.embedded import EmbeddedRegistry

    for name, args in jobs.items():
        proc = run_cli("compress", base, *args, *common, "--name", name, registry=home)
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return EmbeddedRegistry(home)


def assert_served_as_evaluated(registry, served: dict[str, str], spans: int) -> None:
    """Each served variant's bits per byte, from prompt log-probabilities on the job's own
    spans read with its own tokenizer, within 1% of what the job recorded in float32 (the
    engine's dtype and int8/int4 kernels against the job's evaluation)."""
    from app.engines.scoring import served_bits_per_byte
    from app.texts.evaluation import EVAL_TEXTS

    for name, url in served.items():
        folder = registry.servable_path(name)
        for text in EVAL_TEXTS:
            bpb = served_bits_per_byte(url, name, folder, text.spans(spans))
            evaluated = registry.get(name).quality["bpb"][text.key]
            assert bpb == pytest.approx(evaluated, rel=0.01), (name, text.key, bpb)


IMAGE_BUILD = pytest.StashKey[ImageBuild]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The deploy stack's images start building now, behind the tests that run before it
    (tests/image_build.py); its fixture waits for them."""
    stack = any(item.path.name == "test_deploy_stack.py" for item in session.items)
    if stack and os.environ.get("SPARSEGATE_SKIP_STACK") != "1":
        session.config.stash[IMAGE_BUILD] = ImageBuild.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    build = session.config.stash.get(IMAGE_BUILD, None)
    if build is not None:
        build.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def default_registry(tmp_path_factory) -> Path:
    """A registry holding the real default model, imported once for the whole session."""
    return _imported(tmp_path_factory.mktemp("default-registry"), "gemma-3-270m")


@pytest.fixture(scope="session")
def smollm2_registry(tmp_path_factory) -> Path:
    """A registry holding the second packaged family, SmolLM2-135M-Instruct."""
    return _imported(tmp_path_factory.mktemp("smollm2-registry"), "smollm2-135m")


def _imported(home: Path, model: str) -> Path:
    proc = run_cli("models", "import", model, registry=home)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return home


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """An engine's own settings, where a batch mixes them: {name: Served(folder, ...)}."""

    folder: Path
    dtype: str = "auto"
    env: dict = field(default_factory=dict)


class EngineStarter:
    """Starts vLLM engines in parallel: starter({name: folder or Served}) -> {name: url};
    each logs to logs/NAME.log. One batch, whatever their settings: engines that start
    together share the cores' idle moments (loading files, waiting on their own workers)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started = []

    def __call__(
        self, models: dict[str, Path | Served], extra_args: list[str] = (), env: dict | None = None,
        dtype: str = "auto",
    ) -> dict[str, str]:  # fmt: skip
        from app.engines.vllm_process import EngineSettings, VllmProcess, shared_host_environment

        served = {n: m if isinstance(m, Served) else Served(m, dtype, env or {})
                  for n, m in models.items()}  # fmt: skip
        batch = [
            VllmProcess(
                EngineSettings(
                    model=s.folder,
                    served_name=name,
                    port=free_port(),
                    max_model_len=1024,
                    dtype=s.dtype,
                    extra_args=list(extra_args),
                    # The suite runs several engines at once on this host.
                    env=shared_host_environment(4) | s.env,
                ),
                log=self.logs / f"{name}.log",
            )
            for name, s in served.items()
        ]
        for engine in batch:
            engine.start()
            self.started.append(engine)
        for engine in batch:
            try:  # a guard against a hang (an engine that exits fails at once), not a time
                engine.wait_ready(timeout=1500)  # limit: busy AVX2 hosts start slowly
            except Exception:
                print(engine.log_path.read_text()[-5000:])
                raise
        return {e.settings.served_name: e.settings.url for e in batch}

    def stop(self, names: list[str] | None = None) -> None:
        """Stop the engines serving `names` (all when None)."""
        stopping = [e for e in self.started if names is None or e.settings.served_name in names]
        for engine in stopping:
            engine.stop()
            self.started.remove(engine)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Engines shared by a module's tests and stopped after it: a 2-core, 24 GiB machine
    holds one module's real-model engines, not all of them."""
    starter = EngineStarter(tmp_path_factory.mktemp("engine-logs"))
    yield starter
    starter.stop()


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model and a 50% magnitude-pruned variant of it (`tiny-p`)."""
    home = tmp_path_factory.mktemp("tiny-registry")
    proc = run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=home)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "compress", "tiny", "--prune", "magnitude", "--sparsity", "0.5", "--name", "tiny-p",
        "--calibration-samples", "4", "--eval-windows", "2", registry=home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return home


@pytest.fixture(scope="session")
def damaged_model(tiny_registry, tmp_path_factory) -> Path:
    """The tiny model with seeded noise twice as large as each weight matrix's own spread
    added to it (embeddings and head too): a candidate whose quality is plainly lost."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.registry.embedded import EmbeddedRegistry

    source = EmbeddedRegistry(tiny_registry).path_of("tiny")
    out = tmp_path_factory.mktemp("damaged") / "tiny-damaged"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=noise) * 2 * param.std())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory, tiny_registry):
    """Three small engines for the whole session (gateway, metrics, dashboards):
    tiny-a and tiny-b serve the tiny model; tiny-p, its pruned variant, is started by
    `sparsegate engine` as engine containers start it (expanding its sparse-at-rest files)."""
    import signal

    import httpx

    from app.engines.vllm_process import shared_host_environment
    from app.registry.embedded import EmbeddedRegistry

    registry = EmbeddedRegistry(tiny_registry)
    logs = tmp_path_factory.mktemp("tiny-engine-logs")
    starter = EngineStarter(logs)
    port = free_port()
    with (logs / "tiny-p.log").open("wb") as log:
        pruned = subprocess.Popen(
            [str(SPARSEGATE), "engine", "tiny-p", "--port", str(port), "--max-model-len", "1024",
             "--kv-cache-gib", "1", "--registry", str(tiny_registry)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **shared_host_environment(4)},
        )  # fmt: skip
    try:
        urls = starter({"tiny-a": registry.path_of("tiny"), "tiny-b": registry.path_of("tiny")})
        urls["tiny-p"] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            assert pruned.poll() is None, (logs / "tiny-p.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "sparsegate engine tiny-p did not start"
            try:
                if httpx.get(f"{urls['tiny-p']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        yield urls
    finally:
        starter.stop()
        os.killpg(pruned.pid, signal.SIGTERM)
        pruned.wait(30)


@pytest.fixture(scope="session")
def start_gateway(tmp_path_factory):
    """start_gateway(deployment dict, *serve args) -> URL of a running `sparsegate serve`."""
    import httpx
    import yaml

    procs: list[subprocess.Popen] = []
    tmp = tmp_path_factory.mktemp("gateways")

    def start(deployment: dict, *args: str) -> str:
        gateway = deployment.setdefault("gateway", {})
        if not gateway.get("api_keys_sha256") and not gateway.get("api_keys_file"):
            gateway.setdefault("open", True)  # a keyless gateway must say so
        port = free_port()
        config = tmp / f"deploy-{port}.yaml"
        config.write_text(yaml.safe_dump(deployment))
        log = tmp / f"gateway-{port}.log"  # a file, not a pipe nobody reads: that would fill
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(SPARSEGATE), "serve", "--config", str(config), "--port", str(port), *args],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        start.logs[url] = log
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("gateway did not start")

    start.logs = {}  # url -> the gateway's log file
    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Wait on a condition (never on a sleep standing in for one)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met in {timeout:.0f} s"
        time.sleep(0.2)


def metric(url: str, name: str, *, headers: dict | None = None, **labels: str) -> float:
    """Sum of a metric's samples at url/metrics whose labels include `labels` (`headers`:
    a keyed gateway's Authorization)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers=headers).raise_for_status().text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture(scope="session")
def shared_servers():
    """PostgreSQL and an S3 server for the shared registry, started once per session."""
    from tests.servers import Postgres, SeaweedS3

    pg = Postgres()
    try:
        s3 = SeaweedS3()
    except BaseException:
        pg.stop()
        raise
    yield pg, s3
    s3.stop()
    pg.stop()


@pytest.fixture(scope="session")
def redis_server():
    """Debian's redis-server, started once per session in its own process group."""
    from tests.servers import Redis

    server = Redis()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "shared"])
def backend(request, monkeypatch):
    """Which registry back end `open_registry` gives, set through the environment as a user
    would (subprocesses inherit it): a fresh database and bucket prefix per test."""
    for key in ("SPARSEGATE_REGISTRY_URL", "SPARSEGATE_ARTIFACTS"):
        monkeypatch.delenv(key, raising=False)
    if request.param == "shared":
        pg, s3 = request.getfixturevalue("shared_servers")
        monkeypatch.setenv("SPARSEGATE_REGISTRY_URL", pg.url(pg.new_database()))
        monkeypatch.setenv("SPARSEGATE_ARTIFACTS", f"s3://sparsegate-test/{uuid.uuid4().hex[:8]}")
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
    return request.param


@pytest.fixture
def spawning_serve(tiny_registry, tmp_path):
    """start(*serve args) -> (process, gateway url): `sparsegate serve` spawning one tiny
    engine, in its own session (stopped by its group if a test leaves it running)."""
    procs = []

    def start(*args: str):
        config = tmp_path / "spawn.yaml"
        deployment = {
            "gateway": {"open": True},
            "variants": {"tiny": {"spawn": {"port": free_port(), "max_model_len": 512}}},
        }
        import yaml

        config.write_text(yaml.safe_dump(deployment))
        port = free_port()
        log = (tmp_path / "serve.log").open("ab")
        proc = subprocess.Popen(
            [str(SPARSEGATE), "serve", "--config", str(config), "--port", str(port),
             "--registry", str(tiny_registry), *args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SPARSEGATE_VENVS": str(VENVS)},
        )  # fmt: skip
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:  # a failed test must not leave its serve behind either
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
