"""Every example runs standalone and ends well."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("[0-9]*.py"))


def test_the_examples_are_there() -> None:
    for name in (
        "01_two_agents.py",
        "02_request_response.py",
        "03_policy_refuses.py",
        "04_offline_mailbox.py",
    ):
        assert name in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script: str) -> None:
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
