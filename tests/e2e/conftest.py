"""End-to-end tests run against the lab that scripts/lab.sh up made (scripts/e2e.sh does both)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.lab import API, GATEWAYS, REGISTRY, lab_problem


@pytest.fixture(scope="session", autouse=True)
def lab() -> None:
    """Fail every test at once, saying how to fix it, when the lab is not up."""
    deadline = time.monotonic() + 60  # the tunnels of a lab that was just converged may lag
    while (problem := lab_problem([REGISTRY, *GATEWAYS, API])) and time.monotonic() < deadline:
        if not problem.startswith("device"):
            break  # a missing container or registry is not something waiting mends
        time.sleep(1)
    if problem:
        pytest.fail(
            f"the lab is not up ({problem}); start it with scripts/lab.sh up", pytrace=False
        )
