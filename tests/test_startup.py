"""A part that cannot do its job refuses to start, and says why; none answers with a simulator by accident."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rankstream.settings import Settings

WITHOUT_LLM = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}


def rankstream(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rankstream", *args], env=env, capture_output=True, text=True, timeout=60
    )


class TestNoLLMConfigured:
    def test_the_worker_exits_non_zero_saying_how_to_point_it_at_an_llm(self, settings: Settings) -> None:
        env = {**WITHOUT_LLM, "REDIS_URL": settings.redis_url or "", "RANKSTREAM_METRICS_PORT": "0"}
        result = rankstream(["worker", "--burst"], env)

        assert result.returncode == 2
        for hint in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "rankstream llm-sim"):
            assert hint in result.stderr

    def test_a_worker_runtime_cannot_be_built_without_one(self, settings: Settings) -> None:
        from rankstream.exceptions import LLMNotConfigured
        from worker.runtime import Runtime

        with pytest.raises(LLMNotConfigured):
            Runtime(settings)


class TestBadSettingsAreNamed:
    @pytest.mark.parametrize(
        ("variable", "value", "named"),
        [
            ("RANKSTREAM_CONCURRENCY", "0", "RANKSTREAM_CONCURRENCY"),
            ("RANKSTREAM_LOG_LEVEL", "loud", "RANKSTREAM_LOG_LEVEL"),
            ("RANKSTREAM_LEASE_SECONDS", "120", "RANKSTREAM_LEASE_SECONDS"),
            ("REDIS_URL", "http://127.0.0.1:6379", "REDIS_URL"),
        ],
    )
    def test_every_command_refuses_a_bad_value_naming_the_variable(
        self, variable: str, value: str, named: str
    ) -> None:
        for command in (["worker"], ["enqueue", "-"], ["watch", "0" * 28]):
            result = rankstream(command, {**os.environ, variable: value})
            assert result.returncode != 0
            assert result.stderr.startswith(f"rankstream: {named}: "), result.stderr
            assert "Traceback" not in result.stderr


class TestLayers:
    def test_importing_the_worker_loads_no_web_framework_and_no_simulator(self) -> None:
        probe = (
            "import sys, worker.job, worker.runner, producer, producer.aio; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'rankstream.simulator', "
            "'rankstream.cli', 'rankstream.dev') if m in sys.modules))"
        )
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"

    def test_every_module_of_the_shared_base_is_in_its_import_contract(self) -> None:
        # The contract names its modules one by one: a new one left out would go unchecked.
        root = Path(__file__).resolve().parents[1]
        pyproject = tomllib.loads((root / "pyproject.toml").read_text())
        contract = next(
            c
            for c in pyproject["tool"]["importlinter"]["contracts"]
            if c["name"] == "the shared base imports nothing above it"
        )
        modules = {
            f"rankstream.{path.stem}"
            for path in (root / "rankstream").glob("*.py")
            if path.stem not in ("__init__", "__main__")
        }

        assert modules, "no shared modules found"
        assert modules - set(contract["source_modules"]) == set()
