"""The main job's variants from their one definition, on the tiny model: `sparsegate deploy
build` (what the compose `compress` service and the Kubernetes Job run) and `sparsegate
demo` (what `make demo` runs) end to end with real vLLM engines."""

import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _definition(path: Path, **changes) -> Path:
    data = {
        "base": "tiny",
        "build": {
            "tiny-p": {"from": "tiny", "compress": ["--prune", "magnitude", "--sparsity", "0.5"]},
            "tiny-p-more": {"from": "tiny-p", "compress": ["--prune", "magnitude",
                            "--sparsity", "0.7", "--eval-windows", "2"]},
        },
        "serve": ["tiny", "tiny-p-more"],
        "aliases": {"t": {"split": {"tiny": 1.0, "tiny-p-more": 0.0}}},
        **changes,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    return path


def _show(name: str, home: Path) -> dict:
    proc = run_cli("models", "show", name, registry=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_build_makes_what_is_missing_parents_first_and_links_what_is_served(
    tiny_registry, tmp_path
):
    home = tmp_path / "registry"
    shutil.copytree(tiny_registry, home, symlinks=True)  # holds tiny and tiny-p already
    before = _show("tiny-p", home)
    definition, links = _definition(tmp_path / "variants.yaml"), tmp_path / "serve"
    proc = run_cli("deploy", "build", str(definition), "--link", str(links),
                   "--calibration-samples", "4", registry=home)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "tiny-p is registered already" in proc.stdout
    assert _show("tiny-p", home)["created_at"] == before["created_at"]  # not built again
    built = _show("tiny-p-more", home)
    assert built["parent"] == "tiny-p"
    assert built["recipe"]["sparsity"] == 0.7
    for name in ("tiny", "tiny-p-more"):
        served = run_cli("models", "path", name, registry=home)
        assert (links / name).resolve() == Path(served.stdout.strip()), name
    assert not (links / "tiny-p").exists()  # built as a parent, not served

    again = run_cli("deploy", "build", str(definition), registry=home)
    assert again.returncode == 0, again.stderr
    assert _show("tiny-p-more", home)["created_at"] == built["created_at"]


def test_a_definition_that_cannot_be_built_is_refused_in_one_line(tiny_registry, tmp_path):
    home = tmp_path / "registry"
    shutil.copytree(tiny_registry, home, symlinks=True)  # (other tests add to the original)
    before = {v["name"] for v in json.loads(run_cli("models", "list", "--json",
                                                     registry=home).stdout)}  # fmt: skip
    bad = {
        "orphan": {"build": {"x": {"from": "nowhere", "compress": ["--quant", "w8a8"]}}},
        "unserved": {"aliases": {"t": {"split": {"tiny": 1.0, "tiny-q": 0.0}}}},
        "base not first": {"serve": ["tiny-p-more", "tiny"]},
        "named twice": {"build": {"x": {"from": "tiny", "compress": ["--name", "y"]}}},
    }
    for what, changes in bad.items():
        proc = run_cli("deploy", "build", str(_definition(tmp_path / "v.yaml", **changes)),
                       registry=home)  # fmt: skip
        assert proc.returncode == 2, (what, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (what, proc.stderr)
        assert proc.stderr.startswith("error:"), (what, proc.stderr)
    listed = run_cli("models", "list", "--json", registry=home)
    assert {v["name"] for v in json.loads(listed.stdout)} == before


def test_demo_refuses_a_model_without_a_main_job_in_one_line(tmp_path):
    for args, message in (
        (["--model", "nope"], "no main job is defined for 'nope'"),
        (["--model", "smollm2-135m", "--variants", "deploy/variants.yaml"], "not both"),
    ):
        proc = run_cli("demo", *args, registry=tmp_path / "reg", cwd=ROOT)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "smollm2-135m" in proc.stderr or "not both" in message
    assert not (tmp_path / "reg").exists()  # refused before anything was made


def test_every_shipped_definition_is_valid_and_names_a_packaged_base():
    from app.deploy.main_job import load
    from app.job.gguf_source import PACKAGED

    shipped = sorted((ROOT / "deploy").glob("variants*.yaml"))
    tables = sorted((ROOT / "deploy" / "bench").glob("*.yaml"))  # the README's bench tables
    assert len(shipped) == 2 and tables
    for path in shipped + tables:
        job = load(path)
        assert job.base in PACKAGED, path
        assert job.aliases, path
        assert len(job.serve) == 3 or path in tables, path  # the main job serves three


def _two_free_ports() -> int:
    """A port p with p + 1 free as well (spawned engines take consecutive ports)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def test_demo_builds_serves_and_compares_what_its_definition_says(tiny_registry, tmp_path):
    home = tmp_path / "registry"
    shutil.copytree(tiny_registry, home, symlinks=True)
    engine = {"max_model_len": 1024, "kv_cache_gib": 1, "compile": False,
              "first_port": _two_free_ports()}  # fmt: skip
    definition = _definition(
        tmp_path / "variants.yaml",
        build={"tiny-m30": {"from": "tiny", "compress": [
            "--prune", "magnitude", "--sparsity", "0.3", "--eval-windows", "2"]}},
        serve=["tiny", "tiny-m30"],
        aliases={"t": {"split": {"tiny": 1.0, "tiny-m30": 0.0},
                       "shadow": {"variant": "tiny-m30", "fraction": 0.5},
                       "quality_sample": 0.05}},
        engine=engine,
    )  # fmt: skip
    port = free_port()
    proc = run_cli(
        "demo", "--variants", str(definition), "--port", str(port), "--requests", "4",
        "--concurrency", "2", "--output-tokens", "8", "--calibration-samples", "4",
        registry=home, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _show("tiny-m30", home)["parent"] == "tiny"
    served = yaml.safe_load((home / ".logs" / "demo-deployment.yaml").read_text())
    assert list(served["variants"]) == ["tiny", "tiny-m30"]
    assert served["aliases"]["t"]["quality_sample"] == 0.5  # the demo scores more
    bench = json.loads((home / "demo-bench.json").read_text())
    rows = {r["variant"]: r for r in bench["results"]}
    assert set(rows) == {"tiny", "tiny-m30"}
    assert all(r["requests"] == 4 and not r["errors"] for r in rows.values()), rows
    assert "main job done" in proc.stdout
    for p in (port, engine["first_port"], engine["first_port"] + 1):  # everything stopped
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0, p


def test_demo_stops_when_a_variant_answered_no_benchmark_request(tmp_path):
    from app.cli.demo import _no_variant_failed_outright
    from app.errors import SparsegateError

    ok = {"variant": "a", "requests": 4, "errors": 1, "first_error": "HTTP 503"}
    _no_variant_failed_outright([ok], tmp_path / "serve.log")  # some answers: a comparison
    failed = {"variant": "b", "requests": 4, "errors": 4, "first_error": "HTTP 400: too long"}
    with pytest.raises(SparsegateError, match=r"every benchmark request to b failed.*too long"):
        _no_variant_failed_outright([ok, failed], tmp_path / "serve.log")
