"""End-to-end tests run against the lab that scripts/lab.sh up made (scripts/e2e.sh does both)."""

from __future__ import annotations

import re
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files in their numbered order (test_10 after test_9, not after test_1)."""

    def number(item: pytest.Item) -> int:
        found = re.match(r"test_(\d+)_", item.path.name)
        return int(found.group(1)) if found else 0

    items.sort(key=number)  # stable: the order inside a file is kept
