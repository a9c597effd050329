"""Schema-driven fuzzing of the gateway (schemathesis) with a real tiny vLLM engine behind it.

Schemathesis reads the gateway's own OpenAPI document (request bodies with this deployment's
caps, every error status in OpenAI's format) and sends generated bodies, valid and invalid,
to every /v1 route. The bar: no answer of 500 or above, every status documented, every error
body in OpenAI's format. Seeded, so a run is reproducible."""

import json
import subprocess
import sys
from pathlib import Path

SCHEMATHESIS = Path(sys.prefix) / "bin" / "schemathesis"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"  # noqa: E501


def test_fuzzing_the_gateway_finds_no_server_error(tiny_engines, start_gateway, tmp_path, capsys):
    # Short generations keep hundreds of cases within a minute or two on 2 cores.
    url = start_gateway(
        {
            "gateway": {"max_tokens_cap": 16, "default_max_tokens": 8, "max_n": 2},
            "variants": {"tiny-a": {"url": tiny_engines["tiny-a"]}},
            "aliases": {"tiny": {"split": {"tiny-a": 1.0}}},
        },
        "--no-access-log",
    )
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", CHECKS,
         "--include-path-regex", "^/v1/", "--max-examples", "250", "--seed", "20261129",
         "--workers", "2", "--no-color", "--report", "json", "--report-json-path", str(report),
         "--generation-database", "none", "--request-timeout", "60"],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path,  # its cache stays there
    )  # fmt: skip
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    with capsys.disabled():  # the figure belongs in the CI log
        cases = result["test_cases"]
        print(f"\nschemathesis: {cases['generated']} cases generated, {cases['with_failures']} "
              f"with failures, in {result['running_time']:.0f} s")  # fmt: skip
    assert result["operations"]["tested"] == 5
    assert result["test_cases"]["generated"] >= 500
    assert result["failures"] == [] and result["errors"] == [], proc.stdout[-6000:]
    assert proc.returncode == 0, proc.stdout[-3000:]
