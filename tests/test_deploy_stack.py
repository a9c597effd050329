"""The deployment, run for real: build the images, bring up the compose stack's `cpu`
profile (with deploy/compose/ci.yml's shorter compress job), use it as a user does through
the gateway container and Prometheus, read the bench service's result, tear it all down.

Docker where its daemon runs, podman otherwise (scripts/system-deps.sh installs podman,
buildah, runc and mmdebstrap): docker-compose talks to podman's Docker-compatible service
(scripts/podman-service.sh). Each step's time is printed. The images start building when
the session's tests are collected (tests/image_build.py; about 7 minutes here the first
time, later runs reuse their layers). SPARSEGATE_SKIP_STACK=1 skips it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import IMAGE_BUILD, wait_for

ROOT = Path(__file__).resolve().parent.parent
FILES = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "deploy/compose/ci.yml")]
SERVICES = ["engine-dense", "gateway", "prometheus", "bench"]
# Caps on waiting for a condition (a start that never ends fails the test with the
# container's log, it never makes the test pass): generous for a loaded 2-core machine.
ENGINE_START_S = 1200
BENCH_S = 900

pytestmark = pytest.mark.skipif(
    os.environ.get("SPARSEGATE_SKIP_STACK") == "1", reason="SPARSEGATE_SKIP_STACK=1"
)


class Stack:
    """One compose project and the container engine behind it."""

    def __init__(self, tmp: Path, capture) -> None:
        probe = subprocess.run(
            ["bash", "-c", "source scripts/container-engine.sh && "
             'echo "$ENGINE ${CONTAINERS_CONF:-}"'],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        self.engine, *conf = probe.stdout.split()
        self.env = dict(os.environ)
        if conf:
            self.env["CONTAINERS_CONF"] = conf[0]
        self.state = tmp / "podman"
        self.project = f"sgstack{os.getpid()}"
        self.ports = {"gateway": _free_port(), "prometheus": _free_port()}
        self.env |= {
            "SPARSEGATE_GATEWAY_PORT": str(self.ports["gateway"]),
            "SPARSEGATE_PROMETHEUS_PORT": str(self.ports["prometheus"]),
            "COMPOSE_PROJECT_NAME": self.project,
        }
        self.capture = capture

    def say(self, text: str) -> None:
        """Into the test log even when the test passes (CI shows what the stack did)."""
        with self.capture.global_and_fixture_disabled():
            print(text, flush=True)

    def step(self, name: str, started: float) -> None:
        self.say(f"deploy stack: {name:<44} {time.monotonic() - started:7.1f} s")

    def run(self, *argv: str, timeout: float = 600, check: bool = True) -> str:
        proc = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} failed:\n{proc.stdout[-3000:]}"
                                 f"\n{proc.stderr[-3000:]}")  # fmt: skip
        return proc.stdout

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return self.run("docker-compose", *FILES, "--profile", "cpu", *args,
                        timeout=timeout, check=check)  # fmt: skip

    def start_service(self) -> None:
        """podman: its Docker API service and health-check runner, for docker-compose."""
        if self.engine != "podman":
            return
        out = subprocess.run(
            ["scripts/podman-service.sh", "start"], cwd=ROOT, capture_output=True, text=True,
            env=self.env | {"STATE": str(self.state)}, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        for assignment in out.stdout.split()[1:]:  # export DOCKER_HOST=... [CONTAINERS_CONF=...]
            key, _, value = assignment.partition("=")
            self.env[key] = value

    def stop_service(self) -> None:
        if self.engine == "podman":
            subprocess.run(["scripts/podman-service.sh", "stop"], cwd=ROOT, timeout=60,
                           env=self.env | {"STATE": str(self.state)})  # fmt: skip

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-a", "-q", service).split()
        assert ids, f"no container for {service}"
        return ids[0]

    def state_of(self, container: str) -> dict:
        """The container's State, with its RestartCount."""
        (info,) = json.loads(self.run(self.engine, "inspect", container))
        return info["State"] | {"RestartCount": info.get("RestartCount", 0)}

    def logs(self, container: str, lines: int = 40) -> str:
        proc = subprocess.run([self.engine, "logs", "--tail", str(lines), container], env=self.env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        return proc.stdout + proc.stderr

    def wait_healthy(self, service: str, cap_s: float, container: str = "") -> None:
        """Until the service's container (or the one named) is healthy; fails with its last
        log lines if it stops or never gets there."""
        container = container or self.container(service)
        deadline = time.monotonic() + cap_s
        while time.monotonic() < deadline:
            state = self.state_of(container)
            health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status")
            if health == "healthy":
                return
            # (an engine that failed is restarted by its policy: one restart is a failure)
            if state.get("Status") in ("exited", "dead") or state["RestartCount"]:
                pytest.fail(
                    f"{service} stopped (exit {state.get('ExitCode')}, "
                    f"{state['RestartCount']} restart(s)):\n{self.logs(container)}"
                )
            time.sleep(2)
        pytest.fail(f"{service} not healthy after {cap_s:.0f} s:\n{self.logs(container)}")

    def wait_exit(self, service: str, cap_s: float) -> int:
        out = self.run(self.engine, "wait", self.container(service), timeout=cap_s)
        return int(out.split()[-1])

    def down(self) -> None:
        started = time.monotonic()
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20",
                     timeout=300, check=False)  # fmt: skip
        self.stop_service()
        self.prune()
        self.step("tear down, prune our old images", started)

    def prune(self) -> None:
        """Old sparsegate images a rebuild left untagged (scripts/images.sh labels each
        image it builds), and nothing else of the host's: not its other images, not its
        build cache (Docker's builder prune cannot tell ours apart)."""
        self.run(self.engine, "image", "prune", "-f", "--filter", f"label={IMAGE_LABEL}",
                 timeout=300, check=False)  # fmt: skip


IMAGE_LABEL = "io.sparsegate.image"  # as scripts/images.sh labels what it builds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request) -> Iterator[Stack]:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    stack = Stack(tmp_path_factory.mktemp("stack"), capture)
    started = time.monotonic()
    # Started when the session's tests were collected (tests/image_build.py).
    code, out, err = request.config.stash[IMAGE_BUILD].wait(timeout=3600)
    stack.say("\n" + out.rstrip())
    assert code == 0, out[-2000:] + err[-4000:]
    stack.step("images built (waited for the background build)", started)
    stack.start_service()
    try:
        started = time.monotonic()
        # Blocks until the compress service has completed and the gateway is healthy.
        up = stack.compose("up", "-d", "--no-build", *SERVICES, timeout=2400, check=False)
        compress = stack.container("compress")
        if "didn't complete successfully" in up or stack.state_of(compress)["ExitCode"]:
            pytest.fail(f"the compress service failed:\n{stack.logs(compress)}")
        stack.step("compress done, gateway healthy (compose up)", started)
        started = time.monotonic()
        stack.wait_healthy("engine-dense", ENGINE_START_S)
        stack.step("engine healthy", started)
        # The gateway came up before the engine and has been reading its metrics since: wait
        # until the gateway itself reaches the engine (name resolved, /health answered), as
        # its /ready reports, before the first request goes through it.
        wait_for(lambda: _gateway_sees(stack, "gemma-3-270m"), timeout=ENGINE_START_S,
                 what="the gateway reaching engine-dense")  # fmt: skip
        stack.step("gateway reaches the engine", started)
        failed_before = request.session.testsfailed
        yield stack
        if request.session.testsfailed > failed_before:  # what the engine said, for the log
            engine = stack.container("engine-dense")
            stack.say("engine-dense's last lines:\n" + stack.logs(engine, 80))
    finally:
        stack.down()


def _gateway_sees(stack: Stack, variant: str) -> bool:
    url = f"http://127.0.0.1:{stack.ports['gateway']}/ready"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return bool(json.loads(r.read())["engines"].get(variant))
    except urllib.error.HTTPError as e:  # 503 while an engine is not ready: still a report
        return bool(json.loads(e.read())["engines"].get(variant))
    except (OSError, ValueError, KeyError):
        return False


def _user_key(stack: Stack) -> str:
    """The key the `keys` service printed on the first run, as a user reads it."""
    log = stack.logs(stack.container("keys"))
    assert log.count("stored nowhere): ") == 1, log
    return log.split("stored nowhere): ")[1].split()[0]


def _client(stack: Stack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.ports['gateway']}/v1",
                         api_key=key or _user_key(stack), max_retries=0, timeout=120)  # fmt: skip


def _reaches(stack: Stack, host: str, *python: str) -> bool:
    """Whether `python` (a run or exec command line up to python3) reaches an engine's
    /health at `host` (its name or its address)."""
    probe = ("import urllib.request as u, sys\ntry:\n"
             " u.urlopen(f'http://{sys.argv[1]}:8000/health', timeout=10); print('reached')\n"
             "except Exception as e: print('refused', e)")  # fmt: skip
    out = stack.run(stack.engine, *python, "-c", probe, host, timeout=120)
    return out.startswith("reached")


def _address(stack: Stack, service: str) -> str:
    (info,) = json.loads(stack.run(stack.engine, "inspect", stack.container(service)))
    networks = info["NetworkSettings"]["Networks"]
    return networks[f"{stack.project}_engines"]["IPAddress"]


def test_the_stack_is_closed_by_default(stack):
    """Keys made on the first run; nothing answers without one; only the gateway (and
    Prometheus) reach an engine: another container on the stack's network does not."""
    started = time.monotonic()
    with pytest.raises(openai.AuthenticationError):
        _client(stack, "sg-not-a-key").completions.create(model="gemma", prompt="x", max_tokens=1)
    url = f"http://127.0.0.1:{stack.ports['gateway']}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    engine = _address(stack, "engine-dense")
    for host in ("engine-dense", engine):
        assert _reaches(stack, host, "exec", stack.container("gateway"), "python3")
    outsider = ["run", "--rm", "--network", f"{stack.project}_default", "--entrypoint",
                "python3", "sparsegate-gateway:latest"]  # fmt: skip
    for host in ("engine-dense", engine):  # neither by name nor by address
        assert not _reaches(stack, host, *outsider), host
    stack.step("closed: keys required, engines reached by the gateway only", started)


def test_images_hold_exactly_the_locked_versions(stack):
    """Two builds install the same versions: what the lock pins, no more, no less."""
    for image, lock in (("gateway", "gateway"), ("engine-cpu", "engine-cpu")):
        frozen = stack.run(stack.engine, "run", "--rm", "--entrypoint", "pip",
                           f"sparsegate-{image}:latest", "freeze", "--all")  # fmt: skip
        installed = {_norm(line.split("==")[0]): line.split("==")[1]
                     for line in frozen.splitlines() if "==" in line}  # fmt: skip
        installed.pop("sparsegate", None)
        installed.pop("pip", None)  # the venv's own
        text = (ROOT / "deploy" / "lock" / f"{lock}.txt").read_text()
        pinned = {_norm(m[0]): m[1] for m in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}
        assert installed == pinned, set(installed.items()) ^ set(pinned.items())
    stack.say(f"deploy stack: images hold their locks ({len(pinned)} packages in {lock})")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_openai_client_through_the_gateway_container(stack):
    started = time.monotonic()
    client = _client(stack)
    completion = client.completions.create(
        model="gemma", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert completion.choices[0].text.strip()
    assert completion.model == "gemma-3-270m"  # the alias routed to the dense variant
    chunks = list(client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True},
    ))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
    stack.say(f"deploy stack: openai client, completion from {completion.model}: "
              f"{completion.choices[0].text!r}; streamed chat: {text!r}, "
              f"usage {chunks[-1].usage.model_dump()}")  # fmt: skip
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert missing.value.body["type"] == "not_found_error"
    assert "no-such-model" in missing.value.body["message"]
    stack.step("openai client: completion, streamed chat, 404", started)


def _query(stack: Stack, promql: str) -> list[dict]:
    url = (f"http://127.0.0.1:{stack.ports['prometheus']}/api/v1/query?"
           + urllib.parse.urlencode({"query": promql}))  # fmt: skip
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_in_the_stack_scrapes_gateway_and_engine(stack):
    started = time.monotonic()
    _client(stack).completions.create(model="gemma-3-270m", prompt="Hi", max_tokens=4)
    stack.wait_healthy("prometheus", 300)
    queries = {
        "gateway": 'sum(sparsegate_requests_total{variant="gemma-3-270m"})',
        "engine": 'sum(vllm:generation_tokens_total{model_name="gemma-3-270m"})',
    }
    deadline = time.monotonic() + 120  # a few scrape intervals (5 s) on a busy machine
    found: dict[str, float] = {}
    while time.monotonic() < deadline and len(found) < len(queries):
        for name, promql in queries.items():
            result = _query(stack, promql)
            if result and float(result[0]["value"][1]) > 0:
                found[name] = float(result[0]["value"][1])
        time.sleep(2)
    assert set(found) == set(queries), (found, _query(stack, "up"))
    up = {r["metric"]["instance"]: r["value"][1] for r in _query(stack, "up")}
    assert up["gateway:8080"] == "1" and up["engine-dense:8000"] == "1", up
    stack.say(f"deploy stack: prometheus answered {found}")
    stack.step("prometheus query inside the stack", started)


def test_bench_service_writes_its_result(stack, tmp_path):
    started = time.monotonic()
    code = stack.wait_exit("bench", BENCH_S)
    assert code == 0, stack.logs(stack.container("bench"))
    stack.run(stack.engine, "cp", f"{stack.container('bench')}:/models/bench.json",
              str(tmp_path / "bench.json"))  # fmt: skip
    (row,) = json.loads((tmp_path / "bench.json").read_text())["results"]
    figures = ("variant", "requests", "errors", "output_tokens_per_s", "tpot_mean_s",
               "dollars_per_million_bytes")  # fmt: skip
    stack.say("deploy stack: bench result " + json.dumps({k: row[k] for k in figures}))
    assert row["variant"] == "gemma-3-270m" and row["requests"] == 8
    assert row["errors"] == 0, row["first_error"]
    assert row["output_tokens"] > 0
    stack.step("bench service result", started)


def test_an_engine_that_cannot_start_fails_the_wait_with_its_log(stack):
    """What the stack's checks do when an engine never comes up: they fail at once, with
    the container's last log lines, not after the start-up allowance."""
    started = time.monotonic()
    broken = stack.run(
        stack.engine, "run", "-d", "--network", f"{stack.project}_default",
        "-v", f"{stack.project}_models:/models", "sparsegate-engine-cpu:latest", "no-such-variant",
    ).split()[-1]  # fmt: skip
    try:
        with pytest.raises(pytest.fail.Exception) as failed:
            stack.wait_healthy("engine-dense (no-such-variant)", ENGINE_START_S, container=broken)
    finally:
        stack.run(stack.engine, "rm", "-f", broken, check=False)
    assert "stopped" in str(failed.value)
    assert "no-such-variant" in str(failed.value)  # the engine's own error line
    stack.step("an engine that cannot start is reported", started)


def test_a_build_without_its_base_image_says_what_is_missing(stack):
    proc = subprocess.run(["scripts/images.sh"], cwd=ROOT, capture_output=True, text=True,
                          env=stack.env | {"SPARSEGATE_BASE_IMAGE": "localhost/no-such-base:1"},
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "localhost/no-such-base:1" in line and "scripts/base-image.sh" in line


def test_teardown_prunes_only_the_images_this_project_built(stack, tmp_path):
    """A dangling image of the host's survives the teardown's prune; an old one of ours
    (labelled as scripts/images.sh labels them) goes."""
    (tmp_path / "f").write_text("x")
    built: list[str] = []

    def build(n: int, *label: str) -> str:
        (tmp_path / "Containerfile").write_text(f"FROM scratch\nCOPY f /f{n}\n")
        out = stack.run(stack.engine, "build", "-q", *label, "-t", "sparsegate-prune-probe",
                        str(tmp_path), timeout=120)  # fmt: skip
        built.append(out.split()[-1])
        return built[-1]

    try:
        theirs = build(1)  # untagged by the next build of the same tag: dangling
        ours = build(2, "--label", f"{IMAGE_LABEL}=probe")
        build(3, "--label", f"{IMAGE_LABEL}=probe")
        stack.prune()
        assert stack.run(stack.engine, "image", "inspect", theirs, check=False).strip("[] \n")
        assert not stack.run(stack.engine, "image", "inspect", ours, check=False).strip("[] \n")
    finally:
        for image in built:
            stack.run(stack.engine, "rmi", "-f", image, check=False)
