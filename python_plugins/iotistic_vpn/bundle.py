"""A device provisioned on the server, for systems that cannot run the enrollment client:
one `.ovpn` file with everything inline (the seed's billing flow hands such a file out).

It is an enrollment like the device's own (enrollment.handle: the same token checks, the
same transaction, the same audit), except that the key is made here, for this answer only:
the registry never holds it, and a second bundle for the same device is a new key, so it
needs `renew` (the re-key rule). The client options follow roles/openvpn_device's template.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from . import pki
from .enrollment import Enrolled, EnrollmentPki, EnrollmentRequest, handle
from .registry import Registry

__all__ = ["MEDIA_TYPE", "bundle", "render_ovpn"]

MEDIA_TYPE = "application/x-openvpn-profile"

_OPTIONS = """\
client
dev tun
remote-random
resolv-retry infinite
nobind
persist-key
persist-tun
remote-cert-tls server
tls-version-min 1.2
data-ciphers AES-256-GCM:CHACHA20-POLY1305
allow-compression no
connect-retry 1 300
hand-window 20
server-poll-timeout 4
ping 10
ping-restart 30
pull-filter ignore "ping"
reneg-sec 0
verb 3
"""


def render_ovpn(enrolled: Enrolled, key_pem: str) -> str:
    """The client configuration with its certificate, key, chain and tls-crypt-v2 key inline."""
    remotes = "".join(f"remote {r['host']} {r['port']} {r['proto']}\n" for r in enrolled.remotes)
    udp_only = all(r["proto"] == "udp" for r in enrolled.remotes)
    return (
        f"# Iotistic VPN tunnel of device {enrolled.customer}/{enrolled.device}"
        f" ({enrolled.address}), certificate until {enrolled.not_after}.\n"
        f"# Holds the device's private key: keep it 0600.\n"
        f"{remotes}{_OPTIONS}"
        + ("explicit-exit-notify 1\n" if udp_only else "")
        + f"<ca>\n{enrolled.ca_chain.strip()}\n</ca>\n"
        f"<cert>\n{enrolled.certificate.strip()}\n</cert>\n"
        f"<key>\n{key_pem.strip()}\n</key>\n"
        f"<tls-crypt-v2>\n{enrolled.tls_crypt_v2_key.strip()}\n</tls-crypt-v2>\n"
    )


def bundle(
    reg: Registry, ca: EnrollmentPki, value: str | None, device: str, *, renew: bool = False,
    source: str | None = None,
) -> tuple[Enrolled, str]:  # fmt: skip
    """Provision device with a key made here; (what was enrolled, the .ovpn text)."""
    key = pki.generate_key("ec-p256")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    request = EnrollmentRequest(device, None, csr.public_bytes(serialization.Encoding.PEM).decode(),
                                renew)  # fmt: skip
    enrolled = handle(reg, ca, value, request, source, kind="bundle")
    return enrolled, render_ovpn(enrolled, pki.private_key_pem(key).decode())
