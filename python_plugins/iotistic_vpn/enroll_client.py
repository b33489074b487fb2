#!/usr/bin/env python3
"""iotistic-vpn-enroll: a device enrolls itself in the Iotistic VPN (POST /v1/enroll).

Standard library only, one file, so a device image or a role can copy it alone; `openssl`
makes the key (EC P-256, written 0600, never sent) and the CSR. It reads its settings from
a file of KEY=VALUE lines (default /etc/iotistic-vpn/enroll.conf) and IOTISTIC_ENROLL_*
variables, which win:

    API_URL          https://api.example.net (http only to a loopback address)
    TOKEN_FILE       the provisioning token, a file readable by its owner only
    DEVICE_ID        the device id asked for; or SERIAL, or SERIAL_FILE to read one from
    CA_BUNDLE        CA certificates to trust the API with (default: the system's)
    PKI_DIR          where the tunnel's files go (/etc/openvpn/client/iotistic)
    RENEW_WITHIN_DAYS   enroll again when the certificate ends within this (30)
    MAX_ATTEMPTS, MAX_TIME_S   retry bounds (10 attempts, 900 s)

Writes, each 0600 and atomically: device.key, device.crt, ca.pem, tls-crypt-v2.key (the names
roles/openvpn_device's client config reads), remotes.conf (`remote HOST PORT PROTO` lines,
for the config's `config` include) and enrollment.json. Already enrolled with a certificate
not near its end: exits 0 doing nothing. Connection errors, 429 and 5xx are retried with
capped, jittered exponential backoff (Retry-After honoured); any other refusal is not.

Exit status: 0 enrolled (or already), 1 gave up retrying, 2 refused by the API, 3 bad setup.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CONFIG_FILE = "/etc/iotistic-vpn/enroll.conf"
ENV_PREFIX = "IOTISTIC_ENROLL_"
DEFAULTS = {
    "PKI_DIR": "/etc/openvpn/client/iotistic",
    "RENEW_WITHIN_DAYS": "30",
    "MAX_ATTEMPTS": "10",
    "MAX_TIME_S": "900",
    "BACKOFF_BASE_S": "1",
    "BACKOFF_CAP_S": "60",
    "TIMEOUT_S": "30",
}
KEY, CERT, CHAIN, TLS_CRYPT, REMOTES, STATE = (
    "device.key", "device.crt", "ca.pem", "tls-crypt-v2.key", "remotes.conf", "enrollment.json",
)  # fmt: skip
EXIT_DONE, EXIT_GAVE_UP, EXIT_REFUSED, EXIT_SETUP = 0, 1, 2, 3


class Refused(Exception):
    """The API said no (a 4xx other than 429): retrying would not help."""


class SetupError(Exception):
    """A setting or file of this device is missing or wrong."""


class Temporary(Exception):
    """Worth retrying: the API is away, busy (5xx) or rate-limits us (429)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def load_settings(path: str | None = None, env: dict | None = None) -> dict:
    """Defaults, then the file's KEY=VALUE lines, then IOTISTIC_ENROLL_* variables."""
    env = os.environ if env is None else env
    settings = dict(DEFAULTS)
    config = Path(path or env.get(ENV_PREFIX + "CONFIG") or CONFIG_FILE)
    if config.exists():
        for number, line in enumerate(config.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise SetupError(f"{config}:{number}: not KEY=VALUE: {line!r}")
            settings[key.strip().upper()] = value.strip().strip('"')
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            settings[name.removeprefix(ENV_PREFIX)] = value
    for required in ("API_URL", "TOKEN_FILE"):
        if not settings.get(required):
            raise SetupError(f"{required} is not set ({config} or {ENV_PREFIX}{required})")
    _check_url(settings["API_URL"])
    return settings


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http":
        try:
            if ipaddress.ip_address(parts.hostname or "").is_loopback:
                return
        except ValueError:
            pass
    raise SetupError(f"API_URL {url!r}: use https:// (the token must not cross a network in clear)")


def read_token(path: str) -> str:
    """The provisioning token, from a file only its owner may read."""
    try:
        info = os.stat(path)
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise SetupError(f"TOKEN_FILE {path}: {exc.strerror}") from None
    if info.st_mode & 0o077:
        raise SetupError(f"TOKEN_FILE {path} is mode {info.st_mode & 0o777:o}: make it 0600")
    if not token:
        raise SetupError(f"TOKEN_FILE {path} is empty")
    return token


def identity(settings: dict) -> dict:
    """{"device": id} or {"serial": hardware serial} as the request names the device."""
    if settings.get("DEVICE_ID"):
        return {"device": settings["DEVICE_ID"], "serial": None}
    serial = settings.get("SERIAL")
    if not serial and settings.get("SERIAL_FILE"):
        try:
            # Device-tree files end in a NUL; /sys and /proc ones in a newline.
            serial = Path(settings["SERIAL_FILE"]).read_bytes().strip(b"\0\n ").decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise SetupError(f"SERIAL_FILE {settings['SERIAL_FILE']}: {exc}") from None
    if not serial:
        raise SetupError("set DEVICE_ID, SERIAL or SERIAL_FILE")
    return {"device": None, "serial": serial}


def _openssl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["openssl", *args], input=data, capture_output=True, check=False)
    except FileNotFoundError:
        raise SetupError("the openssl command is not installed") from None


def still_valid(pki: Path, within_s: int) -> bool:
    """Whether every file of an enrollment is there and the certificate outlives within_s."""
    if not all((pki / name).exists() for name in (KEY, CERT, CHAIN, TLS_CRYPT, REMOTES)):
        return False
    return (
        _openssl("x509", "-noout", "-checkend", str(within_s), "-in", str(pki / CERT)).returncode
        == 0
    )


def ensure_key(pki: Path) -> Path:
    """The device's key, made once (EC P-256, 0600) and kept: renewals sign it again."""
    key = pki / KEY
    if not key.exists():
        pki.mkdir(parents=True, exist_ok=True, mode=0o700)
        made = _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
        if made.returncode != 0:
            raise SetupError(f"openssl genpkey failed: {made.stderr.decode().strip()}")
        write_private(key, made.stdout)
    return key


def make_csr(key: Path, device: str | None) -> str:
    # The CA names the device from the registry; a CN, if any, must be the device's own.
    subject = f"/CN={device}" if device else "/"
    made = _openssl("req", "-new", "-key", str(key), "-subj", subject)
    if made.returncode != 0:
        raise SetupError(f"openssl req failed: {made.stderr.decode().strip()}")
    return made.stdout.decode()


def write_private(path: Path, data: bytes) -> None:
    """Replace path with data, 0600 from the first byte, in one rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def post(settings: dict, token: str, body: dict) -> tuple[int, dict]:
    """One POST /v1/enroll: (status, JSON answer); Temporary or Refused otherwise."""
    url = settings["API_URL"].rstrip("/") + "/v1/enroll"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json", "User-Agent": "iotistic-vpn-enroll/1"}  # fmt: skip
    # The scheme is https, or http to loopback only (_check_url).
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")  # noqa: S310
    context = ssl.create_default_context(cafile=settings.get("CA_BUNDLE") or None)
    try:
        with urllib.request.urlopen(  # noqa: S310 - the scheme is checked in _check_url
            request, timeout=float(settings["TIMEOUT_S"]), context=context
        ) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        detail = _detail(exc)
        if exc.code == 429 or exc.code >= 500:
            raise Temporary(f"HTTP {exc.code}: {detail}", _retry_after(exc.headers)) from None
        raise Refused(f"HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # ssl.SSLCertVerificationError is an OSError too: a wrong CA_BUNDLE is retried until
        # the bounds, and its message says what is wrong.
        raise Temporary(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        return str(body.get("detail", body))
    except (ValueError, OSError):
        return exc.reason or "no detail"


def _retry_after(headers) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError):
        return None


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before retry `attempt` (1, 2, ...): full jitter under base * 2**attempt capped
    at cap, never sooner than the server's Retry-After."""
    jittered = random.uniform(0, min(cap, base * 2 ** (attempt - 1)))  # jitter, not a secret
    return max(jittered, retry_after or 0.0)


def enroll_with_retries(settings: dict, token: str, body: dict, log=print) -> tuple[int, dict]:
    attempts, max_time = int(settings["MAX_ATTEMPTS"]), float(settings["MAX_TIME_S"])
    base, cap = float(settings["BACKOFF_BASE_S"]), float(settings["BACKOFF_CAP_S"])
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return post(settings, token, body)
        except Temporary as exc:
            wait = backoff(attempt, base, cap, exc.retry_after)
            left = max_time - (time.monotonic() - started)
            if attempt == attempts or wait > left:
                raise Temporary(f"gave up after {attempt} attempt(s): {exc}") from None
            log(f"attempt {attempt} failed ({exc}); again in {wait:.1f} s")
            time.sleep(wait)
    raise Temporary("no attempt made (MAX_ATTEMPTS is 0)")


def save(pki: Path, answer: dict) -> None:
    """The answer's files, each 0600 and atomic; the certificate last (it marks it done)."""
    remotes = "".join(f"remote {r['host']} {r['port']} {r['proto']}\n" for r in answer["remotes"])
    state = {k: answer[k] for k in ("device", "customer", "address", "not_after")}
    write_private(pki / CHAIN, answer["ca_chain"].encode())
    write_private(pki / TLS_CRYPT, answer["tls_crypt_v2_key"].encode())
    write_private(pki / REMOTES, remotes.encode())
    write_private(pki / STATE, (json.dumps(state, indent=2) + "\n").encode())
    write_private(pki / CERT, answer["certificate"].encode())


def run(settings: dict, log=print) -> int:
    pki = Path(settings["PKI_DIR"])
    within_s = int(float(settings["RENEW_WITHIN_DAYS"]) * 86400)
    if still_valid(pki, within_s):
        log(f"already enrolled: {pki / CERT} is valid beyond {settings['RENEW_WITHIN_DAYS']} days")
        return EXIT_DONE
    token = read_token(settings["TOKEN_FILE"])
    names = identity(settings)
    key = ensure_key(pki)
    body = {**names, "csr": make_csr(key, names["device"]), "renew": False}
    status, answer = enroll_with_retries(settings, token, body, log)
    save(pki, answer)
    verb = "enrolled" if status == 201 else "enrolled again"
    log(f"{verb}: {answer['customer']}/{answer['device']} at {answer['address']},"
        f" certificate until {answer['not_after']}")  # fmt: skip
    return EXIT_DONE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT_DONE
    try:
        return run(load_settings(argv[0] if argv else None))
    except SetupError as exc:
        print(f"iotistic-vpn-enroll: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except Refused as exc:
        print(f"iotistic-vpn-enroll: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Temporary as exc:
        print(f"iotistic-vpn-enroll: {exc}", file=sys.stderr)
        return EXIT_GAVE_UP


if __name__ == "__main__":
    sys.exit(main())
