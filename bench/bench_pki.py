"""PKI benchmark: iotistic_vpn.pki against raw `cryptography`, easy-rsa 3 and a naive CRL build.

Each ratio comes from PAIRS interleaved pairs of trials (bench/ratios.py): the median with its
min and max. easy-rsa makes some 10 certificates/s, so its trials are N_EASYRSA certificates each.
Prints a table and the ratios; asserts nothing about time. Runs in well under a minute:
  .venv/bin/python bench/bench_pki.py
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ratios import Ratio, alternate, interleaved
from iotistic_vpn import pki
from iotistic_vpn.crldir import CrlDir

EASYRSA = Path("/usr/share/easy-rsa/easyrsa")
# Files go under the repo's build/: on this machine /tmp creates files ~30x slower than the
# same disk elsewhere (0.2 ms against 0.007 ms), which would measure /tmp, not the PKI.
WORK_ROOT = Path(__file__).resolve().parents[1] / "build"
PAIRS = 7
N_ISSUE = 2000  # certificates per issuance trial
N_EASYRSA = 3  # per easy-rsa trial: a process per step, some 0.1 s a certificate
N_CENTRAL = 500
N_CRL = 100_000
N_NAIVE = 25_000  # one-by-one CRL builder; extrapolated to N_CRL (it is quadratic)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of fn takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_csrs(n: int) -> list[bytes]:
    csrs = []
    for _ in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        csrs.append(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return csrs


def raw_issue(ca: pki.IssuingCA, csr_pem: bytes, customer: str, device: str) -> x509.Certificate:
    """The same work as the package, written directly against `cryptography`."""
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("bad CSR")
    now = dt.datetime.now(dt.UTC)
    public_key = csr.public_key()
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, customer),
                    x509.NameAttribute(NameOID.COMMON_NAME, device),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=730))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"urn:iotistic:{customer}:{device}")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def package_trial(ca: pki.IssuingCA, csrs: list[bytes]) -> Callable[[], float]:
    """One trial: certificates per second from CSRs through iotistic_vpn.pki."""

    def trial() -> float:
        def run() -> None:
            for i, pem in enumerate(csrs):
                csr = pki.load_device_csr(pem, "acme", f"dev-{i}")
                pki.issue_device_cert(ca, "acme", f"dev-{i}", csr.public_key())

        return len(csrs) / timed(run)

    return trial


def raw_trial(ca: pki.IssuingCA, csrs: list[bytes]) -> Callable[[], float]:
    """One trial: certificates per second from the same CSRs, raw `cryptography`."""

    def trial() -> float:
        def run() -> None:
            for i, pem in enumerate(csrs):
                raw_issue(ca, pem, "acme", f"dev-{i}")

        return len(csrs) / timed(run)

    return trial


def central_trial(ca: pki.IssuingCA) -> Callable[[], float]:
    """One trial: what build-client-full does, the module's way (key made here, cert, files)."""

    def trial() -> float:
        with tempfile.TemporaryDirectory(dir=WORK_ROOT) as tmp:
            requests = [
                pki.DeviceRequest("acme", f"dev-{i}", generate_key=True) for i in range(N_CENTRAL)
            ]
            return N_CENTRAL / timed(lambda: pki.ensure_device_certs(ca, requests, tmp))

    return trial


def easyrsa_trial(workdir: Path) -> Callable[[], float] | None:
    """One trial: N_EASYRSA `build-client-full NAME nopass` (EC P-256, batch mode), per second."""
    if not EASYRSA.exists() or shutil.which("openssl") is None:
        return None
    env = {
        **os.environ,
        "EASYRSA_BATCH": "1",
        "EASYRSA_PKI": str(workdir / "pki"),
        "EASYRSA_ALGO": "ec",
        "EASYRSA_CURVE": "prime256v1",
    }

    def easyrsa(*args: str) -> None:
        subprocess.run([str(EASYRSA), *args], env=env, cwd=workdir, capture_output=True,
                       check=True, timeout=60)  # fmt: skip

    workdir.mkdir(parents=True, exist_ok=True)
    easyrsa("init-pki")
    subprocess.run(
        [str(EASYRSA), "build-ca", "nopass"], env={**env, "EASYRSA_REQ_CN": "bench"},
        cwd=workdir, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    names = count()

    def trial() -> float:
        def run() -> None:
            for _ in range(N_EASYRSA):
                easyrsa("build-client-full", f"dev-{next(names)}", "nopass")

        return N_EASYRSA / timed(run)

    return trial


def bench_crl(ca: pki.IssuingCA, workdir: Path) -> tuple[Ratio, dict]:
    """The one-pass build of N_CRL serials against the one-by-one builder, paired trials.

    The one-by-one builder is quadratic: each of its trials builds N_NAIVE serials and its time
    is extrapolated to N_CRL.
    """
    revocations = [pki.Revocation(x509.random_serial_number()) for _ in range(N_CRL)]
    entries = [
        x509.RevokedCertificateBuilder()
        .serial_number(r.serial)
        .revocation_date(dt.datetime.now(dt.UTC))
        .build()
        for r in revocations[:N_NAIVE]
    ]
    scale = (N_CRL / N_NAIVE) ** 2

    def one_pass() -> float:
        return timed(lambda: pki.build_crl(ca, revocations))

    def one_by_one() -> float:
        builder = x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
        builder = builder.last_update(dt.datetime.now(dt.UTC))
        builder = builder.next_update(dt.datetime.now(dt.UTC) + dt.timedelta(days=7))

        def run() -> None:
            b = builder
            for entry in entries:
                b = b.add_revoked_certificate(entry)
            b.sign(ca.key, hashes.SHA256())

        return timed(run) * scale

    ratio = interleaved(
        one_pass, one_by_one, PAIRS, name=f"ratio one-pass / one-by-one CRL, {N_CRL:,} serials",
        higher_is_better=False,
    )  # fmt: skip

    out: dict = {"scale": scale}
    crl = pki.build_crl(ca, revocations)
    out["der"] = len(crl.public_bytes(serialization.Encoding.DER))
    pem = crl.public_bytes(serialization.Encoding.PEM)
    out["pem"] = len(pem)
    path = workdir / "crl.pem"
    path.write_bytes(pem)
    start = time.perf_counter()
    added = pki.ensure_crl(ca, path, [pki.Revocation(12345)])
    out["add_one"] = time.perf_counter() - start
    assert added.entries == N_CRL + 1
    start = time.perf_counter()
    CrlDir(workdir / "crl.d").mirror(r.serial for r in revocations)
    out["dir"] = time.perf_counter() - start
    return ratio, out


def main() -> None:
    WORK_ROOT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-pki-", dir=WORK_ROOT) as tmp:
        workdir = Path(tmp)
        ca = pki.ensure_ca(pki.CaFiles.at(workdir / "ca")).ca
        csrs = make_csrs(N_ISSUE)
        package = package_trial(ca, csrs)
        issuance = interleaved(
            package, raw_trial(ca, csrs), PAIRS, name="ratio package / raw cryptography",
            goal=0.8,
        )  # fmt: skip
        easyrsa = easyrsa_trial(workdir / "easyrsa")
        trials = {"central": central_trial(ca)}
        if easyrsa is not None:
            trials |= {"from_csr": package, "easyrsa": easyrsa}
        runs = alternate(trials, PAIRS)
        central_rate = statistics.median(runs["central"])
        vs_easyrsa = []
        if easyrsa is not None:
            vs_easyrsa = [
                Ratio.of(f"ratio package / easy-rsa, {what}", runs[key], runs["easyrsa"],
                         goal=100)
                for key, what in (("central", "key+cert+files"), ("from_csr", "cert from CSR"))
            ]  # fmt: skip
        crl_ratio, crl = bench_crl(ca, workdir)

    def row(label: str, value: str) -> None:
        print(f"  {label:58} {value:>16}")

    print(f"PKI benchmark (EC P-256, one process, medians of {PAIRS} interleaved trials)")
    row("device cert from CSR, iotistic_vpn.pki", f"{issuance.subject_median:,.0f}/s")
    row("device cert from CSR, raw cryptography (same work)", f"{issuance.anchor_median:,.0f}/s")
    row("key + cert + files, ensure_device_certs(generate_key)", f"{central_rate:,.0f}/s")
    if vs_easyrsa:
        row("key + CSR + cert + files, easy-rsa build-client-full",
            f"{vs_easyrsa[0].anchor_median:,.1f}/s")  # fmt: skip
    row(f"CRL of {N_CRL:,} serials: build + sign", f"{crl_ratio.subject_median:.2f}s")
    row("CRL size DER / PEM", f"{crl['der'] / 1e6:.1f} / {crl['pem'] / 1e6:.1f} MB")
    row(f"add 1 serial to the {N_CRL:,}-entry CRL (ensure_crl)", f"{crl['add_one']:.2f}s")
    row(f"crl-verify dir: {N_CRL:,} empty files", f"{crl['dir']:.2f}s")
    row(f"one-by-one CRL builder, {N_NAIVE:,} serials (measured)",
        f"{crl_ratio.anchor_median / crl['scale']:.2f}s")  # fmt: skip
    row(f"one-by-one CRL builder, {N_CRL:,} (x{crl['scale']:.0f})",
        f"{crl_ratio.anchor_median:.1f}s")  # fmt: skip
    print()
    width = 50
    issuance.row(width)
    for ratio in vs_easyrsa:
        ratio.row(width, ".0f", "x")
    crl_ratio.row(width, ".0f", "x")


if __name__ == "__main__":
    main()
