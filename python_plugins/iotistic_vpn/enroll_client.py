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
    RENEW_WITHIN_DAYS   renew when the certificate ends within this (30)
    RENEW_URL        the gateway's renewal endpoint, reached through the tunnel
                     (http://100.127.255.1:8090/v1/renewal: the gateways' first address)
    RENEW_NEW_KEY    1: a renewal makes a new key too (default 0: the same key signed again)
    TUNNEL_RESTART   the command that restarts the tunnel
                     (systemctl restart openvpn-client@iotistic)
    TUNNEL_UP_TIMEOUT_S  how long the tunnel has to come up with a new certificate (120)
    MAX_ATTEMPTS, MAX_TIME_S   retry bounds (10 attempts, 900 s)

Writes, each 0600 and atomically: device.key, device.crt, ca.pem, tls-crypt-v2.key (the names
roles/openvpn_device's client config reads), remotes.conf (`remote HOST PORT PROTO` lines,
for the config's `config` include) and enrollment.json. Already enrolled with a certificate
not near its end: exits 0 doing nothing. Connection errors, 429 and 5xx are retried with
capped, jittered exponential backoff (Retry-After honoured); any other refusal is not.

With a certificate inside its renewal window the device renews through its tunnel, never with
the token: a CSR to the gateway's RENEW_URL (the gateway knows the device by its tunnel), the
new certificate installed atomically with the old one kept as device.crt.old (and device.key.old
with RENEW_NEW_KEY), the tunnel restarted, and the gateway asked until the session shows the new
serial; if it does not within TUNNEL_UP_TIMEOUT_S the old files go back and the tunnel restarts
on them (exit 1). The enrollment path is taken only when there is no certificate at all.

Exit status: 0 enrolled (or already), 1 gave up retrying, 2 refused by the API, 3 bad setup.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import random
import shlex
import shutil
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
    # The gateways' first tunnel address and the agent's renewal port and path
    # (iotistic_vpn.conventions: gateway_instances(1)[0].address, RENEW_PORT, RENEW_PATH).
    "RENEW_URL": "http://100.127.255.1:8090/v1/renewal",
    "RENEW_NEW_KEY": "0",
    "TUNNEL_RESTART": "systemctl restart openvpn-client@iotistic",
    "TUNNEL_UP_TIMEOUT_S": "120",
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
    return outlives(pki / CERT, within_s)


def outlives(cert: Path, within_s: int) -> bool:
    """Whether the certificate is still valid within_s seconds from now."""
    return _openssl("x509", "-noout", "-checkend", str(within_s), "-in", str(cert)).returncode == 0


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
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return ask(settings, url, json.dumps(body).encode(), headers)


def ask(settings: dict, url: str, data: bytes | None = None, headers: dict | None = None,
        timeout: float | None = None) -> tuple[int, dict]:  # fmt: skip
    """One request (POST with data, else GET): (status, JSON answer); Temporary or Refused."""
    headers = {"Accept": "application/json", "User-Agent": "iotistic-vpn-enroll/1",
               **(headers or {})}  # fmt: skip
    # API_URL is https, or http to loopback only (_check_url); RENEW_URL is the gateway's
    # address inside the tunnel, which carries it encrypted.
    request = urllib.request.Request(url, data, headers, method="POST" if data else "GET")  # noqa: S310
    context = ssl.create_default_context(cafile=settings.get("CA_BUNDLE") or None)
    timeout = float(settings["TIMEOUT_S"]) if timeout is None else timeout
    # Inside the tunnel, straight to the gateway: never through an http_proxy of the device's.
    handlers = [urllib.request.HTTPSHandler(context=context)]
    if url.startswith(settings.get("RENEW_URL") or "\0"):
        handlers.append(urllib.request.ProxyHandler({}))
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as answer:
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
    return with_retries(settings, lambda: post(settings, token, body), log)


def with_retries(settings: dict, call, log=print) -> tuple[int, dict]:
    """call() until it answers, retrying Temporary failures within the bounds."""
    attempts, max_time = int(settings["MAX_ATTEMPTS"]), float(settings["MAX_TIME_S"])
    base, cap = float(settings["BACKOFF_BASE_S"]), float(settings["BACKOFF_CAP_S"])
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return call()
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


def next_step(pki: Path, within_s: int) -> str:
    """What this run does: "done" (enrolled, the certificate outlives the window), "renew"
    (a certificate inside its window: through the tunnel) or "enroll" (no certificate, or an
    enrollment's files missing)."""
    if not (pki / CERT).exists():
        return "enroll"
    if still_valid(pki, within_s):
        return "done"
    if not _openssl(
        "x509", "-noout", "-checkend", str(within_s), "-in", str(pki / CERT)
    ).returncode:
        return "enroll"  # valid beyond the window, but another file of the enrollment is gone
    return "renew"


def run(settings: dict, log=print) -> int:
    pki = Path(settings["PKI_DIR"])
    within_s = int(float(settings["RENEW_WITHIN_DAYS"]) * 86400)
    step = next_step(pki, within_s)
    if step == "done":
        log(f"already enrolled: {pki / CERT} is valid beyond {settings['RENEW_WITHIN_DAYS']} days")
        return EXIT_DONE
    if step == "renew":
        return renew(settings, pki, log)
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


# -- renewal through the tunnel -------------------------------------------------------------


def serial_of(cert: Path) -> str:
    """A certificate's serial in decimal (as OpenVPN's tls_serial_0 and the gateway say it)."""
    made = _openssl("x509", "-noout", "-serial", "-in", str(cert))
    if made.returncode != 0:
        raise SetupError(f"{cert}: not a certificate: {made.stderr.decode().strip()}")
    return str(int(made.stdout.decode().strip().partition("=")[2], 16))


def session(settings: dict, timeout: float | None = None) -> dict:
    """The gateway's view of this device's session: {"device", "customer", "serial"}."""
    return ask(settings, settings["RENEW_URL"], timeout=timeout)[1]


def renew(settings: dict, pki: Path, log=print) -> int:
    """Renew through the tunnel; the old certificate (and key) come back if the tunnel does
    not come up with the new one."""
    _check_renew_url(settings["RENEW_URL"])
    old_serial = serial_of(pki / CERT)
    who = with_retries(settings, lambda: (200, session(settings)), log)[1]
    new_key = settings["RENEW_NEW_KEY"].strip().lower() in ("1", "true", "yes")
    key = pki / KEY
    if new_key:
        key = pki / (KEY + ".new")
        made = _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
        if made.returncode != 0:
            raise SetupError(f"openssl genpkey failed: {made.stderr.decode().strip()}")
        write_private(key, made.stdout)
    try:
        csr = make_csr(key, who.get("device"))
        _, answer = with_retries(settings, lambda: ask(
            settings, settings["RENEW_URL"], csr.encode(),
            {"Content-Type": "application/pkcs10"}), log)  # fmt: skip
        if answer.get("serial") == old_serial:
            log(f"the API kept certificate {old_serial} (not inside its renewal window yet)")
            return EXIT_DONE
        check_issued(pki, answer.get("certificate"), key)
        install(pki, answer, key if new_key else None)
    finally:
        if new_key:
            key.unlink(missing_ok=True)
    log(f"renewed: certificate {answer['serial']} until {answer['not_after']}; restarting the"
        " tunnel")  # fmt: skip
    restart_tunnel(settings)
    if tunnel_up_with(settings, answer["serial"]):
        for name in (CERT + ".old", KEY + ".old"):
            (pki / name).unlink(missing_ok=True)
        log(f"the tunnel is up with certificate {answer['serial']}")
        return EXIT_DONE
    restore(pki)
    restart_tunnel(settings)
    raise Temporary(
        f"the tunnel did not come up with certificate {answer['serial']} within"
        f" {settings['TUNNEL_UP_TIMEOUT_S']} s: back on certificate {old_serial}"
    )


def check_issued(pki: Path, cert_pem: object, key: Path) -> None:
    """Refuse an answer that is not a client certificate of the CA this device already trusts
    (its ca.pem) for its own key: whoever answers RENEW_URL while the tunnel is down (the
    address is then routed elsewhere) cannot make it install anything."""
    if not isinstance(cert_pem, str):
        raise Refused("the renewal answer has no certificate")
    fd, tmp = tempfile.mkstemp(dir=pki, prefix=".renewed.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(cert_pem)
        verify = _openssl("verify", "-CAfile", str(pki / CHAIN), "-purpose", "sslclient", tmp)
        cert_key = _openssl("x509", "-noout", "-pubkey", "-in", tmp).stdout
    finally:
        os.unlink(tmp)
    own_key = _openssl("pkey", "-pubout", "-in", str(key)).stdout
    if verify.returncode != 0 or not own_key or cert_key.strip() != own_key.strip():
        raise Refused("the renewal answer is not a certificate of this device's CA for its key")


def _check_renew_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    try:
        ipaddress.ip_address(parts.hostname or "")
        ok = parts.scheme in ("http", "https")
    except ValueError:
        ok = False
    if not ok:
        raise SetupError(f"RENEW_URL {url!r}: use http://GATEWAY-ADDRESS:PORT/... (in the tunnel)")


def install(pki: Path, answer: dict, new_key: Path | None) -> None:
    """The new certificate (and key) in place, the old ones kept as .old, each 0600 and
    atomic; the certificate last."""
    write_private(pki / (CERT + ".old"), (pki / CERT).read_bytes())
    if new_key is not None:
        write_private(pki / (KEY + ".old"), (pki / KEY).read_bytes())
        write_private(pki / KEY, new_key.read_bytes())
    write_private(pki / CHAIN, answer["ca_chain"].encode())
    state = pki / STATE
    if state.exists():
        facts = {**json.loads(state.read_text()), "not_after": answer["not_after"]}
        write_private(state, (json.dumps(facts, indent=2) + "\n").encode())
    write_private(pki / CERT, answer["certificate"].encode())


def restore(pki: Path) -> None:
    """The certificate (and key) from before the renewal, back in place."""
    if (pki / (KEY + ".old")).exists():
        write_private(pki / KEY, (pki / (KEY + ".old")).read_bytes())
        (pki / (KEY + ".old")).unlink()
    write_private(pki / CERT, (pki / (CERT + ".old")).read_bytes())
    (pki / (CERT + ".old")).unlink()


def restart_tunnel(settings: dict) -> None:
    argv = shlex.split(settings["TUNNEL_RESTART"])
    if not argv or shutil.which(argv[0]) is None:
        raise SetupError(f"TUNNEL_RESTART {settings['TUNNEL_RESTART']!r}: no such command")
    done = subprocess.run(argv, capture_output=True, check=False, timeout=120)
    if done.returncode != 0:
        raise SetupError(f"TUNNEL_RESTART failed ({done.returncode}): {done.stderr.decode()}")


def tunnel_up_with(settings: dict, serial: str) -> bool:
    """Whether the gateway shows this device's session on `serial` within the bound."""
    deadline = time.monotonic() + float(settings["TUNNEL_UP_TIMEOUT_S"])
    while time.monotonic() < deadline:
        try:
            if session(settings, timeout=5).get("serial") == serial:
                return True
        except (Temporary, Refused):
            pass  # the tunnel is down or the session not established yet
        time.sleep(1)
    return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Under systemd stdout is a pipe, block-buffered: each retry must reach the journal when it
    # happens, not when the client exits (which, with the API away, may be 15 minutes later).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
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
