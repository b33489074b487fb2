"""The crl-verify directory: the agent's add-only sync, decimal names, readable after privdrop."""

from __future__ import annotations

import os
import stat

from iotistic_vpn.crldir import CrlDir

BIG = (1 << 159) + 7


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_serials_become_empty_world_readable_files_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        crl = CrlDir(tmp_path / "crl.d")
        assert crl.sync([BIG, 42]) == [42, BIG]
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path / "crl.d")) == sorted(["42", str(BIG)])
    assert _mode(tmp_path / "crl.d") == 0o755
    assert _mode(tmp_path / "crl.d" / "42") == 0o644
    assert (tmp_path / "crl.d" / str(BIG)).stat().st_size == 0
    assert len(crl) == 2


def test_only_new_serials_are_written_and_none_is_ever_removed(tmp_path):
    (tmp_path / "crl.d").mkdir()
    (tmp_path / "crl.d" / "7").touch()
    (tmp_path / "crl.d" / "README").touch()
    crl = CrlDir(tmp_path / "crl.d")
    assert crl.sync([7, 8]) == [8]
    assert crl.sync([8]) == []  # 7 left the registry (its device was removed): it stays
    assert sorted(os.listdir(tmp_path / "crl.d")) == ["7", "8", "README"]


def test_a_directory_removed_behind_its_back_is_rebuilt(tmp_path):
    crl = CrlDir(tmp_path / "crl.d")
    crl.sync([1, 2])
    for name in ("1", "2"):
        (tmp_path / "crl.d" / name).unlink()
    (tmp_path / "crl.d").rmdir()
    assert crl.sync([1, 2, 3]) == [1, 2, 3]


def test_revoked_devices_get_one_file_each_beside_crl_d_and_none_is_removed(tmp_path):
    from iotistic_vpn.crldir import RevokedDevices
    from iotistic_vpn.registry.models import DeviceGrant

    def grant(device, state):
        return DeviceGrant(device, "acme", None, state, frozenset())

    old = os.umask(0o077)
    try:
        revoked = RevokedDevices.beside(tmp_path / "crl.d")
        devices = [grant("dev-a", "active"), grant("dev-r", "revoked")]
        assert revoked.sync(devices) == ["dev-r"]
    finally:
        os.umask(old)
    assert revoked.path == tmp_path / "revoked-devices.d"
    assert os.listdir(revoked.path) == ["dev-r"]
    assert _mode(revoked.path) == 0o755 and _mode(revoked.path / "dev-r") == 0o644
    # dev-r's row is gone (the device was removed), dev-b is revoked now: dev-r stays.
    assert revoked.sync([grant("dev-a", "active"), grant("dev-b", "revoked")]) == ["dev-b"]
    assert sorted(os.listdir(revoked.path)) == ["dev-b", "dev-r"]
    assert RevokedDevices(revoked.path).sync([grant("dev-b", "revoked")]) == []  # rescanned
