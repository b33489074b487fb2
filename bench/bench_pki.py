"""PKI benchmark: iotistic_vpn.pki against raw `cryptography`, easy-rsa 3 and a naive CRL build.

Prints a table and ratios; asserts nothing about time. Runs in well under a minute:
  .venv/bin/python bench/bench_pki.py
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotistic_vpn import pki

EASYRSA = Path("/usr/share/easy-rsa/easyrsa")
# Files go under the repo's build/: on this machine /tmp creates files ~30x slower than the
# same disk elsewhere (0.2 ms against 0.007 ms), which would measure /tmp, not the PKI.
WORK_ROOT = Path(__file__).resolve().parents[1] / "build"
N_ISSUE = 2000
N_EASYRSA = 20
N_CENTRAL = 500
N_CRL = 100_000
N_NAIVE = 25_000  # one-by-one CRL builder; extrapolated to N_CRL (it is quadratic)


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def best_of(runs: int, fn) -> float:
    """Best wall time of several runs: the machine is shared, the minimum is the signal."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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


def bench_issuance(ca: pki.IssuingCA) -> tuple[float, float]:
    csrs = make_csrs(N_ISSUE)

    def package() -> None:
        for i, pem in enumerate(csrs):
            csr = pki.load_device_csr(pem, "acme", f"dev-{i}")
            pki.issue_device_cert(ca, "acme", f"dev-{i}", csr.public_key())

    def raw() -> None:
        for i, pem in enumerate(csrs):
            raw_issue(ca, pem, "acme", f"dev-{i}")

    package()  # warm up both paths once
    raw()
    return best_of(3, package), best_of(3, raw)


def bench_easyrsa(workdir: Path) -> float | None:
    """Seconds for N_EASYRSA `build-client-full NAME nopass` (EC P-256, batch mode)."""
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
    start = time.perf_counter()
    for i in range(N_EASYRSA):
        easyrsa("build-client-full", f"dev-{i}", "nopass")
    return time.perf_counter() - start


def bench_central_keys(ca: pki.IssuingCA, n: int) -> float:
    """What build-client-full does, the module's way: key made here, cert, both files."""

    def run() -> None:
        with tempfile.TemporaryDirectory(dir=WORK_ROOT) as tmp:
            requests = [pki.DeviceRequest("acme", f"dev-{i}", generate_key=True) for i in range(n)]
            pki.ensure_device_certs(ca, requests, tmp)

    return best_of(3, run)


def bench_crl(ca: pki.IssuingCA, workdir: Path) -> dict:
    revocations = [pki.Revocation(x509.random_serial_number()) for _ in range(N_CRL)]
    out: dict = {}
    start = time.perf_counter()
    crl = pki.build_crl(ca, revocations)
    out["build"] = time.perf_counter() - start
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
    pki.write_crl_dir(workdir / "crl.d", [r.serial for r in revocations])
    out["dir"] = time.perf_counter() - start

    # The anchor: one RevokedCertificate handed to the builder per revocation.
    entries = [
        x509.RevokedCertificateBuilder()
        .serial_number(r.serial)
        .revocation_date(dt.datetime.now(dt.UTC))
        .build()
        for r in revocations[:N_NAIVE]
    ]
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
    builder = builder.last_update(dt.datetime.now(dt.UTC))
    builder = builder.next_update(dt.datetime.now(dt.UTC) + dt.timedelta(days=7))
    start = time.perf_counter()
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    builder.sign(ca.key, hashes.SHA256())
    naive = time.perf_counter() - start
    out["naive_n"] = naive
    out["naive_extrapolated"] = naive * (N_CRL / N_NAIVE) ** 2
    return out


def main() -> None:
    WORK_ROOT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-pki-", dir=WORK_ROOT) as tmp:
        workdir = Path(tmp)
        ca = pki.ensure_ca(pki.CaFiles.at(workdir / "ca")).ca
        package_s, raw_s = bench_issuance(ca)
        easy_s = bench_easyrsa(workdir / "easyrsa")
        central_s = bench_central_keys(ca, N_CENTRAL)
        crl = bench_crl(ca, workdir)

    def row(label: str, value: str) -> None:
        print(f"  {label:58} {value:>16}")

    print("PKI benchmark (EC P-256, one process, best of 3 where repeated)")
    row("device cert from CSR, iotistic_vpn.pki", rate(N_ISSUE, package_s))
    row("device cert from CSR, raw cryptography (same work)", rate(N_ISSUE, raw_s))
    row("key + cert + files, ensure_device_certs(generate_key)", rate(N_CENTRAL, central_s))
    if easy_s is not None:
        row("key + CSR + cert + files, easy-rsa build-client-full", rate(N_EASYRSA, easy_s))
    row(f"CRL of {N_CRL:,} serials: build + sign", f"{crl['build']:.2f}s")
    row("CRL size DER / PEM", f"{crl['der'] / 1e6:.1f} / {crl['pem'] / 1e6:.1f} MB")
    row(f"add 1 serial to the {N_CRL:,}-entry CRL (ensure_crl)", f"{crl['add_one']:.2f}s")
    row(f"crl-verify dir: {N_CRL:,} empty files", f"{crl['dir']:.2f}s")
    row(f"one-by-one CRL builder, {N_NAIVE:,} serials (measured)", f"{crl['naive_n']:.2f}s")
    row(
        f"one-by-one CRL builder, {N_CRL:,} (x{(N_CRL // N_NAIVE) ** 2})",
        f"{crl['naive_extrapolated']:.1f}s",
    )
    print()
    print(f"ratio package / raw cryptography: {raw_s / package_s:.2f} (goal >= 0.8)")
    if easy_s is not None:
        easy_rate = N_EASYRSA / easy_s
        from_csr = (N_ISSUE / package_s) / easy_rate
        central = (N_CENTRAL / central_s) / easy_rate
        print(
            f"ratio package / easy-rsa:         {central:.0f}x key+cert+files, "
            f"{from_csr:.0f}x cert from CSR (goal >= 100x)"
        )
    print(f"ratio one-by-one / one-pass CRL:  {crl['naive_extrapolated'] / crl['build']:.0f}x")


if __name__ == "__main__":
    main()
