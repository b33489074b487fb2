"""Both stacks are built once per session, in parallel child processes, and shared."""

from __future__ import annotations

import copy

import pytest

from tests.infra.stackreport import Stack, build, stack_config

STACKS = ("dev", "prod")
# Stacks with one switch turned the other way, built in the same batch: key -> (stack, section,
# key, value).
VARIANTS = {"prod-enrollment-off": ("prod", "api", "enrollment", False)}


@pytest.fixture(scope="session")
def stacks(tmp_path_factory) -> dict[str, Stack]:
    """The dev and prod stacks (and the VARIANTS) as the program declares them under mocks."""
    jobs = {s: [s] for s in STACKS} | {
        key: [stack, "--set", f"{section}.{name}={str(value).lower()}"]
        for key, (stack, section, name, value) in VARIANTS.items()
    }
    results = build(tmp_path_factory.mktemp("stacks"), jobs)
    built = {}
    for key, (rc, report) in results.items():
        assert rc == 0, f"stack {key} failed under mocks: {report['error']}\n{report['traceback']}"
        name, section, option, value = VARIANTS.get(key, (key, None, None, None))
        config = copy.deepcopy(stack_config(name))
        if section:
            config[section][option] = value
        built[key] = Stack(name, report, config)
    return built


@pytest.fixture(params=STACKS)
def stack(request, stacks) -> Stack:
    """Each stack in turn."""
    return stacks[request.param]
