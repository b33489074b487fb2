"""The controller filters: the issuing CA's key as the cloud API's task takes it
(iotistic_vpn_ca_key_pem), and the password a published registry login keeps
(iotistic_vpn_login_password)."""

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


def test_a_login_password_given_is_a_rotation_and_wins(filters):
    published = {"user": "iotistic_vpn_gw_prod", "password": "old"}
    assert filters["iotistic_vpn_login_password"](published, "iotistic_vpn_gw_prod", "new") == "new"


def test_a_login_keeps_the_password_its_secret_already_holds(filters):
    published = {"user": "iotistic_vpn_gw_prod", "password": "kept one"}
    assert (
        filters["iotistic_vpn_login_password"](published, "iotistic_vpn_gw_prod", "") == "kept one"
    )


@pytest.mark.parametrize(
    "published",
    [
        {},
        None,
        {"user": "iotistic_vpn_gw_old", "password": "not yours"},
        {"user": "iotistic_vpn_gw_prod"},
    ],
    ids=["nothing-published", "none", "another-login", "no-password"],
)
def test_a_login_with_no_password_of_its_own_gets_a_new_random_one(filters, published):
    choose = filters["iotistic_vpn_login_password"]
    first, second = (choose(published, "iotistic_vpn_gw_prod") for _ in range(2))
    assert first != second
    assert len(first) == 32 and first.isalnum() and first.isascii()
    assert "not yours" not in (first, second)


def test_a_published_login_that_is_not_a_mapping_fails_naming_its_type(filters):
    with pytest.raises(AnsibleFilterError, match="must be a mapping, not str"):
        filters["iotistic_vpn_login_password"]("user=x password=y", "iotistic_vpn_gw_prod")
