"""Fixtures shared by the gateway's integration tests (the harness is in tests/support)."""

from tests.support.gateway_harness import fleet, start_gateway

__all__ = ["fleet", "start_gateway"]
