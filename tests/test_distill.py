"""Recovery by distillation (`--recover kd`): the mask holds bitwise, the KL to the teacher
falls on held-out text, a trimmed student reads its teacher through the token map, and bad
input is one line with nothing registered."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.errors import SparsegateError
from app.job.distill import KDSettings, kd_recover, mean_kl, teacher_windows, token_map
from app.job.stats import prunable_linears
from app.job.text import token_windows
from app.registry.embedded import EmbeddedRegistry
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    train = token_windows(tokenizer, "calibration", 16, 64)
    held_out = token_windows(tokenizer, "evaluation", 8, 64)
    return model, tokenizer, train, held_out


@torch.no_grad()
def _prune(model, pattern: str) -> None:
    """Zero the smallest weights: half of each row, or 2 of every 4 in a row."""
    for layer in prunable_linears(model).values():
        w = layer.weight
        if pattern == "2:4":
            groups = w.abs().reshape(-1, 4)
            drop = groups.argsort(dim=1)[:, :2]
            w.view(-1, 4).scatter_(1, drop, 0.0)
        else:
            k = w.shape[1] // 2
            drop = w.abs().argsort(dim=1)[:, :k]
            w.scatter_(1, drop, 0.0)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_kd_holds_the_mask_bitwise_and_lowers_the_kl_on_held_out_text(tiny, pattern):
    teacher, _, train, held_out = tiny
    student = copy.deepcopy(teacher)
    _prune(student, pattern)
    zeros = {n: (m.weight == 0) for n, m in prunable_linears(student).items()}
    before = {n: m.weight.clone() for n, m in prunable_linears(student).items()}
    kl_before = mean_kl(student, teacher, held_out)
    report = kd_recover(student, teacher, train, KDSettings(steps=8, lr=1e-3, batch=4, seed=1))
    for name, layer in prunable_linears(student).items():
        assert torch.equal(layer.weight == 0, zeros[name]), name  # the same zeros, bitwise
        assert not torch.signbit(layer.weight[zeros[name]]).any()  # +0.0, never -0.0
    assert any(not torch.equal(m.weight, before[n]) for n, m in prunable_linears(student).items())
    assert report.zeros_held and report.sparsity_after == report.sparsity_before
    assert len(report.losses) == 8
    assert mean_kl(student, teacher, held_out) < kl_before


def test_kd_is_deterministic_with_a_seed(tiny):
    teacher, _, train, _ = tiny
    runs = []
    for _ in range(2):
        student = copy.deepcopy(teacher)
        _prune(student, "unstructured")
        runs.append(kd_recover(student, teacher, train, KDSettings(steps=3, lr=1e-3, seed=7)))
    assert runs[0].losses == runs[1].losses


def test_feature_and_cross_entropy_terms_add_to_the_kl(tiny):
    teacher, _, train, _ = tiny
    student = copy.deepcopy(teacher)
    _prune(student, "unstructured")
    cfg = KDSettings(steps=2, lr=1e-3, seed=3, ce_weight=0.5, feature_weight=1.0)
    report = kd_recover(student, teacher, train, cfg)
    assert all(loss > kl for loss, kl in zip(report.losses, report.kl, strict=True))


def test_nan_loss_stops_and_names_the_step(tiny):
    teacher, _, train, _ = tiny
    broken = copy.deepcopy(teacher)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    student = copy.deepcopy(teacher)
    with pytest.raises(SparsegateError, match=r"KD loss is nan at step 1 of 3"):
        kd_recover(student, broken, train, KDSettings(steps=3))


def test_trimmed_student_reads_its_teacher_through_the_token_map(tiny):
    _, tokenizer, _, _ = tiny
    vocab = tokenizer.get_vocab()
    assert token_map(tokenizer, tokenizer) is None

    class Trimmed:  # a renumbered sub-vocabulary, as vocabulary trimming writes it
        def get_vocab(self):
            kept = sorted(vocab, key=vocab.get)[::2]
            return {tok: i for i, tok in enumerate(kept)}

    ids = token_map(Trimmed(), tokenizer)
    kept = sorted(vocab, key=vocab.get)[::2]
    assert ids.tolist() == [vocab[t] for t in kept]

    class Foreign:
        def get_vocab(self):
            return {"<unk>": 0, "not-a-token-of-the-teacher": 1}

    with pytest.raises(SparsegateError, match="1 student tokens are unknown to it"):
        token_map(Foreign(), tokenizer)


def test_teacher_text_is_seeded_and_continues_each_prompt(tiny):
    model, tokenizer, train, _ = tiny
    # 10 prompts: a full generation batch and a partial one, of unequal lengths.
    prompts = [tokenizer.decode(w[: 12 + i % 5], skip_special_tokens=True) for i, w in
               enumerate(train[:10])]  # fmt: skip

    def generate(seed: int) -> list[list[int]]:
        return teacher_windows(model, tokenizer, tokenizer, prompts, 48, seed)

    first = generate(seed=3)
    assert first == generate(seed=3) and first != generate(seed=4)
    assert len(first) == len(prompts) and all(len(w) == 48 for w in first)
    for prompt, window in zip(prompts, first, strict=True):
        # Each batch is cut to its shortest prompt (12 tokens here), so every window opens
        # with its own prompt's first words, then goes on in the teacher's words.
        opening = tokenizer.decode(tokenizer(prompt, add_special_tokens=False).input_ids[:8])
        assert tokenizer.decode(window).startswith(opening)
        assert window != tokenizer(prompt, add_special_tokens=False).input_ids[:48]


def test_teacher_prompts_carry_one_bos_with_a_tokenizer_that_adds_it(tiny_model_dir):
    """As Gemma's does: the tokenizer adds BOS, and calibration windows begin with it.
    The teacher must read each prompt with one BOS, not two."""
    from tokenizers import processors

    from app.job.methods.kd import teacher_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    assert tokenizer("some text").input_ids[0] == bos  # it adds BOS, as Gemma's does
    calib = [tokenizer(text).input_ids for text in ("The quick brown fox", "def f(x): pass")]
    assert all(window[0] == bos for window in calib)
    for prompt in teacher_prompts(tokenizer, calib, 4):
        ids = tokenizer(prompt).input_ids
        assert ids[0] == bos and ids.count(bos) == 1, ids


@pytest.mark.parametrize("method", ["kd", "lora"])
def test_recovery_of_a_pruned_parent_holds_its_zeros(tiny_registry, method):
    """`compress <pruned variant> --recover ...`: nothing is pruned in this job, and still
    every zero of the parent stays zero (recovery must not fill the mask back in)."""
    from safetensors.torch import load_file

    name = f"tiny-p-{method}"
    lr = ["--lr", "1e-2"] if method == "kd" else []
    proc = run_cli(
        "compress", "tiny-p", "--recover", method, "--steps", "2", *lr,
        "--name", name, "--calibration-samples", "4", "--eval-windows", "2",
        registry=tiny_registry,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    reg = EmbeddedRegistry(tiny_registry)
    parent = load_file(reg.servable_path("tiny-p") / "model.safetensors")
    child = load_file(reg.servable_path(name) / "model.safetensors")
    linears = [k for k in parent if "proj" in k]
    assert linears and any(not parent[k].equal(child[k]) for k in linears)  # it trained
    for k in linears:
        assert torch.equal(child[k][parent[k] == 0], torch.zeros_like(child[k][parent[k] == 0]))
    assert reg.get(name).sparsity >= reg.get("tiny-p").sparsity


def test_compress_recovers_with_kd_and_reports_it(tiny_registry):
    proc = run_cli(
        "compress", "tiny", "--prune", "magnitude", "--sparsity", "0.5", "--recover", "kd",
        "--steps", "3", "--lr", "1e-3", "--name", "tiny-kd", "--calibration-samples", "4",
        "--eval-windows", "2", "--teacher-text", "3", registry=tiny_registry,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    reg = EmbeddedRegistry(tiny_registry)
    variant = reg.get("tiny-kd")
    report = json.loads((reg.path_of("tiny-kd") / "report.json").read_text())
    reg.remove("tiny-kd")  # the session's tiny registry stays as other tests expect it
    (rec,) = report["recovery"]
    assert rec["method"] == "kd" and len(rec["losses"]) == 3 and rec["zeros_held"]
    assert rec["teacher_windows"] == 3 and rec["windows"] == 3 + 4  # generated + calibration
    assert rec["sparsity_before"] == rec["sparsity_after"] == pytest.approx(variant.sparsity)
    assert set(report["before_recovery"]) == set(report["variant"]["scores"]) == {"pydoc", "news"}
    assert variant.recipe["recover"] == "kd" and variant.parent == "tiny"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recover", "kd", "--steps", "0"], "--steps must be at least 1 for kd recovery"),
        (["--recover", "kd", "--steps", "-2"], "--steps must be at least 1 for kd recovery"),
        (["--recover", "kd", "--teacher", "nobody"], "unknown variant 'nobody'"),
        (["--teacher", "tiny"], "--teacher: only with --recover kd"),
        (["--recover", "kd", "--lr", "3"], "--lr must be between 0 and 1"),
    ],
)
def test_kd_bad_input_is_one_line_and_registers_nothing(tiny_registry, args, message):
    before = {v.name for v in EmbeddedRegistry(tiny_registry).variants()}
    proc = run_cli(
        "compress", "tiny", "--prune", "magnitude", *args, "--name", "tiny-bad",
        registry=tiny_registry,
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert {v.name for v in EmbeddedRegistry(tiny_registry).variants()} == before


def test_kd_without_pruning_or_trimming_is_refused(tiny_registry):
    proc = run_cli("compress", "tiny", "--recover", "kd", registry=tiny_registry)
    assert proc.returncode == 2 and "distils it into itself" in proc.stderr
