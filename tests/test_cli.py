"""The real `sparsegate` command: errors are one readable line, imports are atomic."""

import json
import signal
import subprocess
import time

import pytest

from tests.conftest import SPARSEGATE, run_cli


def _error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _registered(home) -> list[str]:
    proc = run_cli("models", "list", "--json", registry=home)
    assert proc.returncode == 0, proc.stderr
    return [v["name"] for v in json.loads(proc.stdout)]


def test_missing_registry(tmp_path):
    line = _error_line(run_cli("models", "list", registry=tmp_path / "nowhere"))
    assert "no registry at" in line
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture(scope="module")
def cli_registry(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("cli-registry")
    proc = run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=home)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "registered tiny" in proc.stdout
    return home


def test_import_local_folder_registers_a_checked_base(cli_registry):
    record = json.loads(run_cli("models", "show", "tiny", registry=cli_registry).stdout)
    assert record["stage"] == "production" and record["parent"] is None
    assert record["base"] == "tiny" and record["recipe"]["format"] == "huggingface"
    fid = record["quality"]["fidelity"]
    assert 0 < fid["relative_logit_error"] < 0.03 and fid["top1_agreement"] >= 0.95
    files = {f["path"] for f in record["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    folder = cli_registry / "tiny"
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    # The tiny model has no chat template; the import gives it one so chat works.
    assert (folder / "chat_template.jinja").exists()
    assert record["param_count"] > 0 and record["bytes_on_disk"] == sum(
        f["bytes"] for f in record["files"]
    )


def test_unknown_variant(cli_registry):
    line = _error_line(run_cli("models", "show", "nope", registry=cli_registry))
    assert "unknown variant 'nope'" in line and "tiny" in line
    for verb in ("promote", "retire", "remove"):
        assert "unknown variant" in _error_line(
            run_cli("models", verb, "nope", registry=cli_registry)
        )


def test_existing_name_is_refused_and_exist_ok_succeeds(cli_registry, tiny_model_dir):
    line = _error_line(
        run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=cli_registry)
    )
    assert "'tiny' already exists" in line
    proc = run_cli(
        "models",
        "import",
        str(tiny_model_dir),
        "--name",
        "tiny",
        "--exist-ok",
        registry=cli_registry,
    )
    assert proc.returncode == 0 and "already registered" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "../evil"], "invalid variant name '../evil'"),
        (["--name", "UPPER"], "invalid variant name"),
    ],
)
def test_bad_names(cli_registry, tiny_model_dir, args, message):
    line = _error_line(
        run_cli("models", "import", str(tiny_model_dir), *args, registry=cli_registry)
    )
    assert message in line
    assert _registered(cli_registry) == ["tiny"]
    assert not (cli_registry.parent / "evil").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("./no/such/folder", "unknown model"),
        ("some-org/some-model", "hub is not reachable"),
    ],
)
def test_bad_sources(cli_registry, source, message):
    line = _error_line(run_cli("models", "import", source, registry=cli_registry))
    assert message in line
    assert _registered(cli_registry) == ["tiny"]


def test_folder_that_is_not_a_model(cli_registry, tmp_path):
    line = _error_line(run_cli("models", "import", str(tmp_path), registry=cli_registry))
    assert "neither a GGUF file nor a Hugging Face model folder" in line


def test_failed_conversion_check_registers_nothing(cli_registry, tiny_model_dir):
    # bf16 rounding alone exceeds a zero tolerance: the check must fail, and cleanly.
    proc = run_cli(
        "models",
        "import",
        str(tiny_model_dir),
        "--name",
        "strict",
        "--max-rel-error",
        "0",
        registry=cli_registry,
    )
    assert "conversion check failed" in _error_line(proc)
    assert _registered(cli_registry) == ["tiny"]
    assert not (cli_registry / "strict").exists()
    assert list((cli_registry / ".staging").iterdir()) == []


def test_ctrl_c_during_import_leaves_nothing(cli_registry):
    # The packaged default model: loading it takes seconds after the draft appears, so the
    # interrupt lands mid-job.
    proc = subprocess.Popen(
        [
            str(SPARSEGATE),
            "models",
            "import",
            "gemma-3-270m",
            "--name",
            "interrupted",
            "--registry",
            str(cli_registry),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell starts background jobs with SIGINT ignored, and Python keeps it ignored:
        # give the job the default disposition, as a terminal's Ctrl-C would find it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    staging = cli_registry / ".staging"
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("interrupted@") for p in staging.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "draft never appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # 130, or death by SIGINT: CPython re-raises SIGINT at exit when the interrupt first
    # landed in code that torch runs through PyRun_String, even though we handled it.
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "interrupted: nothing was registered" in err
    assert _registered(cli_registry) == ["tiny"]
    assert list(staging.iterdir()) == [] and not (cli_registry / "interrupted").exists()


def test_stage_commands(tmp_path, tiny_model_dir):
    home = tmp_path / "reg"
    assert (
        run_cli("models", "import", str(tiny_model_dir), "--name", "a", registry=home).returncode
        == 0
    )
    assert run_cli("models", "retire", "a", registry=home).returncode == 0
    assert json.loads(run_cli("models", "show", "a", registry=home).stdout)["stage"] == "retired"
    assert run_cli("models", "promote", "a", registry=home).returncode == 0
    assert "in production" in _error_line(run_cli("models", "remove", "a", registry=home))
    proc = run_cli("models", "remove", "a", "--force", registry=home)
    assert proc.returncode == 0 and _registered(home) == [] and not (home / "a").exists()


def test_table_lists_variants(cli_registry):
    proc = run_cli("models", "list", registry=cli_registry)
    assert proc.returncode == 0
    assert "tiny" in proc.stdout and "production" in proc.stdout
