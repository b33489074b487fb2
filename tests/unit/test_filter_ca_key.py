"""The iotistic_vpn_ca_key_pem filter: the issuing CA's key as the cloud API's task takes it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from iotistic_vpn import pki

FILTER = Path(__file__).resolve().parents[2] / "python_plugins" / "filter" / "iotistic_vpn.py"


@pytest.fixture(scope="module")
def filters():
    spec = importlib.util.spec_from_file_location("iotistic_vpn_filters", FILTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()


@pytest.mark.parametrize("passphrase", ["", "correct horse battery"])
def test_the_issuing_key_comes_out_plain_and_matches_its_certificate(filters, tmp_path, passphrase):
    made = pki.ensure_ca(pki.CaFiles.at(tmp_path / "ca"), passphrase=passphrase or None)
    text = filters["iotistic_vpn_ca_key_pem"](str(tmp_path / "ca"), passphrase)
    assert text.startswith("-----BEGIN PRIVATE KEY-----")
    key = load_pem_private_key(text.encode(), None)
    assert key.public_key() == made.ca.cert.public_key()
    # Never the root's key.
    assert key.public_key() != made.ca.root.public_key()


def test_a_wrong_directory_or_missing_passphrase_fails_naming_the_directory(filters, tmp_path):
    missing = rf"CA directory.*{tmp_path}.*root\.crt is missing"
    with pytest.raises(AnsibleFilterError, match=missing):
        filters["iotistic_vpn_ca_key_pem"](str(tmp_path))
    pki.ensure_ca(pki.CaFiles.at(tmp_path / "ca"), passphrase="secret phrase")
    with pytest.raises(AnsibleFilterError, match="it is encrypted: give its passphrase"):
        filters["iotistic_vpn_ca_key_pem"](str(tmp_path / "ca"))
