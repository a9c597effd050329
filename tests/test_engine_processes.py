"""How spawned engines share a host: vLLM's CPU worker binds its threads as if it had the
host alone, so several engines on one host are started unbound."""

import os
from pathlib import Path

from app.engines.supervisor import Supervisor
from app.engines.vllm_process import EngineSettings, shared_host_environment


def _settings(name: str, env: dict | None = None) -> EngineSettings:
    return EngineSettings(model=Path("/nowhere"), served_name=name, port=1, env=env or {})


def test_several_engines_on_one_host_are_unbound_unless_the_operator_binds_them(tmp_path):
    alone = Supervisor([_settings("a")], tmp_path)
    assert "VLLM_CPU_OMP_THREADS_BIND" not in alone.engines[0].settings.env
    pair = Supervisor([_settings("a"), _settings("b", {"OMP_NUM_THREADS": "3"})], tmp_path)
    first, second = (e.settings.env for e in pair.engines)
    assert first["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert first["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert second["OMP_NUM_THREADS"] == "3"  # an engine's own setting wins
    bound = {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}
    assert shared_host_environment(3, bound) == {}  # so does the operator's binding
