"""Deploy files checked without a Docker engine or a cluster: compose validates, the
Dockerfile lints clean, Kubernetes manifests validate against their schemas, and every
container runs a command the test suite runs (and that the CLI or vLLM itself accepts)."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from app.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.prefix) / "bin"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
SPARSEGATE_IMAGES = ("sparsegate-",)


def _manifests() -> list[Path]:
    """Kubernetes' own kinds (Argo's AnalysisTemplate is checked apart: no CRD offline)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"
                  and p.parent.name not in ("config", "argo"))  # fmt: skip


def _dockerfile_stages() -> dict[str, str]:
    """The Dockerfile's image stages (after `base` and the shared `torch` layer), by name."""
    text = (ROOT / "Dockerfile").read_text()
    stages = {}
    for stage in re.split(r"^FROM ", text, flags=re.M)[1:]:
        name = stage.split()[2]
        if name not in ("inputs", "base", "torch"):
            stages[name] = stage
    return stages


@pytest.mark.parametrize("registry", ["embedded", "shared"])
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_file_validates(profile, registry):
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: scripts/system-deps.sh installs it"
    files = ["-f", str(COMPOSE)]
    if registry == "shared":
        files += ["-f", str(ROOT / "deploy" / "compose" / "shared.yml")]
    proc = subprocess.run(
        [compose, *files, "--profile", profile, "config"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    ours = [n for n, s in services.items() if s.get("image", "").startswith("sparsegate-")]
    for name in set(ours) - {"bench", "prometheus", "keys"}:  # (none reads the registry)
        env = services[name].get("environment") or {}
        assert ("SPARSEGATE_REGISTRY_URL" in env) == (registry == "shared"), name
    if registry == "shared":
        needs = services["compress"]["depends_on"]
        assert (
            needs["registry-db"]["condition"]
            == needs["objects"]["condition"]
            == ("service_healthy")
        )
        # only the job writes: the gateway and the engines hold read-only credentials
        writer = services["compress"]["environment"]
        for name in [n for n in ours if n == "gateway" or n.startswith("engine-")]:
            env = services[name]["environment"]
            assert env["SPARSEGATE_REGISTRY_URL"].startswith("postgresql://sparsegate_reader:")
            assert env["AWS_ACCESS_KEY_ID"] != writer["AWS_ACCESS_KEY_ID"], name
    _closed_by_default(services, yaml.safe_load(proc.stdout)["networks"])


def _closed_by_default(services: dict, networks: dict) -> None:
    """Published ports on 127.0.0.1 only; engines on an internal network that only the
    gateway, Prometheus and the registry's servers join; the gateway requires keys."""
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert networks["engines"]["internal"] is True
    engines = [n for n in services if n.startswith("engine-")]
    for name in engines:
        assert list(services[name]["networks"]) == ["engines"], name
    members = {n for n, s in services.items() if "engines" in (s.get("networks") or {})}
    assert members - set(engines) <= {"gateway", "prometheus", "registry-db", "objects"}
    assert services["keys"]["command"][:2] == ["keys", "init"]
    for name in ("gateway", "prometheus"):
        assert services[name]["depends_on"]["keys"]["condition"] == "service_completed_successfully"


def test_compose_profiles_hold_the_whole_stack():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for profile in ("cpu", "gpu"):
        active = {n for n, s in services.items() if profile in s.get("profiles", [profile])}
        assert {"compress", "gateway", "bench", "prometheus", "grafana"} <= active
        engines = [n for n in active if n.startswith("engine-")]
        assert len(engines) == 3, engines
    gpu = [s for s in services.values() if "gpu" in s.get("profiles", []) and "vllm" in
           s.get("image", "")]  # fmt: skip
    for service in gpu:
        assert "FLASH_ATTN" in service["command"] and "--block-size" in service["command"]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfile_lints_clean():
    proc = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_images_run_as_non_root_with_health_checks():
    stages = _dockerfile_stages()
    assert set(stages) == {"compress", "engine-cpu", "gateway", "prometheus"}
    for name, stage in stages.items():
        user = re.search(r"^USER (\S+)$", stage, flags=re.M)
        assert user and user.group(1) not in ("root", "0"), name
    for role in ("engine-cpu", "gateway", "prometheus"):
        check = re.search(r"^\s+CMD (\[.*\])$", stages[role], flags=re.M)
        assert "HEALTHCHECK" in stages[role] and check, role
        # podman 4.3 splits a check's arguments on spaces: none may hold one
        assert not any(" " in arg for arg in yaml.safe_load(check.group(1))), role


def test_dockerfile_installs_requirements_before_the_code():
    """A code change must not reinstall torch and vLLM: every stage's dependency layer
    comes before `COPY app`, and nothing host-specific is baked in."""
    text = (ROOT / "Dockerfile").read_text()
    for name, stage in _dockerfile_stages().items():
        if name == "prometheus":
            continue
        lock = f"pip install --require-hashes --no-deps -r /opt/build/{name}.txt"
        assert f"COPY deploy/lock/{name}.txt" in stage and lock in stage, name
        assert stage.index(lock) < stage.index("COPY app ./app"), name
    assert "/opt/wheels" not in text and "ca-certificates/" not in text
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, flags=re.M)


def test_every_compose_service_that_stays_up_has_a_healthcheck_podman_can_run():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, s in services.items():
        if s.get("restart") == "no":  # one-shot jobs: their exit is the condition
            continue
        test = s.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
        if test[0] == "CMD":
            assert not any(" " in arg for arg in test[1:]), (name, test)
        if name.startswith("engine-"):
            assert s.get("shm_size"), name


def test_kubernetes_manifests_validate_against_their_schemas():
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.33.0",
         *map(str, _manifests())],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / f).is_file() for f in listed)


# -- every container runs a command the test suite runs -----------------------------------


def _container_commands() -> list[tuple[str, str, list[str]]]:
    """(where, image, argv) for every container: compose services, Dockerfile defaults and
    Kubernetes pods; `sh -c` chains are split into their commands."""
    out = []
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, s in services.items():
        image = s.get("image", "")
        if "prometheus" in image:
            continue  # Debian's Prometheus with its own arguments
        entry = s.get("entrypoint") or (["sparsegate"] if "sparsegate-" in image else [])
        if "engine-cpu" in image and not s.get("entrypoint"):
            entry = ["sparsegate", "engine"]
        argv = [*entry, *s.get("command", [])]
        if argv:  # images that run their own default (Prometheus, Grafana) have none
            out += [(f"compose {name}", image, a) for a in _split(argv)]
    for path in _manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                entry = c.get("command") or (
                    ["sparsegate", "engine"] if "engine-cpu" in c["image"]
                    else ["sparsegate"] if "sparsegate-" in c["image"] else []
                )  # fmt: skip
                if not [*entry, *c.get("args", [])]:
                    continue  # an image that runs its own default (PostgreSQL)
                for argv in _split([*entry, *c.get("args", [])]):
                    out.append((f"{path.name} {c['name']}", c["image"], argv))
    for name, stage in _dockerfile_stages().items():
        entry = re.search(r"^ENTRYPOINT (\[.*\])$", stage, flags=re.M)
        cmd = re.search(r"^CMD (\[.*\])$", stage, flags=re.M)
        argv = [*yaml.safe_load(entry.group(1)), *yaml.safe_load(cmd.group(1))]
        if argv[0] == "sparsegate":
            out.append((f"Dockerfile {name}", "sparsegate", argv))
    return out


def _split(argv: list[str]) -> list[list[str]]:
    if argv[:2] == ["sh", "-c"]:
        script = argv[2].replace("(", " ").replace(")", " ").replace(">/dev/null 2>&1", "")
        return [shlex.split(part) for part in re.split(r"&&|\|\|", script) if part.strip()]
    return [argv]


def _tested_subcommands() -> set[tuple[str, ...]]:
    """Sub-commands the tests run: run_cli("a", "b", ...) and `sparsegate serve/engine`."""
    found: set[tuple[str, ...]] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        src = path.read_text()
        for a, b in re.findall(r'run_cli\(\s*"([a-z-]+)"(?:,\s*"([a-z-]+)")?', src):
            found |= {(a,), (a, b)}
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    for a in re.findall(r'\[str\(SPARSEGATE\), "([a-z]+)"', conftest):
        found.add((a,))
    for a, b in re.findall(r'run_cli\(\s*"([a-z-]+)"(?:,\s*"([a-z-]+)")?', conftest):
        found.add((a, b) if b else (a,))
    return found


def test_every_container_runs_a_command_the_tests_run():
    cli = typer.main.get_command(app)
    tested = _tested_subcommands()
    commands = [c for c in _container_commands() if c[2][0] == "sparsegate"]
    assert len(commands) >= 12
    for where, _image, argv in commands:
        # The real CLI parses the container's arguments (no typo in an option survives).
        group = cli
        path: list[str] = []
        args = argv[1:]
        while hasattr(group, "commands"):  # a group (typer vendors its own click)
            path.append(args[0])
            group, args = group.commands[args[0]], args[1:]
        try:
            group.make_context(" ".join(path), list(args), resilient_parsing=False)
        except Exception as e:  # click's usage errors
            pytest.fail(f"{where}: {' '.join(argv)}: {getattr(e, 'format_message', e.__str__)()}")
        assert tuple(path) in tested, f"{where}: `sparsegate {' '.join(path)}` is not tested"


def test_gpu_engine_flags_are_accepted_by_vllm():
    """The official image runs `vllm serve`: its arguments go through vLLM's own parser."""
    gpu = [(w, argv) for w, image, argv in _container_commands() if "vllm-openai" in image]
    assert len(gpu) >= 5
    script = (
        "import json, sys\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "parser = make_arg_parser(FlexibleArgumentParser())\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    a = parser.parse_args(argv)\n"
        "    assert a.attention_backend == 'FLASH_ATTN', argv\n"
        "print('ok')\n"
    )
    import json

    proc = subprocess.run([sys.executable, "-c", script, json.dumps([a for _, a in gpu])],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_gateway_never_imports_torch():
    code = (
        "import sys, app.gateway.app, app.cli.main, app.bench.serve_bench\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm')]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _imported_modules(folder: Path) -> dict[str, set[str]]:
    """Every module each file under `folder` imports, at any depth (lazy imports too)."""
    import ast

    out = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize(
    ("folders", "forbidden"),
    [
        (("gateway", "engines", "metrics", "bench"), ("app.job",)),
        (("texts",), ("app.job", "app.gateway", "app.engines", "app.metrics", "app.bench",
                      "torch")),
        (("tenants",), ("app.job", "app.gateway", "app.cli", "app.engines", "torch")),
    ],
)  # fmt: skip
def test_layers_import_only_what_lies_below_them(folders, forbidden):
    """The serving side never reaches into the offline job; the shared texts and bits-per-byte
    arithmetic import none of the layers that use them (nor torch)."""
    found = []
    for folder in folders:
        for path, names in _imported_modules(ROOT / "app" / folder).items():
            found += [(path, n) for n in names if n.split(".")[0] in forbidden
                      or any(n == f or n.startswith(f + ".") for f in forbidden)]  # fmt: skip
    assert not found


def test_grafana_dashboards_are_built_from_their_script():
    """The committed JSON is what deploy/grafana/build_dashboard.py writes (no drift)."""
    import importlib.util
    import json

    path = ROOT / "deploy" / "grafana" / "build_dashboard.py"
    spec = importlib.util.spec_from_file_location("build_dashboard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, build in module.DASHBOARDS.items():
        assert json.loads((ROOT / "deploy/grafana/dashboards" / name).read_text()) == build()
    committed = module.dashboard()
    titles = [p["title"] for p in committed["panels"]]
    assert len(titles) == len(set(titles)) >= 20


CONTAINERS_DEPLOYMENT = K8S / "config" / "sparsegate.yaml"


def _shipped_deployments() -> dict[str, str]:
    """Every gateway deployment file the repository ships, by where it lives."""
    files = {str(p.relative_to(ROOT)): p.read_text()
             for p in (ROOT / "deploy" / "sparsegate.yaml", CONTAINERS_DEPLOYMENT)}  # fmt: skip
    for manifest in _manifests():
        for doc in yaml.safe_load_all(manifest.read_text()):
            if doc and doc.get("kind") == "ConfigMap" and "sparsegate.yaml" in doc["data"]:
                files[f"{manifest.relative_to(ROOT)} (ConfigMap)"] = doc["data"]["sparsegate.yaml"]
    return files


def test_compose_and_kubernetes_read_one_deployment_file():
    """One copy: compose mounts it, kustomize makes the gateway's ConfigMap from it, and
    the local (spawning) file keeps its gateway settings and alias names."""
    assert len(_shipped_deployments()) == 2  # no ConfigMap written out by hand
    gateway = yaml.safe_load(COMPOSE.read_text())["services"]["gateway"]
    mounts = [v.split(":") for v in gateway["volumes"]]
    assert [f"./{CONTAINERS_DEPLOYMENT.relative_to(ROOT)}", "/etc/sparsegate/sparsegate.yaml",
            "ro"] in mounts  # fmt: skip
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (generated,) = [g for g in kustomization["configMapGenerator"]
                    if g["name"] == "sparsegate-deployment"]  # fmt: skip
    assert (K8S / generated["files"][0]).resolve() == CONTAINERS_DEPLOYMENT
    pod = yaml.safe_load_all((K8S / "gateway.yaml").read_text())
    volumes = next(d for d in pod if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert {"name": "config", "configMap": {"name": generated["name"]}} in volumes["volumes"]
    containers = yaml.safe_load(CONTAINERS_DEPLOYMENT.read_text())
    local = yaml.safe_load((ROOT / "deploy" / "sparsegate.yaml").read_text())
    keys = ("open", "api_keys_file", "api_keys_sha256")
    assert {k: v for k, v in local["gateway"].items() if k not in keys} == {
        k: v for k, v in containers["gateway"].items() if k not in keys
    }
    assert set(local["aliases"]) == set(containers["aliases"])


def test_every_shipped_deployment_file_passes_the_strict_loader(tmp_path):
    from app.gateway.config import load_deployment

    shipped = _shipped_deployments()
    assert len(shipped) == 2
    made = subprocess.run([str(BIN / "sparsegate"), "keys", "init", str(tmp_path / "keys")],
                          capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    for where, text in shipped.items():
        data = yaml.safe_load(text)
        if "api_keys_file" in data["gateway"]:  # where compose and Kubernetes mount the keys
            assert data["gateway"]["api_keys_file"] == "/var/lib/sparsegate/keys/api_keys_sha256"
            data["gateway"]["api_keys_file"] = str(tmp_path / "keys" / "api_keys_sha256")
        path = tmp_path / "deploy.yaml"
        path.write_text(yaml.safe_dump(data))
        deployment = load_deployment(path)  # raises on any unknown or missing key
        # Only the one-machine demo (`make demo`, on 127.0.0.1) is open.
        assert deployment.gateway.open == (where == "deploy/sparsegate.yaml"), where
        assert deployment.gateway.open or deployment.gateway.key_scopes, where
        assert "gemma" in deployment.aliases, where


def test_kubernetes_uses_the_shared_registry_and_no_shared_volume():
    docs = [d for p in _manifests() for d in yaml.safe_load_all(p.read_text()) if d]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    for secret in (secrets["sparsegate-registry"], secrets["sparsegate-registry-read"]):
        assert {"SPARSEGATE_REGISTRY_URL", "SPARSEGATE_ARTIFACTS", "AWS_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret)  # fmt: skip
        assert secret["SPARSEGATE_ARTIFACTS"].startswith("s3://")
    read = secrets["sparsegate-registry-read"]["SPARSEGATE_REGISTRY_URL"]
    assert read.startswith("postgresql://sparsegate_reader:")
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    claims += [c for d in docs for c in d.get("spec", {}).get("volumeClaimTemplates", [])]
    assert all("ReadWriteMany" not in c["spec"]["accessModes"] for c in claims)
    for doc in docs:
        pod = (doc.get("spec") or {}).get("template", {}).get("spec", {})
        for volume in pod.get("volumes", []):
            assert "persistentVolumeClaim" not in volume, (doc["metadata"]["name"], volume)
        containers = pod.get("initContainers", []) + pod.get("containers", [])
        for c in containers:
            if c["image"].startswith("sparsegate-") and c["name"] != "keys":
                # only the job that publishes and the rollout controller (state, promotion)
                # get the credentials that write
                writes = doc["metadata"]["name"] in ("sparsegate-compress", "rollout-controller")
                secret = "sparsegate-registry" if writes else "sparsegate-registry-read"
                assert [{"secretRef": {"name": secret}}] == c.get("envFrom"), c["name"]
        engines = [c for c in pod.get("containers", []) if c["name"] == "engine"]
        if engines:  # every engine pod fetches its variant before the engine starts
            fetch = [c for c in pod.get("initContainers", []) if c["name"] == "fetch"]
            assert fetch and fetch[0]["args"][:2] == ["models", "path"]
            served = fetch[0]["args"][2]
            args = engines[0].get("args", [])
            assert served in args[0], (args, served)  # the variant it fetched, or its link


def test_kubernetes_is_closed_by_default():
    """Keys made by a Job that may only create Secrets; the gateway reads their digests
    and nothing else of them; engines and the database take traffic only from their
    clients; no pod but the keys Job holds a Kubernetes API token."""
    docs = [d for p in _manifests() for d in yaml.safe_load_all(p.read_text()) if d]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    (job,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "sparsegate-keys"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["keys", "init", "--kubernetes-secret", "sparsegate-api-keys"]
    gateway = next(d for d in docs if d["metadata"]["name"] == "gateway")
    (keys,) = [v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys"]
    assert keys["secret"]["items"] == [{"key": "api_keys_sha256", "path": "api_keys_sha256"}]
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    (engines,) = policies["engines-from-gateway"]["ingress"]
    assert engines["from"][0] == {"podSelector": {"matchLabels": {"app": "sparsegate-gateway"}}}
    assert policies["engines-from-gateway"]["podSelector"]["matchLabels"] == {
        "app": "sparsegate-engine"
    }
    for doc in docs:
        pod = (doc.get("spec") or {}).get("template", {}).get("spec", {})
        if doc["kind"] in ("Deployment", "Job") and doc["metadata"]["name"] != "sparsegate-keys":
            assert pod.get("automountServiceAccountToken") is False, doc["metadata"]["name"]


def _locked(image: str) -> dict[str, tuple[str, int]]:
    """package -> (version, number of hashes) in deploy/lock/<image>.txt."""
    text = (ROOT / "deploy" / "lock" / f"{image}.txt").read_text()
    found = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):
        head = entry.split()[0]
        name, _, version = head.partition("==")
        found[re.sub(r"[-_.]+", "-", name).lower()] = (version, entry.count("--hash=sha256:"))
    return found


def test_the_images_share_the_torch_both_locks_pin():
    """compress and engine-cpu build on one torch layer: deploy/lock/torch.txt holds the
    entry both their locks pin, hashes and all (`make lock` writes it)."""
    shared = _locked("torch")
    assert list(shared) == ["torch"] and shared["torch"][1] > 0
    assert _locked("compress")["torch"] == _locked("engine-cpu")["torch"] == shared["torch"]
    entry = (ROOT / "deploy" / "lock" / "torch.txt").read_text().split("\n", 2)[2]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for image in ("compress", "engine-cpu"):
        assert entry in (ROOT / "deploy" / "lock" / f"{image}.txt").read_text()  # the hash too
        assert re.search(rf"^FROM torch AS {image}$", dockerfile, re.M)


@pytest.mark.parametrize(
    "image, extras", [("gateway", ["gateway", "bench"]), ("engine-cpu", ["serve-cpu", "gateway"]),
                      ("compress", ["compress"])],
)  # fmt: skip
def test_each_image_lock_pins_what_pyproject_asks_with_hashes(image, extras):
    """The locks (`make lock`) hold every package at one version with its hashes, and
    still satisfy pyproject.toml: a requirement changed without a new lock fails here."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked(image)
    assert all(version and hashes for version, hashes in locked.values()), locked
    optional = project["optional-dependencies"]
    wanted = project["dependencies"] + [r for e in extras for r in optional[e]]
    for text in wanted:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in locked, f"{text} is not in deploy/lock/{image}.txt: run make lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"deploy/lock/{image}.txt has {name}=={version}, pyproject.toml asks {text}: "
            "run make lock"
        )
    assert "torchvision" not in locked  # beside the CPU torch it breaks transformers


ARGO_METRIC_FIELDS = {"name", "interval", "count", "successCondition", "failureCondition",
                      "failureLimit", "inconclusiveLimit", "consecutiveErrorLimit",
                      "initialDelay", "provider"}  # fmt: skip


def argo_queries(args: dict[str, str]) -> list[str]:
    """The Prometheus queries of the Argo AnalysisTemplate, its arguments filled in."""
    doc = yaml.safe_load((K8S / "argo" / "analysis-template.yaml").read_text())
    queries = [m["provider"]["prometheus"]["query"] for m in doc["spec"]["metrics"]]
    for name, value in args.items():
        queries = [q.replace("{{args." + name + "}}", value) for q in queries]
    return queries


def test_argo_analysis_template_has_the_fields_of_argo_crd_and_our_metric():
    """Argo Rollouts' CRD is not to be had offline: its fields, as its CRD names them, and
    every argument declared; the queries read the controller's gate gauge by its labels
    (tests/test_rollout_live.py runs them against a real Prometheus)."""
    from app.metrics.definitions import ROLLOUT_GATE_VERDICT

    doc = yaml.safe_load((K8S / "argo" / "analysis-template.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("argoproj.io/v1alpha1", "AnalysisTemplate")
    declared = {a["name"] for a in doc["spec"]["args"]}
    assert set(doc["spec"]) == {"args", "metrics"}
    for metric in doc["spec"]["metrics"]:
        assert set(metric) <= ARGO_METRIC_FIELDS and {"name", "provider"} <= set(metric)
        assert re.fullmatch(r"\d+[smh]", metric["interval"])
        prom = metric["provider"]["prometheus"]
        used = set(re.findall(r"\{\{args\.([\w-]+)\}\}", yaml.safe_dump(metric)))
        assert used <= declared and set(prom) == {"address", "query"}
        for condition in (metric["successCondition"], metric.get("failureCondition", "")):
            assert set(re.findall(r"[a-z]\w*", condition)) <= {"result"}
        assert ROLLOUT_GATE_VERDICT._name in prom["query"]
        labels = set(re.findall(r"(\w+)=\"", prom["query"]))
        assert labels <= set(ROLLOUT_GATE_VERDICT._labelnames)


# -- the main job's variants, defined once ----------------------------------------------


def _render(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "sparsegate"), "deploy", "render", *args],
                          capture_output=True, text=True, cwd=root)  # fmt: skip


def test_deploy_files_serve_what_the_main_jobs_definition_says():
    """Compose's engines and bench, Kubernetes' engines and both gateway files are rendered
    from deploy/variants.yaml (no drift), and both compress steps build from it."""
    from app.deploy.main_job import load

    assert _render(ROOT, "--check").returncode == 0, "run `sparsegate deploy render`"
    job = load(ROOT / "deploy" / "variants.yaml")
    engines = {job.engine_name(n): n for n in job.serve}
    assert len(engines) == len(job.serve) == 3 and "engine-dense" in engines
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for engine, name in engines.items():
        assert services[engine]["command"] == [name]
        assert services[f"{engine}-gpu"]["command"][0] == f"/models/serve/{name}"
    bench = services["bench"]["command"]
    assert bench[bench.index("--variants") + 1] == ",".join(job.serve)
    assert "./deploy/variants.yaml:/etc/sparsegate/variants.yaml:ro" in services["compress"][
        "volumes"]  # fmt: skip
    assert services["compress"]["command"][:3] == ["deploy", "build",
                                                   "/etc/sparsegate/variants.yaml"]  # fmt: skip
    docs = list(yaml.safe_load_all((K8S / "main-job.yaml").read_text()))
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["data"]["variants.yaml"] == (ROOT / "deploy" / "variants.yaml").read_text()
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
            if d["kind"] == "Deployment"}  # fmt: skip
    assert {n: p["containers"][0]["args"] for n, p in pods.items()} == {
        e: [n] for e, n in engines.items()}  # fmt: skip
    job_pod = yaml.safe_load((K8S / "compress-job.yaml").read_text())["spec"]["template"]["spec"]
    assert job_pod["containers"][0]["args"] == ["deploy", "build", "/etc/sparsegate/variants.yaml"]
    assert {"name": "variants", "configMap": {"name": "sparsegate-variants"}} in job_pod["volumes"]
    for path in (ROOT / "deploy" / "sparsegate.yaml", CONTAINERS_DEPLOYMENT):
        served = yaml.safe_load(path.read_text())
        assert list(served["variants"]) == job.serve, path
        for alias, spec in job.aliases.items():
            drop = ("quality_sample",)  # the demo's file scores more of its few requests
            assert {k: v for k, v in served["aliases"][alias].items() if k not in drop} == {
                k: v for k, v in spec.items() if k not in drop}, (path, alias)  # fmt: skip


def test_render_rewrites_the_files_after_the_definition_changes(tmp_path):
    rendered = ["docker-compose.yml", "deploy/compose/shared.yml", "deploy/sparsegate.yaml",
                "deploy/k8s/config/sparsegate.yaml", "deploy/k8s/main-job.yaml",
                "deploy/variants.yaml"]  # fmt: skip
    for rel in rendered:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    definition = tmp_path / "deploy" / "variants.yaml"
    data = yaml.safe_load(definition.read_text())
    data["serve"] = data["serve"][:2]
    data["aliases"].pop("gemma-ab")
    definition.write_text(yaml.safe_dump(data))

    check = _render(tmp_path, "--check")
    assert check.returncode == 1
    assert len(check.stdout.strip().splitlines()) == 5, check.stdout  # all but the definition
    assert _render(tmp_path).returncode == 0
    assert _render(tmp_path, "--check").returncode == 0
    services = yaml.safe_load((tmp_path / "docker-compose.yml").read_text())["services"]
    assert len([n for n in services if n.startswith("engine-")]) == 4  # 2 CPU, 2 GPU
    gateway = yaml.safe_load((tmp_path / "deploy" / "sparsegate.yaml").read_text())
    assert list(gateway["variants"]) == data["serve"] and list(gateway["aliases"]) == ["gemma"]

    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("# --- end of engines ---\n", ""))
    broken = _render(tmp_path)
    assert broken.returncode == 2 and "docker-compose.yml has no" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr
    elsewhere = _render(tmp_path / "deploy", "../deploy/variants.yaml")  # not the root
    assert elsewhere.returncode == 2 and "run from the repository's root" in elsewhere.stderr
