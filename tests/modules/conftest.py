"""moto's server on loopback for the tests of vpn_cloud_put and roles/cloud_gateway."""

from __future__ import annotations

import pytest

from tests.support.moto import moto_server


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """The AWS environment (endpoint, throwaway credentials) of a moto server for this module."""
    with moto_server("127.0.0.1", tmp_path_factory.mktemp("moto") / "moto.log") as env:
        yield env
