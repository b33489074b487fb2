"""Both stacks are built once per session, in parallel child processes, and shared."""

from __future__ import annotations

import pytest

from tests.infra.stackreport import Stack, build, stack_config

STACKS = ("dev", "prod")


@pytest.fixture(scope="session")
def stacks(tmp_path_factory) -> dict[str, Stack]:
    """The dev and prod stacks as the program declares them under mocks."""
    results = build(tmp_path_factory.mktemp("stacks"), {s: [s] for s in STACKS})
    built = {}
    for name, (rc, report) in results.items():
        assert rc == 0, f"stack {name} failed under mocks: {report['error']}\n{report['traceback']}"
        built[name] = Stack(name, report, stack_config(name))
    return built


@pytest.fixture(params=STACKS)
def stack(request, stacks) -> Stack:
    """Each stack in turn."""
    return stacks[request.param]
