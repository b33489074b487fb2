"""images/api/iotistic-api-start: the PEMs ECS injects as variables become the files the task's
settings name (keys 0600), and leave the environment the API starts with."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from tests.infra.stackreport import REPO

START = REPO / "images" / "api" / "iotistic-api-start"
PYTHON = "/opt/iotistic-vpn/api/bin/python -m iotistic_vpn.api"
# In place of the API: print the environment it would start with.
DUMP_ENV = f"{sys.executable} -c 'import json, os, sys; json.dump(dict(os.environ), sys.stdout)'"


def _pem(label: str) -> str:
    return f"-----BEGIN {label}-----\nMIIB{label.replace(' ', '')}\n-----END {label}-----"


def _start(tmp_path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    script = tmp_path / "start"
    text = START.read_text()
    assert text.count(PYTHON) == 1
    script.write_text(text.replace(PYTHON, DUMP_ENV))
    done = subprocess.run(["/bin/sh", str(script)], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done, json.loads(done.stdout) if done.returncode == 0 else {}


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_written(files: dict, values: dict[str, str]) -> None:
    """Each variable's PEM is in its file (variable -> (path, mode)), with that mode."""
    for var, (path, mode) in files.items():
        assert path.read_text() == values[var] + "\n", var
        assert _mode(path) == mode, f"{path}: {oct(_mode(path))}"


def test_enrollment_pems_become_the_ca_directory_and_the_tls_crypt_key(tmp_path):
    run = tmp_path / "run"
    values = {
        "IOTISTIC_PEM_ENROLL_CA_CERT": _pem("CERTIFICATE"),
        "IOTISTIC_PEM_ENROLL_CA_KEY": _pem("EC PRIVATE KEY"),
        "IOTISTIC_PEM_ENROLL_CA_CHAIN": _pem("CERTIFICATE") + "\n" + _pem("CERTIFICATE"),
        "IOTISTIC_PEM_ENROLL_ROOT_CERT": _pem("ROOT CERTIFICATE"),
        "IOTISTIC_PEM_ENROLL_TLS_CRYPT_SERVER_KEY": _pem("OpenVPN tls-crypt-v2 server key"),
        "IOTISTIC_PEM_TUNNEL_KEY": _pem("PRIVATE KEY"),
        "IOTISTIC_PEM_REGISTRY_CA": _pem("CERTIFICATE"),
    }
    done, env = _start(tmp_path, {
        **values,
        "IOTISTIC_API_ENROLL_PKI_DIR": str(run / "enroll"),
        "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY": str(run / "tls-crypt-v2-server.key"),
        "IOTISTIC_API_TUNNEL_KEY": str(run / "tunnel.key"),
        "PGSSLROOTCERT": str(run / "registry-ca.pem"),
    })  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = {
        "IOTISTIC_PEM_ENROLL_CA_CERT": (run / "enroll" / "ca.crt", 0o644),
        "IOTISTIC_PEM_ENROLL_CA_KEY": (run / "enroll" / "ca.key", 0o600),
        "IOTISTIC_PEM_ENROLL_CA_CHAIN": (run / "enroll" / "ca-chain.crt", 0o644),
        "IOTISTIC_PEM_ENROLL_ROOT_CERT": (run / "enroll" / "root.crt", 0o644),
        "IOTISTIC_PEM_ENROLL_TLS_CRYPT_SERVER_KEY": (run / "tls-crypt-v2-server.key", 0o600),
        "IOTISTIC_PEM_TUNNEL_KEY": (run / "tunnel.key", 0o600),
        "IOTISTIC_PEM_REGISTRY_CA": (run / "registry-ca.pem", 0o644),
    }
    _assert_written(files, values)
    # Exactly the CA directory the API reads (pki.CaFiles), and no root key in it.
    assert sorted(p.name for p in (run / "enroll").iterdir()) == [
        "ca-chain.crt", "ca.crt", "ca.key", "root.crt"
    ]  # fmt: skip
    # The API starts with the file settings, never the PEM text.
    assert not [name for name in env if name.startswith("IOTISTIC_PEM_")]
    assert env["IOTISTIC_API_ENROLL_PKI_DIR"] == str(run / "enroll")


def test_the_renewal_listeners_pems_become_its_tls_files(tmp_path):
    """The API's own HTTPS listener (the gateways' renewals): certificate, key 0600, client CA."""
    run = tmp_path / "run"
    values = {
        "IOTISTIC_PEM_TLS_CERT": _pem("CERTIFICATE"),
        "IOTISTIC_PEM_TLS_KEY": _pem("EC PRIVATE KEY"),
        "IOTISTIC_PEM_TLS_CLIENT_CA": _pem("CERTIFICATE") + "\n" + _pem("CERTIFICATE"),
        "IOTISTIC_PEM_TUNNEL_CERT": _pem("CERTIFICATE"),
    }
    files = {
        "IOTISTIC_PEM_TLS_CERT": (run / "tls.crt", 0o644),
        "IOTISTIC_PEM_TLS_KEY": (run / "tls.key", 0o600),
        "IOTISTIC_PEM_TLS_CLIENT_CA": (run / "tls-client-ca.pem", 0o644),
        "IOTISTIC_PEM_TUNNEL_CERT": (run / "tunnel.crt", 0o644),
    }
    settings = {var.replace("_PEM_", "_API_"): str(path) for var, (path, _mode) in files.items()}
    done, env = _start(tmp_path, {**values, **settings})
    assert done.returncode == 0, done.stderr
    _assert_written(files, values)
    assert not [name for name in env if name.startswith("IOTISTIC_PEM_")]
    assert {name: env[name] for name in settings} == settings


def test_nothing_given_writes_nothing(tmp_path):
    done, env = _start(tmp_path, {"IOTISTIC_API_ENROLL_PKI_DIR": str(tmp_path / "enroll")})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "enroll").exists()
    assert env["IOTISTIC_API_ENROLL_PKI_DIR"] == str(tmp_path / "enroll")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"IOTISTIC_PEM_ENROLL_CA_KEY": "x"},
            "IOTISTIC_PEM_ENROLL_CA_KEY is set, so IOTISTIC_API_ENROLL_PKI_DIR must name its "
            "directory",
        ),
        (
            {"IOTISTIC_PEM_TLS_KEY": "x"},
            "IOTISTIC_PEM_TLS_KEY is set, so IOTISTIC_API_TLS_KEY must name its file",
        ),
        (
            {"IOTISTIC_PEM_ENROLL_TLS_CRYPT_SERVER_KEY": "x"},
            "IOTISTIC_PEM_ENROLL_TLS_CRYPT_SERVER_KEY is set, so "
            "IOTISTIC_API_ENROLL_TLS_CRYPT_SERVER_KEY must name its file",
        ),
    ],
)
def test_a_pem_without_its_file_setting_stops_the_start_naming_both(tmp_path, given, message):
    done, _ = _start(tmp_path, given)
    assert done.returncode != 0
    assert message in done.stderr
