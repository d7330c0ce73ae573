"""Fixtures. Tests marked ``integration`` run real nodes (LocalMesh): they
are skipped, with the reason, when the binaries cannot be found, and fail
instead when ``AGENTMESH_REQUIRE_SDK_TESTS=1``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agentmesh import Agent, LocalMesh, missing_binaries

REQUIRE = os.environ.get("AGENTMESH_REQUIRE_SDK_TESTS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs the AgentMesh binaries (agentmesh, agentmesh-sim)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is None:
        return
    reason = missing_binaries()
    if reason is None:
        return
    if REQUIRE:
        pytest.fail(f"AGENTMESH_REQUIRE_SDK_TESTS=1 but {reason}", pytrace=False)
    pytest.skip(f"needs the AgentMesh binaries: {reason}")


@pytest.fixture(scope="session")
def mesh() -> Iterator[LocalMesh]:
    """One local network for the whole session: alice, bob, carol, dave."""
    with LocalMesh(n=4) as m:
        yield m


def drain(agent: Agent) -> None:
    """Acknowledges everything waiting in an agent's inbox."""
    while True:
        msgs = agent.messages(wait=0, max=256, lease=5)
        if not msgs:
            return
        agent.ack(msgs)
