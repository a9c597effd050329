"""Progressive rollouts: the decision rule on synthetic samples (seeded), and the rollout's
life in the registry's database through the CLI, with every bad input in one line."""

import json
import random

import pytest
import yaml

from app.registry import open_registry
from app.rollouts.decide import HOLD, PROMOTE, ROLLBACK, Evidence, decide
from app.rollouts.spec import Gates, RolloutSpec
from tests.conftest import run_cli

RUNS = 20
MAX_SAMPLES = 3000


def _texts(rng: random.Random, ratio: float):
    """(candidate bits, reference bits) of sampled texts: texts of 200-2000 bytes, each as
    hard as it is (reference bits per byte 1.0 +- 0.2), the candidate's bits that text's x
    `ratio` with 4% noise of its own."""
    while True:
        n_bytes = rng.uniform(200, 2000)
        reference = n_bytes * max(0.3, rng.gauss(1.0, 0.2))
        yield reference * ratio * rng.lognormvariate(0, 0.04), reference


def _run(ratio: float, seed: int) -> tuple[str, int]:
    """Samples fed one by one until the shadow step decides: (action, samples used)."""
    spec = RolloutSpec(gates=Gates(max_bpb_ratio=1.02, min_samples=50))
    rng, evidence = random.Random(seed), Evidence(cost_saving=0.3)
    texts = _texts(rng, ratio)
    for n in range(1, MAX_SAMPLES + 1):
        evidence.quality.append(next(texts))
        # One text scored in 20 of the reference's answers; no errors on either side.
        evidence.candidate_requests = evidence.reference_requests = (20 * n, 0)
        if n % 5 and n > 20:  # decided every 5 samples past the first 20: the test's speed
            continue
        decision = decide(spec, 0, evidence)
        if decision.action != HOLD:
            return decision.action, n
    return HOLD, MAX_SAMPLES


def test_decision_rule_keeps_an_identical_candidate_and_rolls_back_a_worse_one():
    same = [_run(1.0, seed) for seed in range(RUNS)]
    worse = [_run(1.05, 1000 + seed) for seed in range(RUNS)]
    for name, runs in (("identical", same), ("5% worse", worse)):
        used = sorted(n for _, n in runs)
        print(f"{name}: {[a for a, _ in runs].count(ROLLBACK)} of {RUNS} rolled back; samples "
              f"to decide: median {used[RUNS // 2]}, max {used[-1]}")  # fmt: skip
    assert sum(action == ROLLBACK for action, _ in same) <= 1
    assert sum(action == ROLLBACK for action, _ in worse) >= 19
    assert all(action != HOLD for action, _ in same + worse)  # each run decided


def test_errors_roll_back_and_cost_holds_but_never_rolls_back():
    spec = RolloutSpec(steps=[0, 50, 100], gates=Gates(min_samples=20, min_cost_saving=0.2))
    good = [(100.0 * (1 + 0.01 * (i % 3)), 100.0) for i in range(200)]
    failing = Evidence(good, candidate_requests=(2000, 200), reference_requests=(2000, 0))
    decision = decide(spec, 0, failing)
    assert decision.action == ROLLBACK and "error rate" in decision.reason
    dear = Evidence(good, (5000, 0), (5000, 0), cost_saving=0.05)
    assert decide(spec, 0, dear).action == HOLD  # 5% cheaper, under the 20% asked
    assert decide(spec, 1, Evidence(good, (5000, 0), (5000, 0), 0.3)).action == PROMOTE
    assert decide(spec, 0, Evidence(good[:10], (5000, 0), (5000, 0), 0.3)).action == HOLD


def _latency_run(slower: float, seed: int) -> tuple[str, int]:
    """Timed requests fed 50 at a time until the TTFT p95 gate decides: (verdict, samples per
    side). Both sides lognormal (median 50 ms, a tail as real TTFT has), the candidate's
    times x `slower`."""
    from app.rollouts.gates import UNDECIDED, LatencyGate

    rng = random.Random(seed)
    gate = LatencyGate("ttft_ratio", 1.5, alpha=0.01 / 3)
    for _ in range(100):
        for _ in range(50):
            gate.reference.append(0.05 * rng.lognormvariate(0, 0.4))
            gate.candidate.append(0.05 * slower * rng.lognormvariate(0, 0.4))
        verdict = gate.verdict()
        if verdict.verdict != UNDECIDED:
            return verdict.verdict, verdict.samples
    return UNDECIDED, verdict.samples


def test_latency_gate_passes_an_equal_candidate_and_fails_a_slow_one():
    from app.rollouts.gates import FAILED, PASSED

    same = [_latency_run(1.0, seed) for seed in range(RUNS)]
    slow = [_latency_run(2.0, 100 + seed) for seed in range(RUNS)]
    for name, runs in (("equal", same), ("2x slower", slow)):
        used = sorted(n for _, n in runs)
        print(
            f"TTFT p95 gate at 1.5x, {name}: {[v for v, _ in runs].count(FAILED)} of {RUNS} "
            f"failed; timed requests per side: median {used[RUNS // 2]}, max {used[-1]}"
        )
    assert all(verdict == PASSED for verdict, _ in same)
    assert all(verdict == FAILED for verdict, _ in slow)


def test_latency_gates_hold_a_step_until_decided_and_roll_back_when_failed():
    gates = Gates(min_samples=20, max_ttft_ratio=1.5, max_tpot_ratio=1.5)
    spec = RolloutSpec(steps=[0, 100], gates=gates)
    good = [(100.0, 100.0)] * 100
    untimed = Evidence(good, (5000, 0), (5000, 0))
    held = decide(spec, 0, untimed)
    assert held.action == HOLD and "ttft_ratio, tpot_ratio" in held.reason
    rng = random.Random(3)
    ref = [0.05 * rng.lognormvariate(0, 0.2) for _ in range(2000)]
    fast = Evidence(good, (5000, 0), (5000, 0), ttft=(ref[:1000], ref[1000:]),
                    tpot=(ref[:1000], ref[1000:]))  # fmt: skip
    assert decide(spec, 0, fast).action == PROMOTE
    slow = Evidence(good, (5000, 0), (5000, 0), ttft=(ref[:1000], ref[1000:]),
                    tpot=([3 * t for t in ref[:1000]], ref[1000:]))  # fmt: skip
    decision = decide(spec, 0, slow)
    assert decision.action == ROLLBACK and decision.reason.startswith("tpot p95 3.")


@pytest.fixture
def served(backend, tmp_path):
    """A registry with a dense base, a candidate of it and a variant of another base, and a
    deployment serving them behind the alias `chat`."""
    home = tmp_path / "reg"
    reg = open_registry(home, create=True)
    for name, fields in {
        "dense": {}, "cheap": {"base": "dense", "parent": "dense"}, "other": {},
    }.items():  # fmt: skip
        with reg.draft(name) as draft:
            (draft.path / "w.bin").write_bytes(name.encode())
            draft.publish(param_count=10, quality={"bpb_ratio_max": 1.01}, **fields)
    reg.close()
    dead = "http://127.0.0.1:9"  # nothing is served: the commands only read the file
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"open": True},
        "variants": {v: {"url": dead} for v in ("dense", "cheap", "other")},
        "aliases": {"chat": {"split": {"dense": 1.0}}},
    }))  # fmt: skip
    return home, config


def test_rollout_commands_keep_one_live_rollout_and_record_every_change(served):
    home, config = served

    def cli(*args: str):
        proc = run_cli("rollout", *args, registry=home)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "started at step 1 of 5: 0% of users" in cli(
        "start", "chat", "cheap", "--config", str(config), "--pause-at", "25",
        "--quality-sample", "0.4", "--shadow-fraction", "0.3")  # fmt: skip
    second = run_cli("rollout", "start", "chat", "cheap", "--config", str(config), registry=home)
    assert second.returncode == 2 and "has a rollout running" in second.stderr
    assert "paused" in cli("pause", "chat")
    assert "running" in cli("resume", "chat")
    assert "cheap' promoted on 'chat'" in cli("promote", "chat")
    (rollout,) = json.loads(cli("status", "chat", "--json"))
    assert (rollout["state"], rollout["weight"]) == ("promoted", 100)
    spec = rollout["spec"]  # as given
    assert (spec["pause_at"], spec["quality_sample"], spec["shadow_fraction"]) == ([25], 0.4, 0.3)
    assert [e["kind"] for e in rollout["events"]] == [
        "started", "paused", "resumed", "promoted"]  # fmt: skip
    assert all("@" in e["actor"] for e in rollout["events"])
    reg = open_registry(home)
    assert {v.name: v.stage.value for v in reg.variants()}["cheap"] == "production"
    reg.close()
    # A new one, once the last ended, judged against the variant it promoted.
    again = run_cli("rollout", "start", "chat", "cheap", "--config", str(config), registry=home)
    assert again.returncode == 2 and "'cheap' is the alias's reference" in again.stderr
    assert "(reference 'cheap')" in cli("start", "chat", "dense", "--config", str(config))
    # One round of the controller: no evidence yet, so no decision; the rollout runs on.
    assert run_cli("rollout", "controller", "--once", registry=home).returncode == 0
    assert _state(cli) == ["promoted", "running"]
    assert "candidate at 0%" in cli("abort", "chat", "--reason", "changed my mind")
    assert _state(cli) == ["promoted", "aborted"]


def _state(cli) -> list[str]:
    return [r["state"] for r in json.loads(cli("status", "--json"))]


@pytest.mark.parametrize(
    "args, says",
    [
        (["start", "nope", "cheap"], "unknown alias 'nope'"),
        (["start", "chat", "ghost"], "unknown candidate 'ghost'"),
        (["start", "chat", "other"], "not of the alias's base 'dense'"),
        (["start", "chat", "dense"], "the alias's reference"),
        (["start", "chat", "cheap", "--steps", "0,50,25,100"], "each step above the one before"),
        (["start", "chat", "cheap", "--steps", "0,50,150"], "from 0 to 100"),
        (["start", "chat", "cheap", "--steps", "0,50"], "the last step is 100"),
        (["start", "chat", "cheap", "--steps", "0,x"], "whole percentages"),
        (["start", "chat", "cheap", "--max-bpb-ratio", "0.9"], "max_bpb_ratio"),
        (["start", "chat", "cheap", "--min-cost-saving", "1.5"], "min_cost_saving"),
        (["start", "chat", "cheap", "--confidence", "1"], "confidence"),
        (["start", "chat", "cheap", "--min-samples", "3"], "min_samples"),
        (["start", "chat", "cheap", "--max-ttft-ratio", "0"], "max_ttft_ratio"),
        (["start", "chat", "cheap", "--latency-quantile", "1"], "latency_quantile"),
        (["start", "chat", "cheap", "--pause-at", "100"], "pause_at [100]"),
        (["pause", "chat"], "no rollout running on alias 'chat'"),
    ],
)
def test_bad_rollout_commands_are_one_line_and_change_nothing(served, args, says):
    home, config = served
    if args[0] == "start":
        args = [*args, "--config", str(config)]
    proc = run_cli("rollout", *args, registry=home)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert json.loads(run_cli("rollout", "status", "--json", registry=home).stdout) == []


def test_each_state_routes_the_alias_as_the_readme_says():
    from app.gateway.config import AliasConfig
    from app.gateway.rollout_sync import routed
    from app.rollouts.store import Rollout

    base = AliasConfig(split={"ref": 1.0, "spare": 0.0})
    spec = RolloutSpec(steps=[0, 25, 100], quality_sample=0.3, shadow_fraction=0.5)

    def at(state: str, step: int) -> AliasConfig:
        r = Rollout("r1", "chat", "cand", "cand", "ref", spec, state, step, "", None, "", "")
        return routed(base, r)

    shadow = at("running", 0)
    assert shadow.split == {"ref": 1.0} and shadow.shadow.variant == "cand"
    assert (shadow.shadow.fraction, shadow.quality_sample, shadow.reference) == (0.5, 0.3, "ref")
    assert at("paused", 1).split == {"ref": 75.0, "cand": 25.0}
    assert at("running", 1).shadow is None
    promoted = at("promoted", 2)
    assert promoted.split == {"cand": 1.0, "ref": 0.0, "spare": 0.0}
    assert promoted.quality_sample == 0.0
    for ended in ("rolled_back", "aborted"):
        assert at(ended, 1) == base
    assert routed(base, None) is base
    # A rollout against a reference an earlier one promoted: rolled back, it keeps everyone.
    later = Rollout("r2", "chat", "ref", "ref", "cand", spec, "rolled_back", 1, "", None, "", "")
    assert routed(base, later).split == {"cand": 1.0, "spare": 0.0}
    assert routed(base, later).reference == "cand"


def test_one_controller_holds_the_lease_until_it_lapses(backend, tmp_path):
    from app.rollouts import lease

    reg = open_registry(tmp_path / "reg", create=True)
    assert lease.hold(reg, "ctl", "a", 60)
    assert not lease.hold(reg, "ctl", "b", 60)
    assert lease.hold(reg, "ctl", "a", 60)  # renewed by its holder
    lease.release(reg, "ctl", "a")
    assert lease.hold(reg, "ctl", "b", 0.0)  # free again; b's lapses at once
    assert lease.hold(reg, "ctl", "a", 60)
    reg.close()


OLD_CHECK = "CHECK (stage IN ('candidate', 'production', 'retired'))"


def _as_before_rejected(reg) -> None:
    """Put back the stage check of registries made before the `rejected` stage."""
    from app.registry.embedded import EmbeddedRegistry

    if not isinstance(reg, EmbeddedRegistry):
        with reg.transaction() as tx:
            tx.execute("ALTER TABLE variants DROP CONSTRAINT variants_stage_check")
            tx.execute(f"ALTER TABLE variants ADD CONSTRAINT variants_stage_check {OLD_CHECK}")
        return
    db = reg._db
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'variants'").fetchone()
    old = sql.replace("CREATE TABLE variants", "CREATE TABLE variants_old")
    old = old.replace("'retired', 'rejected'", "'retired'")
    db.executescript(f"PRAGMA foreign_keys = OFF; BEGIN; {old}; INSERT INTO variants_old SELECT "
                     "* FROM variants; DROP TABLE variants; ALTER TABLE variants_old RENAME TO "
                     "variants; COMMIT; PRAGMA foreign_keys = ON;")  # fmt: skip


def test_a_rolled_back_candidate_is_rejected_with_its_reason_in_older_registries_too(served):
    from app.rollouts.controller import Controller
    from app.rollouts.store import RolloutStore

    home, config = served
    reg = open_registry(home)
    _as_before_rejected(reg)
    reg.close()
    start = run_cli("rollout", "start", "chat", "cheap", "--config", str(config), "--steps",
                    "0,100", "--min-samples", "20", registry=home)  # fmt: skip
    assert start.returncode == 0, start.stderr
    reg = open_registry(home)  # an embedded registry is migrated as it opens; a shared one
    rollout = RolloutStore(reg).live("chat")  # on its first rejection
    from app.rollouts.evidence import add_samples

    worse = [(rollout.id, 0, "cheap", 150.0 + i % 7, 100.0 + i % 5) for i in range(40)]
    add_samples(reg, worse, {(rollout.id, 0, "cheap"): [100, 0]})
    (decision,) = Controller(reg).tick()
    assert decision[1].action == ROLLBACK
    cheap = reg.get("cheap")
    assert cheap.stage.value == "rejected"
    assert "bits-per-byte" in cheap.quality["rollout"]["rejected"]
    assert cheap.quality["rollout"]["rollout"] == rollout.id
    assert cheap.quality["bpb_ratio_max"] == 1.01  # the job's figures stay
    reg.close()
    listed = run_cli("models", "list", registry=home)
    assert listed.returncode == 0 and "rejected" in listed.stdout
    # What `bench rollout` reports of it: the step, its decision, what it rested on.
    from app.bench.rollout_bench import step_figures

    reg = open_registry(home)
    (figure,) = step_figures(reg, RolloutStore(reg).listed("chat")[-1])
    reg.close()
    assert (figure.step, figure.weight, figure.decision) == (0, 0, "rolled back")
    assert figure.samples["bpb_ratio"] == 40 and figure.seconds >= 0
    assert 0 <= figure.decided_after_evidence_s < figure.seconds + 1


def test_the_dashboard_view_judges_the_gates_as_the_controller_would(served):
    from app.rollouts.evidence import add_samples
    from app.rollouts.store import RolloutStore
    from app.rollouts.view import rollouts_view

    home, config = served
    start = run_cli("rollout", "start", "chat", "cheap", "--config", str(config), "--steps",
                    "0,50,100", "--min-samples", "20", "--max-ttft-ratio", "2",
                    registry=home)  # fmt: skip
    assert start.returncode == 0, start.stderr
    reg = open_registry(home)
    rid = RolloutStore(reg).live("chat").id
    (row,) = rollouts_view(reg, ["chat"])
    gates = {g["gate"]: g for g in row["gates"]}
    assert set(gates) == {"bpb_ratio", "error_rate_increase", "ttft_ratio"}
    assert gates["bpb_ratio"]["samples"] == 0 and gates["bpb_ratio"]["high"] is None  # no inf
    assert gates["ttft_ratio"]["bound"] == 2.0 and row["waiting"].startswith("undecided")
    same = [(rid, 0, "cheap", 100.0 + i % 3, 100.0 + i % 3) for i in range(60)]
    add_samples(reg, same, {(rid, 0, "cheap"): [5000, 0], (rid, 0, "dense"): [5000, 0]},
                [(rid, 0, v, 0.05 + (i % 10) / 1000, 0.01) for i in range(800)
                 for v in ("cheap", "dense")])  # fmt: skip
    (row,) = rollouts_view(reg, ["chat"])
    assert {g["gate"]: g["verdict"] for g in row["gates"]} == {
        "bpb_ratio": "passed",
        "error_rate_increase": "passed",
        "ttft_ratio": "passed",
    }
    assert row["waiting"] == "every gate passed"  # the controller advances on its next round
    assert [e["kind"] for e in row["events"]] == ["started"]
    assert rollouts_view(reg, ["other-alias"]) == []
    reg.close()
