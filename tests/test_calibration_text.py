"""The built-in calibration text: Python documentation and English prose, alternating,
disjoint from both evaluation texts, pinned by sha256, recorded in the job's report."""

import json
import shutil

import pytest

from app.errors import SparsegateError
from app.job.text import calibration_sources, token_windows
from app.texts.evaluation import EVAL_TEXTS, data_dir
from app.texts.prose import PROSE_FILE, prose_documents
from tests.conftest import run_cli


def test_prose_is_english_articles_without_markup_or_evaluation_text():
    articles = prose_documents(data_dir())
    text = "\n\n".join(articles)
    assert len(articles) > 100 and len(text) > 2_000_000
    assert articles[0].startswith("Anarchism is a political philosophy")
    for markup in ("[[", "]]", "{{", "}}", "<ref", "&lt;", "Category:"):
        assert markup not in text, markup
    for t in EVAL_TEXTS:
        assert not any(p in text for p in t.probes()), t.key


def test_a_changed_prose_file_is_refused(tmp_path):
    shutil.copy(data_dir() / PROSE_FILE, tmp_path / PROSE_FILE)
    with (tmp_path / PROSE_FILE).open("a") as f:
        f.write("one more line\n")
    with pytest.raises(SparsegateError, match="expected sha256"):
        prose_documents(tmp_path)


def test_mixed_windows_alternate_docs_and_prose(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs, prose = calibration_sources("calibration", "mixed", None).values()
    windows = token_windows(tok, "calibration", 6, 64, kind="mixed")
    texts = [tok.decode(w, skip_special_tokens=True) for w in windows]
    assert [t in docs for t in texts] == [True, False] * 3
    assert [t in prose for t in texts] == [False, True] * 3
    pydoc_only = token_windows(tok, "calibration", 6, 64, kind="pydoc")
    assert all(tok.decode(w, skip_special_tokens=True) in docs for w in pydoc_only)
    # Held-out text and a user's own text are never mixed.
    assert list(calibration_sources("evaluation", "mixed", None)) == ["pydoc_data evaluation half"]
    assert list(calibration_sources("calibration", "mixed", "mine")) == ["user file"]


def test_the_report_records_the_calibration_texts(tiny_registry):
    from app.registry.embedded import EmbeddedRegistry

    reports = {}
    for kind in ("mixed", "pydoc"):
        name = f"tiny-calib-{kind}"
        proc = run_cli(
            "compress", "tiny", "--prune", "wanda", "--calibration-text", kind, "--name", name,
            "--calibration-samples", "4", "--eval-windows", "2", registry=tiny_registry,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        reports[kind] = json.loads((tiny_registry / name / "report.json").read_text())
        EmbeddedRegistry(tiny_registry).remove(name)  # the session's registry stays as it was
    mixed, pydoc = reports["mixed"]["calibration"], reports["pydoc"]["calibration"]
    assert list(mixed) == ["pydoc_data calibration half", "English Wikipedia prose"]
    assert list(pydoc) == ["pydoc_data calibration half"]
    assert mixed["English Wikipedia prose"]["bytes"] > 2_000_000
    assert len(mixed["English Wikipedia prose"]["sha256"]) == 64
    assert reports["mixed"]["recipe"]["calibration_text"] == "mixed"
