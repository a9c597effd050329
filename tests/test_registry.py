"""The registry suite, on both back ends (embedded: SQLite + folder; shared: PostgreSQL +
S3, real servers), then what is particular to each."""

import itertools
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.errors import SparsegateError
from app.registry import Stage, open_registry
from app.registry.files import INCOMPLETE_MARKER, sha256_file

ROOT = Path(__file__).resolve().parents[1]


def _write_files(folder: Path, payload: bytes = b"weights") -> None:
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "sub").mkdir()
    (folder / "sub" / "model.safetensors").write_bytes(payload)


def _register(reg, name: str, **fields):
    with reg.draft(name) as draft:
        _write_files(draft.path, name.encode())
        return draft.publish(**fields)


def _another_host(home: Path, backend: str) -> Path:
    """Where another host's process keeps its registry folder: the same folder for the
    embedded back end (one machine), a folder of its own (its cache) for the shared one."""
    return home if backend == "embedded" else home / "another-host"


def _leftovers(home: Path) -> list[str]:
    staging = home / ".staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


# -- both back ends ----------------------------------------------------------------------


def test_publish_records_files_with_hashes(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    v = _register(reg, "base", param_count=10, sparsity=0.0, recipe={"op": "import"})
    folder = reg.servable_path("base")
    assert {f.path for f in v.files} == {"config.json", "sub/model.safetensors"}
    for f in v.files:
        assert f.sha256 == sha256_file(folder / f.path)
        assert f.bytes == (folder / f.path).stat().st_size
    assert v.bytes_on_disk == sum(f.bytes for f in v.files)
    assert not (folder / INCOMPLETE_MARKER).exists()
    assert reg.missing_files("base") == []
    # Another process (another host, for the shared one: an empty local folder) sees it.
    again = open_registry(_another_host(tmp_path, backend), create=True).get("base")
    assert again.model_dump() == v.model_dump()
    assert again.base == "base" and again.parent is None and again.stage is Stage.candidate


def test_failure_mid_write_leaves_nothing(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    with pytest.raises(RuntimeError), reg.draft("broken") as draft:
        _write_files(draft.path)
        raise RuntimeError("job died half-way")
    assert reg.find("broken") is None
    assert not (tmp_path / "broken").exists()
    assert _leftovers(tmp_path) == []


def test_draft_without_publish_is_discarded(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    with reg.draft("never") as draft:
        _write_files(draft.path)
    assert reg.find("never") is None and _leftovers(tmp_path) == []


def test_name_clash_detected_at_draft_and_at_publish(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    with reg.draft("twin") as first, reg.draft("twin") as second:
        _write_files(first.path, b"first")
        _write_files(second.path, b"second")
        first.publish()
        with pytest.raises(SparsegateError, match="already exists"):
            second.publish()
    assert (reg.servable_path("twin") / "sub" / "model.safetensors").read_bytes() == b"first"
    assert _leftovers(tmp_path) == []
    with pytest.raises(SparsegateError, match="already exists"), reg.draft("twin"):
        pass


def test_invalid_name_rejected_before_anything_is_written(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    with pytest.raises(SparsegateError, match="invalid variant name"), reg.draft("../escape"):
        pass
    assert {p.name for p in tmp_path.iterdir()} <= {
        "registry.db",
        "registry.db-wal",
        "registry.db-shm",
    }
    assert reg.variants() == []


def test_missing_registry_is_an_error_unless_created(tmp_path, backend):
    with pytest.raises(SparsegateError, match="no registry"):
        open_registry(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_parent_must_be_registered(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    with pytest.raises(SparsegateError, match="parent variant 'ghost'"):
        _register(reg, "child", base="ghost", parent="ghost")
    assert reg.find("child") is None and not (tmp_path / "child").exists()
    assert reg.collect_garbage() == []  # a refused publish cleans up after itself


def test_killed_writer_leaves_garbage_that_the_next_writer_collects(tmp_path, backend):
    open_registry(tmp_path, create=True).close()
    code = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from app.registry import open_registry
        reg = open_registry(Path({str(tmp_path)!r}))
        with reg.draft("victim") as draft:
            (draft.path / "model.safetensors").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert len(_leftovers(tmp_path)) == 1  # SIGKILL skips every cleanup
    reg = open_registry(tmp_path)
    removed = reg.collect_garbage()
    assert len(removed) == 1 and _leftovers(tmp_path) == []
    assert reg.find("victim") is None


def _writer(home: str, worker: int, count: int) -> list[str]:
    reg = open_registry(Path(home), create=True)
    won = []
    for i in range(count):
        _register(reg, f"w{worker}-v{i}", param_count=i)
        try:
            _register(reg, "contested", param_count=worker)
            won.append("contested")
        except SparsegateError:
            pass
    return won


def test_concurrent_writers_do_not_corrupt_the_registry(tmp_path, backend):
    workers, count = 4, 6
    ctx = multiprocessing.get_context("spawn")  # the children inherit the back end's settings
    homes = [str(_another_host(tmp_path, backend) / str(w)) for w in range(workers)]
    if backend == "embedded":
        homes = [str(tmp_path)] * workers
    with ctx.Pool(workers) as pool:
        results = pool.starmap(_writer, [(homes[w], w, count) for w in range(workers)])
    assert sum(len(r) for r in results) == 1  # exactly one process won the contested name
    reg = open_registry(_another_host(tmp_path, backend), create=True)
    names = {v.name for v in reg.variants()}
    assert names == {f"w{w}-v{i}" for w in range(workers) for i in range(count)} | {"contested"}
    for v in reg.variants():
        payload = (reg.servable_path(v.name) / "sub" / "model.safetensors").read_bytes()
        assert payload == v.name.encode()  # each variant holds its own writer's files
    assert reg.collect_garbage() == []  # nothing left over by any writer
    if backend == "embedded":
        db = sqlite3.connect(tmp_path / "registry.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        folders = {p.name for p in tmp_path.iterdir() if p.is_dir()} - {".staging"}
        assert folders == names
        assert _leftovers(tmp_path) == []


def _stage_racer(home: str, name: str, stage: str, start) -> str:
    reg = open_registry(Path(home))
    start.wait()
    reg.set_stage(name, Stage(stage), force=True)
    return stage


def test_promote_racing_retire_ends_in_one_consistent_state(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    _register(reg, "dense", stage=Stage.production)
    for i in range(3):
        _register(reg, f"v{i}", base="dense", parent="dense", quality={"bpb_ratio_max": 1.0})
    start_state = {v.name: v.stage.value for v in reg.variants()}
    ctx = multiprocessing.get_context("spawn")
    jobs = [("v0", "production"), ("v1", "production"), ("v0", "retired"), ("v2", "production")]
    with ctx.Manager() as manager, ctx.Pool(len(jobs)) as pool:
        start = manager.Barrier(len(jobs))
        pool.starmap(_stage_racer, [(str(tmp_path), n, s, start) for n, s in jobs])
    # Serializable: the outcome is that of the four changes in some order, one at a time.
    outcomes = set()
    for order in itertools.permutations(jobs):
        state = dict(start_state)
        for name, stage in order:
            if stage == "production":
                state.update({n: "candidate" for n, s in state.items() if s == "production"})
            state[name] = stage
        outcomes.add(tuple(sorted(state.items())))
    got = tuple(sorted((v.name, v.stage.value) for v in reg.variants()))
    assert got in outcomes
    assert sum(s == "production" for _, s in got) <= 1


def test_promote_demotes_the_previous_production_variant(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    _register(reg, "dense", stage=Stage.production)
    _register(reg, "pruned", base="dense", parent="dense", quality={"bpb_ratio_max": 1.05})
    assert reg.set_stage("pruned", Stage.production) == ["dense"]
    assert reg.get("pruned").stage is Stage.production
    assert reg.get("dense").stage is Stage.candidate


def test_quality_gate_refuses_unless_forced(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    _register(reg, "dense")
    # Perplexity alone (1.3×) would pass a 1.25 gate on perplexity; the gate is on bits
    # per byte, the worse of the two evaluation texts.
    _register(reg, "bad", base="dense", parent="dense",
              quality={"ppl_ratio": 1.0, "bpb_ratio_max": 1.12})  # fmt: skip
    _register(reg, "old", base="dense", parent="dense", quality={"ppl_ratio": 1.0})
    with pytest.raises(SparsegateError, match=r"1\.120× its dense base's, over the quality gate"):
        reg.set_stage("bad", Stage.production, quality_gate=1.10)
    with pytest.raises(SparsegateError, match="no bits-per-byte figure"):
        reg.set_stage("old", Stage.production, quality_gate=1.10)
    assert reg.get("bad").stage is Stage.candidate
    reg.set_stage("bad", Stage.production, quality_gate=1.10, force=True)
    assert reg.get("bad").stage is Stage.production
    reg.set_stage("bad", Stage.production, quality_gate=1.15)  # under a looser gate


def test_copying_a_registry_keeps_one_production_variant_per_base_and_the_gate(tmp_path, backend):
    """`models migrate`: a production variant arrives promoted as `models promote` would
    promote it, never as a second production variant nor past the quality gate."""
    from app.registry.embedded import EmbeddedRegistry

    source = EmbeddedRegistry(tmp_path / "source", create=True)
    _register(source, "dense", stage=Stage.production)
    _register(source, "forced", base="dense", parent="dense", quality={"bpb_ratio_max": 1.5})
    source.set_stage("forced", Stage.production, force=True)  # over the gate, by hand
    _register(source, "other")
    _register(source, "other-cut", base="other", parent="other",
              quality={"bpb_ratio_max": 1.02}, stage=Stage.production)  # fmt: skip
    reg = open_registry(tmp_path / "target", create=True)
    _register(reg, "other-here", base="other", stage=Stage.production)
    copied, notes = reg.copy_from(source)
    assert sorted(copied) == ["dense", "forced", "other", "other-cut"]
    production = {v.base: v.name for v in reg.variants() if v.stage is Stage.production}
    # (the source's dense was demoted when `forced` went to production by hand)
    assert production == {"other": "other-here"}
    assert len([v for v in reg.variants() if v.stage is Stage.production]) == 1
    assert sorted(notes) == [
        "forced stays a candidate: forced has bits per byte 1.500× its dense base's, over the "
        "quality gate 1.100; pass --force to promote it anyway",
        "other-cut stays a candidate: other-here is production for other here",
    ]


def test_remove_guards_parents_and_production(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    _register(reg, "dense", stage=Stage.production)
    _register(reg, "child", base="dense", parent="dense")
    child_files = reg.servable_path("child")
    with pytest.raises(SparsegateError, match="parent of child"):
        reg.remove("dense", force=True)
    reg.remove("child")
    assert reg.find("child") is None and not child_files.exists()
    with pytest.raises(SparsegateError, match="in production"):
        reg.remove("dense")
    reg.set_stage("dense", Stage.retired)
    reg.remove("dense")
    assert reg.variants() == [] and not (tmp_path / "dense").exists()
    with pytest.raises(SparsegateError, match="unknown variant 'dense'"):
        reg.remove("dense")
    assert reg.collect_garbage() == []


def test_files_are_readable_by_other_users(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    with reg.draft("private") as draft:
        secret = draft.path / "weights.bin"
        secret.write_bytes(b"w")
        os.chmod(secret, 0o600)  # what safetensors does
        draft.publish()
    assert (reg.servable_path("private") / "weights.bin").stat().st_mode & 0o044 == 0o044


def test_update_quality_merges(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    _register(reg, "m", quality={"fidelity": {"x": 1}})
    reg.update_quality("m", {"ppl_by_eval": {"w": 3.0}})
    again = open_registry(_another_host(tmp_path, backend), create=True)
    assert again.get("m").quality == {"fidelity": {"x": 1}, "ppl_by_eval": {"w": 3.0}}


# -- embedded ----------------------------------------------------------------------------


def test_crash_between_rename_and_commit_is_collected(tmp_path):
    reg = open_registry(tmp_path, create=True)
    kept = _register(reg, "kept")
    # What a crash leaves: a moved folder still marked, with no record (or a committed
    # record whose marker was not yet removed).
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / INCOMPLETE_MARKER).touch()
    (tmp_path / kept.name / INCOMPLETE_MARKER).touch()
    reg.collect_garbage()
    assert not orphan.exists()
    assert (tmp_path / "kept" / "config.json").exists()
    assert not (tmp_path / "kept" / INCOMPLETE_MARKER).exists()


def test_live_writers_draft_is_not_collected(tmp_path, backend):
    reg = open_registry(tmp_path, create=True)
    with reg.draft("slow") as draft:
        _write_files(draft.path)
        open_registry(tmp_path).collect_garbage()  # another process's collector
        assert draft.path.exists()
        draft.publish()
    assert reg.get("slow").files


def _opener(home: str, start) -> str:
    start.wait()  # all processes open the new registry at the same moment
    reg = open_registry(Path(home), create=True)
    try:
        return reg._db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        reg.close()


def test_processes_creating_one_registry_together_all_succeed(tmp_path):
    # SQLite may refuse the switch to WAL at once ("database is locked") when several
    # processes set up a fresh database together; each round is a fresh registry.
    workers = 8
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(workers) as pool:
        for round_ in range(8):
            home = tmp_path / f"r{round_}"
            start = manager.Barrier(workers)
            modes = pool.starmap(_opener, [(str(home), start)] * workers)
            assert modes == ["wal"] * workers
            assert {p.name for p in home.iterdir()} <= {
                "registry.db",
                "registry.db-wal",
                "registry.db-shm",
            }
