"""Every example runs standalone and ends well."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("[0-9]*.py"))
#: Examples that need the ``a2a`` extra (the official A2A SDK, uvicorn).
NEEDS_A2A = {"05_a2a.py"}
REQUIRE = os.environ.get("AGENTMESH_REQUIRE_SDK_TESTS") == "1"


def test_the_examples_are_there() -> None:
    for name in (
        "01_two_agents.py",
        "02_request_response.py",
        "03_policy_refuses.py",
        "04_offline_mailbox.py",
        "05_a2a.py",
    ):
        assert name in SCRIPTS


def a2a_missing() -> str | None:
    """Why the ``a2a`` extra cannot be used, or ``None``."""
    for module in ("a2a.client", "a2a.server.routes", "uvicorn", "starlette"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            return str(e)
    return None


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script: str) -> None:
    if script in NEEDS_A2A:
        missing = a2a_missing()
        if missing and REQUIRE:
            pytest.fail(
                f"AGENTMESH_REQUIRE_SDK_TESTS=1 but the a2a extra is not installed: {missing}",
                pytrace=False,
            )
        if missing:
            pytest.skip(f"needs the a2a extra (pip install './sdk/python[test,a2a]'): {missing}")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "ok:" in proc.stdout, proc.stdout
