"""What is particular to the shared back end (PostgreSQL + S3, real servers): a publisher
killed mid-upload, fetching into a local cache with verification, files missing from the
store, bad settings, the move from the embedded back end, and the gateway reading it."""

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from app.errors import SparsegateError
from app.registry import Stage, open_registry
from app.registry.embedded import EmbeddedRegistry
from tests.conftest import free_port, run_cli

ROOT = Path(__file__).resolve().parents[1]
PREFIX_ENV = ("SPARSEGATE_REGISTRY_URL", "SPARSEGATE_ARTIFACTS")


@pytest.fixture
def shared(shared_servers, monkeypatch):
    """Settings of a fresh shared registry, in the environment as a user sets them; under
    "read", those a gateway or engine gets (a read-only role and read-only S3 keys)."""
    pg, s3 = shared_servers
    prefix = uuid.uuid4().hex[:8]
    database = pg.new_database()
    artifacts = f"s3://sparsegate-test/{prefix}"
    settings = {
        "SPARSEGATE_REGISTRY_URL": pg.url(database),
        "SPARSEGATE_ARTIFACTS": artifacts,
        **s3.env(),
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    read = {"SPARSEGATE_REGISTRY_URL": pg.add_reader(database), "SPARSEGATE_ARTIFACTS": artifacts,
            **s3.env(reader=True)}  # fmt: skip
    return settings | {"prefix": prefix, "read": read}


def _as_reader(shared, monkeypatch) -> None:
    for key, value in shared["read"].items():
        monkeypatch.setenv(key, value)


def _keys(s3, prefix: str) -> list[str]:
    pages = (
        s3.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket="sparsegate-test", Prefix=f"{prefix}/")
    )
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _register(reg, name: str, files: dict[str, bytes], **fields):
    with reg.draft(name) as draft:
        for path, data in files.items():
            (draft.path / path).parent.mkdir(parents=True, exist_ok=True)
            (draft.path / path).write_bytes(data)
        return draft.publish(**fields)


def test_publisher_killed_mid_upload_leaves_no_record_and_its_upload_is_collected(
    tmp_path, shared, shared_servers
):
    _, s3 = shared_servers
    open_registry(tmp_path, create=True).close()
    ready = tmp_path / "first-file-uploaded"
    # The real publish, killed (SIGKILL: no clean-up runs) once its first file is in the
    # store and before the record exists.
    code = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from app.registry import open_registry
        from app.registry.objects import ObjectStore
        upload = ObjectStore.upload
        def upload_then_die(self, path, key, sha256):
            upload(self, path, key, sha256)
            Path({str(ready)!r}).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        ObjectStore.upload = upload_then_die
        reg = open_registry(Path({str(tmp_path / "job-host")!r}), create=True)
        with reg.draft("victim") as draft:
            for i in range(3):
                (draft.path / f"part-{{i}}.bin").write_bytes(os.urandom(1000))
            draft.publish()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL and ready.exists()
    reg = open_registry(tmp_path, create=True)  # another host
    assert reg.find("victim") is None
    assert len(_keys(s3, shared["prefix"])) == 1  # the file it got up, under its lease
    # The lease still runs: no host may take the upload yet.
    assert reg.collect_garbage() == []
    assert len(_keys(s3, shared["prefix"])) == 1
    # Time passes (the lease's expiry moved into the past, as the clock would do).
    with psycopg.connect(shared["SPARSEGATE_REGISTRY_URL"], autocommit=True) as conn:
        conn.execute("UPDATE drafts SET expires_at = now() - interval '1 second'")
    removed = reg.collect_garbage()
    assert len(removed) == 1 and "variants/victim/" in removed[0]
    assert _keys(s3, shared["prefix"]) == []
    with psycopg.connect(shared["SPARSEGATE_REGISTRY_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM drafts").fetchone()[0] == 0
    # The name is free again.
    assert _register(reg, "victim", {"w.bin": b"ok"}).name == "victim"


def test_a_publish_committing_while_files_are_collected_keeps_its_files(tmp_path, shared):
    """The collector reads which uploads are vouched for (records, leases) while a publish
    turns its lease into its record: made to happen right after the collector's first
    read, the published variant must keep its files."""
    import threading

    writer = open_registry(tmp_path / "writer", create=True)
    collector = open_registry(tmp_path / "collector", create=True)
    uploaded, go, published = threading.Event(), threading.Event(), []
    files = {"config.json": b"{}", "w.bin": b"weights"}
    real_upload = writer.objects.upload

    count = [0]

    def upload(*args, **kwargs):
        real_upload(*args, **kwargs)
        count[0] += 1
        if count[0] == len(files):  # all there: the publish waits to commit until told
            uploaded.set()
            go.wait(60)

    writer.objects.upload = upload
    thread = threading.Thread(
        target=lambda: published.append(_register(writer, "racer", files)), daemon=True
    )
    thread.start()
    assert uploaded.wait(60)
    real_read = collector._read

    def read(sql, params=()):
        rows = real_read(sql, params)
        if not go.is_set() and ("drafts" in sql or "FROM variants" in sql):
            go.set()  # the publish commits now, between this read and any next one
            thread.join(60)
        return rows

    collector._read = read
    removed = collector.collect_garbage()
    assert published and published[0].name == "racer"
    assert not any("racer" in r for r in removed), removed
    assert collector.missing_files("racer") == []


def test_orphaned_upload_without_lease_or_record_is_collected(tmp_path, shared, shared_servers):
    _, s3 = shared_servers
    reg = open_registry(tmp_path, create=True)
    kept = _register(reg, "kept", {"w.bin": b"kept"})
    # What a writer leaves if it dies after dropping its lease and before deleting files.
    key = f"{shared['prefix']}/variants/lost/0123456789abcdef/w.bin"
    s3.client().put_object(Bucket="sparsegate-test", Key=key, Body=b"lost")
    removed = reg.collect_garbage()
    assert [r.rsplit("/", 2)[-2] for r in removed] == ["lost"]
    assert _keys(s3, shared["prefix"]) == [f"{shared['prefix']}/{kept.location}/w.bin"]


def test_cache_detects_corrupted_and_partial_files_and_fetches_again(tmp_path, shared):
    data = os.urandom(200_000)
    _register(open_registry(tmp_path / "job", create=True), "m", {"model.bin": data})
    host = open_registry(tmp_path / "engine-host", create=True)
    folder = host.servable_path("m")
    assert (
        folder.is_relative_to(tmp_path / "engine-host")
        and (folder / "model.bin").read_bytes() == data
    )
    (folder / "model.bin").write_bytes(data[:1000] + b"\0" + data[1001:])  # one byte flipped
    assert (host.servable_path("m") / "model.bin").read_bytes() == data
    (folder / "model.bin").write_bytes(data[:5000])  # a partial download
    assert (host.servable_path("m") / "model.bin").read_bytes() == data


def test_large_file_goes_up_in_parts_checked_by_sha256(tmp_path, shared, monkeypatch):
    import app.registry.objects as objects

    monkeypatch.setattr(objects, "PART", 5 << 20)  # S3's smallest part: 3 parts here
    data = os.urandom((5 << 20) * 2 + 12345)
    v = _register(open_registry(tmp_path / "job", create=True), "big", {"model.bin": data})
    host = open_registry(tmp_path / "other", create=True)
    assert (host.servable_path("big") / "model.bin").read_bytes() == data
    assert v.files[0].bytes == len(data)


def test_files_missing_from_the_store_are_reported_and_refused(tmp_path, shared, shared_servers):
    _, s3 = shared_servers
    reg = open_registry(tmp_path / "job", create=True)
    v = _register(reg, "holed", {"config.json": b"{}", "model.bin": b"weights"})
    s3.client().delete_object(
        Bucket="sparsegate-test", Key=f"{shared['prefix']}/{v.location}/model.bin"
    )
    other = tmp_path / "engine-host"
    shown = run_cli("models", "show", "holed", registry=other)
    assert shown.returncode == 0, shown.stderr
    assert '"missing_files": [\n    "model.bin"\n  ]' in shown.stdout
    assert "holed: 1 of its files are missing from PostgreSQL at" in shown.stderr
    engine = run_cli("engine", "holed", "--port", str(free_port()), registry=other)
    assert engine.returncode == 2
    assert engine.stderr.strip().splitlines() == [
        f"error: variant holed: 1 of its files are missing from the artifact store "
        f"s3://sparsegate-test/{shared['prefix']}/{v.location}: model.bin"
    ]
    # Corrupted in the store (same size, other bytes): refused at fetch, nothing cached.
    s3.client().put_object(
        Bucket="sparsegate-test", Key=f"{shared['prefix']}/{v.location}/model.bin", Body=b"WEIGHTS"
    )
    with pytest.raises(SparsegateError, match="does not match its recorded sha256"):
        open_registry(other, create=True).servable_path("holed")
    assert not any((other / ".cache").glob("holed@*"))


def _one_line_error(proc, *needles: str, secret: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert secret not in proc.stderr + proc.stdout


def test_unreachable_or_refusing_servers_are_one_line_without_secrets(
    tmp_path, shared, shared_servers
):
    pg, s3 = shared_servers
    home = tmp_path / "h"
    closed = free_port()
    bad_db = pg.url("postgres").replace(f":{pg.port}/", f":{closed}/")
    _one_line_error(
        run_cli("models", "list", registry=home, SPARSEGATE_REGISTRY_URL=bad_db),
        f"cannot open the registry database at 127.0.0.1:{closed}/postgres",
        secret=pg.password,
    )
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text("gateway: {open: true}\nvariants: {m: {url: 'http://127.0.0.1:9'}}\n")
    _one_line_error(
        run_cli("serve", "--config", str(deploy), registry=home, SPARSEGATE_REGISTRY_URL=bad_db,
                timeout=60),
        f"cannot open the registry database at 127.0.0.1:{closed}/postgres",
        secret=pg.password,
    )  # fmt: skip
    wrong = pg.url("postgres", password="not-the-password-123")
    _one_line_error(
        run_cli("models", "list", registry=home, SPARSEGATE_REGISTRY_URL=wrong),
        f"127.0.0.1:{pg.port}/postgres", "password authentication failed",
        secret="not-the-password-123",
    )  # fmt: skip
    run_cli("models", "list", registry=home)  # (creates nothing: no registry yet)
    open_registry(home, create=True).close()
    _one_line_error(
        run_cli("models", "list", registry=home, AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed}"),
        f"cannot reach the artifact store s3://sparsegate-test/{shared['prefix']} at "
        f"http://127.0.0.1:{closed}",
        secret=s3.secret_key,
    )
    _one_line_error(
        run_cli("models", "list", registry=home, AWS_SECRET_ACCESS_KEY="wrong-secret-456"),
        "refused the credentials",
        secret="wrong-secret-456",
    )
    half = {**os.environ}
    half.pop("SPARSEGATE_ARTIFACTS")
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "models", "list", "--registry", str(home)],
        capture_output=True, text=True, env=half, cwd=ROOT,
    )  # fmt: skip
    _one_line_error(proc, "needs both SPARSEGATE_REGISTRY_URL", secret=pg.password)


def test_migrate_moves_an_embedded_registry_into_the_shared_one(tmp_path, shared, monkeypatch):
    for key in PREFIX_ENV:
        monkeypatch.delenv(key)
    old = EmbeddedRegistry(tmp_path / "old", create=True)
    _register(old, "dense", {"config.json": b"{}", "w.bin": b"dense"}, stage=Stage.production)
    _register(old, "child", {"config.json": b"{}", "w.bin": b"child"}, base="dense",
              parent="dense", quality={"bpb_ratio_max": 1.02}, recipe={"prune": "x"})  # fmt: skip
    monkeypatch.setenv("SPARSEGATE_REGISTRY_URL", shared["SPARSEGATE_REGISTRY_URL"])
    monkeypatch.setenv("SPARSEGATE_ARTIFACTS", shared["SPARSEGATE_ARTIFACTS"])
    home = tmp_path / "cache"
    proc = run_cli("models", "migrate", "--from", str(tmp_path / "old"), registry=home)
    assert proc.returncode == 0, proc.stderr
    assert "copied 2 variant(s)" in proc.stdout
    new = open_registry(tmp_path / "another-host", create=True)
    for before in old.variants():
        after = new.get(before.name)
        assert after.model_dump(exclude={"location", "updated_at"}) == before.model_dump(
            exclude={"location", "updated_at"}
        )
        assert (new.servable_path(before.name) / "w.bin").read_bytes() == before.name.encode()
    again = run_cli("models", "migrate", "--from", str(tmp_path / "old"), registry=home)
    assert again.returncode == 0 and "all were there" in again.stdout


def test_gateway_reads_production_aliases_and_facts_from_the_shared_registry(
    tmp_path, shared, start_gateway, monkeypatch
):
    reg = open_registry(tmp_path / "job", create=True)
    _register(reg, "dense", {"w.bin": b"d"}, param_count=100)
    quality = {"bpb_ratio_max": 1.01, "bpb_ratio": {"pydoc": 1.01, "news": 1.0}}
    _register(reg, "cheap", {"w.bin": b"c"}, base="dense", parent="dense", param_count=60,
              quality=quality)  # fmt: skip
    reg.set_stage("cheap", Stage.production)
    _as_reader(shared, monkeypatch)  # the gateway's own read-only credentials
    dead = f"http://127.0.0.1:{free_port()}"  # routing is not under test: no engine needed
    url = start_gateway(
        {
            "variants": {"dense": {"url": dead}, "cheap": {"url": dead}},
            "aliases": {"best": {"production_of": "dense"}},
        },
        "--registry", str(tmp_path / "gateway-host"),
    )  # fmt: skip
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert models["best"]["variants"] == ["cheap", "dense"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'sparsegate_variant_parameters{base="dense",variant="cheap"} 60.0' in metrics


def test_engine_hosts_fetch_and_expand_sparse_variants_behind_a_fixed_link(
    tiny_registry, tmp_path, shared, monkeypatch
):
    """What an engine's init container does on a fresh node: fetch the variant from the
    store, expand its sparse-at-rest weights, and point a fixed path at the result."""
    from app.registry.files import sha256_file

    copied = EmbeddedRegistry(tiny_registry)
    open_registry(tmp_path / "migrator", create=True).copy_from(copied)
    _as_reader(shared, monkeypatch)  # an engine's read-only credentials
    link = tmp_path / "serve" / "tiny-p"
    proc = run_cli("models", "path", "tiny-p", "--link", str(link), registry=tmp_path / "node")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and link.resolve() == Path(proc.stdout.strip())
    assert not list(link.glob("*.sparse.safetensors"))
    local = copied.servable_path("tiny-p")  # the same variant expanded from the embedded one
    for f in local.iterdir():
        assert sha256_file(link / f.name) == sha256_file(f)


def test_an_expansion_is_checked_on_use_and_built_again_from_a_good_copy(
    tiny_registry, tmp_path, shared
):
    """A file of the shared cache corrupted in place (the expansion hard-links it): the
    cache is fetched again and the expansion is built again, never served damaged."""
    from app.registry.files import sha256_file

    open_registry(tmp_path / "migrator", create=True).copy_from(EmbeddedRegistry(tiny_registry))
    node = open_registry(tmp_path / "node", create=True)
    first = node.servable_path("tiny-p")
    recorded = {f.path: f.sha256 for f in node.get("tiny-p").files}
    plain = next(p for p in recorded if p.endswith(".json"))
    with (first / plain).open("r+b") as f:  # in place: the same inode as the cache's file
        f.write(b"#")
    again = node.servable_path("tiny-p")
    assert sha256_file(again / plain) == recorded[plain]
    dense = EmbeddedRegistry(tiny_registry).servable_path("tiny-p")
    for f in dense.iterdir():
        if f.is_file() and not f.name.startswith("."):
            assert sha256_file(again / f.name) == sha256_file(f), f.name


def test_import_and_compress_jobs_publish_into_the_shared_registry(
    tiny_model_dir, tmp_path, shared
):
    """The offline job (its own environment) on one host, the variants read on another."""
    job_host, other = tmp_path / "job-host", tmp_path / "other-host"
    proc = run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=job_host)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "compress", "tiny", "--prune", "magnitude", "--sparsity", "0.5", "--name", "tiny-p",
        "--calibration-samples", "4", "--eval-windows", "2", registry=job_host,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    reg = open_registry(other, create=True)
    pruned = reg.get("tiny-p")
    assert pruned.parent == "tiny" and pruned.location.startswith("variants/tiny-p/")
    assert any(f.path.endswith(".sparse.safetensors") for f in pruned.files)
    assert reg.missing_files("tiny-p") == []
    listed = run_cli("models", "list", registry=other)
    assert listed.returncode == 0 and "PostgreSQL at 127.0.0.1" in listed.stdout
    assert "tiny-p" in listed.stdout


def test_the_read_only_credentials_cannot_change_the_registry(tmp_path, shared, monkeypatch):
    """What the gateway and the engines are given may read records and files, and write
    neither: a promote and an upload are refused, one line each, and nothing changes."""
    import hashlib

    reg = open_registry(tmp_path / "job", create=True)
    _register(reg, "dense", {"w.bin": b"d"}, param_count=100)
    _register(reg, "cheap", {"w.bin": b"c"}, base="dense", parent="dense", param_count=60)
    _as_reader(shared, monkeypatch)
    node = tmp_path / "node"
    shown = run_cli("models", "list", registry=node)
    assert shown.returncode == 0 and "cheap" in shown.stdout, shown.stderr
    promote = run_cli("models", "promote", "cheap", "--force", registry=node)
    assert promote.returncode == 2, promote.stderr
    (line,) = promote.stderr.strip().splitlines()
    assert "read-only" in line, line
    password = shared["read"]["SPARSEGATE_REGISTRY_URL"].split(":")[2].split("@")[0]
    assert password not in line
    reader = open_registry(node)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x")
    with pytest.raises(SparsegateError, match="refused the credentials"):
        reader.objects.upload(payload, "intruder", hashlib.sha256(b"x").hexdigest())
    assert open_registry(tmp_path / "job").get("cheap").stage == Stage.candidate
