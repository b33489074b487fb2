"""Revocation: the CRL as state, its refresh, and OpenVPN's crl-verify directory layout."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from iotistic_vpn import pki
from iotistic_vpn.crldir import CrlDir
from iotistic_vpn.errors import InvalidValue

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ca")
    pki.ensure_ca(pki.CaFiles.at(path))
    return path


@pytest.fixture(scope="module")
def ca(ca_dir) -> pki.IssuingCA:
    return pki.load_issuing_ca(ca_dir)


def load(path: Path | str) -> x509.CertificateRevocationList:
    return pki.pem_crl(Path(path).read_bytes(), str(path))


def openssl_crl(ca_dir: Path, crl: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "crl", "-in", str(crl), "-CAfile", str(ca_dir / pki.CA_CHAIN), "-noout"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_crl_holds_entries_reasons_and_next_update_and_openssl_verifies_it(ca, ca_dir, tmp_path):
    path = tmp_path / "crl.pem"
    when = dt.datetime(2026, 1, 31, 12, 0, tzinfo=dt.UTC)
    result = pki.ensure_crl(
        ca, path,
        [pki.Revocation.parse(1001, when.isoformat(), "key_compromise"),
         pki.Revocation.parse("0x3f2", reason="unspecified")],
        next_update=dt.timedelta(days=7), refresh_before=dt.timedelta(days=2), now=NOW,
    )  # fmt: skip
    assert (result.entries, result.number, result.added) == (2, 1, [1001, 1010])
    assert openssl_crl(ca_dir, path).stderr.strip() == "verify OK"

    crl = load(path)
    assert crl.next_update_utc == NOW + dt.timedelta(days=7)
    assert crl.last_update_utc <= NOW
    entries = {r.serial: r for r in pki.crl_revocations(crl)}
    assert entries[1001] == pki.Revocation(1001, when, "key_compromise")
    assert entries[1010] == pki.Revocation(1010, NOW, None)  # "unspecified" is left out
    assert crl.issuer == ca.cert.subject
    assert pki.crl_number(crl) == 1


def test_present_merges_exact_replaces_and_a_second_run_signs_nothing(ca, tmp_path):
    path = tmp_path / "crl.pem"
    pki.ensure_crl(ca, path, [pki.Revocation(1)], now=NOW)
    merged = pki.ensure_crl(ca, path, [pki.Revocation(2)], now=NOW)
    assert (merged.added, merged.entries, merged.number) == ([2], 2, 2)
    before = path.read_bytes()
    again = pki.ensure_crl(ca, path, [pki.Revocation(2)], now=NOW)
    assert not again.changed and again.added == [] and path.read_bytes() == before

    exact = pki.ensure_crl(ca, path, [pki.Revocation(2), pki.Revocation(3)], exact=True, now=NOW)
    assert (exact.added, exact.removed, exact.entries) == ([3], [1], 2)
    assert {r.serial for r in pki.crl_revocations(load(path))} == {2, 3}


def test_existing_entries_keep_their_date_unless_given_explicitly(ca, tmp_path):
    path = tmp_path / "crl.pem"
    first = NOW - dt.timedelta(days=3)
    pki.ensure_crl(ca, path, [pki.Revocation(7, first)], now=NOW)
    pki.ensure_crl(ca, path, [pki.Revocation(7)], now=NOW + dt.timedelta(hours=1))
    assert pki.crl_revocations(load(path))[0].revoked_at == first
    changed = pki.ensure_crl(ca, path, [pki.Revocation(7, reason="superseded")], now=NOW)
    assert changed.updated == [7]
    assert pki.crl_revocations(load(path))[0] == pki.Revocation(7, first, "superseded")


def test_crl_is_resigned_when_next_update_comes_near(ca, tmp_path):
    path = tmp_path / "crl.pem"
    pki.ensure_crl(ca, path, [pki.Revocation(5)], next_update=dt.timedelta(days=30), now=NOW)
    crl = load(path)
    assert not pki.crl_needs_refresh(crl, dt.timedelta(days=10), now=NOW)
    soon = NOW + dt.timedelta(days=25)
    assert pki.crl_needs_refresh(crl, dt.timedelta(days=10), now=soon)
    refreshed = pki.ensure_crl(ca, path, [], refresh_before=dt.timedelta(days=10), now=soon)
    assert refreshed.signed and refreshed.added == [] and refreshed.entries == 1
    assert load(path).next_update_utc == soon + pki.CRL_NEXT_UPDATE
    assert refreshed.before["number"] == 1 and refreshed.number == 2


def test_crl_signed_by_another_ca_is_resigned_by_this_one(ca, ca_dir, tmp_path):
    other = pki.ensure_ca(pki.CaFiles.at(tmp_path / "other")).ca
    path = tmp_path / "crl.pem"
    pki.ensure_crl(other, path, [pki.Revocation(9)], now=NOW)
    result = pki.ensure_crl(ca, path, [], now=NOW)
    assert result.signed and result.entries == 1
    assert openssl_crl(ca_dir, path).stderr.strip() == "verify OK"


def test_check_mode_writes_nothing(ca, tmp_path):
    result = pki.ensure_crl(
        ca, tmp_path / "crl.pem", [pki.Revocation(4)], crl_dir=tmp_path / "dir", write=False
    )
    assert result.changed and result.dir_added == [4]
    assert list(tmp_path.iterdir()) == []


def test_crl_verify_dir_has_one_empty_file_per_decimal_serial(ca, tmp_path):
    crl_dir = tmp_path / "revoked"
    serial = 0x1F_FFFF_FFFF_FFFF_FFFF  # a serial whose hex and decimal forms differ
    result = pki.ensure_crl(
        ca, tmp_path / "crl.pem", [pki.Revocation(serial), pki.Revocation(12)], crl_dir=crl_dir
    )
    assert result.dir_added == [12, serial]
    assert sorted(p.name for p in crl_dir.iterdir()) == sorted([str(serial), "12"])
    assert all(p.stat().st_size == 0 for p in crl_dir.iterdir())

    (crl_dir / "README").write_text("kept: not a serial\n")
    again = pki.ensure_crl(
        ca, tmp_path / "crl.pem", [pki.Revocation(12)], exact=True, crl_dir=crl_dir
    )
    assert (again.dir_added, again.dir_removed) == ([], [serial])
    assert sorted(p.name for p in crl_dir.iterdir()) == ["12", "README"]
    assert CrlDir(crl_dir).mirror([12]) == ([], [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"serial": "xyz"}, "invalid serial 'xyz'"),
        ({"serial": 5, "reason": "lost"}, "invalid revocation reason 'lost': use one of"),
        ({"serial": 5, "revoked_at": "yesterday"}, "invalid revoked_at 'yesterday'"),
    ],
)
def test_bad_revocations_are_named(kwargs, message):
    with pytest.raises(InvalidValue, match=message):
        pki.Revocation.parse(**kwargs)


def test_a_malformed_crl_file_is_named(ca, tmp_path):
    path = tmp_path / "crl.pem"
    path.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(InvalidValue, match=rf"invalid CRL '{path}': malformed CRL"):
        pki.ensure_crl(ca, path, [])


def test_large_crl_reuses_old_entries_and_stays_in_one_pass(ca, tmp_path):
    path = tmp_path / "crl.pem"
    pki.ensure_crl(ca, path, [pki.Revocation(s) for s in range(1, 20_001)], now=NOW)
    added = pki.ensure_crl(ca, path, [pki.Revocation(50_000)], now=NOW)
    assert (added.entries, added.added) == (20_001, [50_000])
    crl = load(path)
    assert crl.get_revoked_certificate_by_serial_number(19_999) is not None
    assert crl.is_signature_valid(ca.cert.public_key())


def test_a_refresh_window_as_long_as_next_update_is_refused(ca, tmp_path):
    # Otherwise every run would re-sign the CRL.
    with pytest.raises(InvalidValue, match=r"CRL refresh window '10 days': must be shorter"):
        pki.ensure_crl(ca, tmp_path / "crl.pem", [], next_update=dt.timedelta(days=7))
    assert not (tmp_path / "crl.pem").exists()
