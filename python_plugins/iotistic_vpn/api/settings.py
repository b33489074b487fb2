"""The cloud API's settings: environment variables IOTISTIC_API_*, read and checked once."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .. import conventions

__all__ = ["ApiSettings"]


class ApiSettings(BaseSettings):
    """Everything the API needs; a bad value stops it at start, naming the variable."""

    model_config = SettingsConfigDict(env_prefix="IOTISTIC_API_", extra="forbid")

    registry_dsn: SecretStr = Field(description="libpq connection string of the registry")
    registry_pool_size: int = Field(10, ge=1, le=200)
    # Every registry statement, and every wait for a lock, is cut off after these: an admin's
    # open transaction or a migration makes requests answer 503, never hang a worker thread.
    registry_statement_timeout_s: float = Field(5.0, gt=0)
    registry_lock_timeout_s: float = Field(2.0, gt=0)
    tunnel_cert: Path = Field(description="the API's tunnel client certificate (PEM)")
    tunnel_key: Path = Field(description="its private key")
    tunnel_ca: Path = Field(description="the fleet's CA chain: gateways' certificates chain to it")
    # How to reach a gateway's tunnel service from its registry name: a template such as
    # "{gateway}" (DNS) or "{gateway}.vpn.internal".
    gateway_address: str = "{gateway}"
    # The name the gateways' certificates are checked for: empty, each gateway's own (the
    # registry's name for it); set, one name for all (the cloud: the fleet's certificate).
    gateway_tls_name: str = ""
    tunnel_port: int = Field(conventions.TUNNEL_SERVICE_PORT, gt=0, lt=65536)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    # A pooled connection to a device idle this long is closed (it holds a gateway tunnel).
    device_idle_s: float = Field(30.0, gt=0)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    # How often an open stream re-checks its token: revocation ends it within this period.
    token_recheck_s: float = Field(0.5, gt=0, le=1.0)
    # How long a token's answer is kept while the registry's change feed is heard (a revocation
    # drops it at once); without the feed, token_recheck_s.
    token_cache_s: float = Field(10.0, gt=0, le=60.0)
    audit_spool: Path = Path(conventions.STATE_DIR) / "api-audit.db"
    # Whole months of audit log kept; older month partitions are dropped (checked every 6 h).
    audit_retention_months: int = Field(13, ge=1, le=240)
    # The TCP tunnel (HTTP CONNECT): HOST:PORT, unix:PATH, or empty for none.
    connect_proxy_listen: str = f"0.0.0.0:{conventions.API_CONNECT_PORT}"
    # HTTPS served by the API itself, as well as its plain listener: HOST:PORT, or empty for
    # none (behind a load balancer that terminates TLS). For a self-hosted API, and what
    # devices enroll through (the enroll client speaks https only, but to loopback).
    tls_listen: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Set: the HTTPS listener asks for a client certificate (optional: devices enroll without
    # one) and verifies it against this bundle, the fleet's CA chain: how gateways authenticate
    # POST /v1/renewals (their renewal client certificates).
    tls_client_ca: Path | None = None

    @model_validator(mode="after")
    def _tls_complete(self) -> ApiSettings:
        if self.tls_listen and not (self.tls_cert and self.tls_key):
            raise ValueError("IOTISTIC_API_TLS_LISTEN needs IOTISTIC_API_TLS_CERT and _KEY")
        if self.tls_client_ca and not self.tls_listen:
            raise ValueError("IOTISTIC_API_TLS_CLIENT_CA needs IOTISTIC_API_TLS_LISTEN")
        if self.enroll_renew_within_days >= self.enroll_validity_days:
            raise ValueError(
                "IOTISTIC_API_ENROLL_RENEW_WITHIN_DAYS must be shorter than"
                " IOTISTIC_API_ENROLL_VALIDITY_DAYS, or every request renews"
            )
        if self.tls_listen:
            host, sep, port = self.tls_listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"IOTISTIC_API_TLS_LISTEN {self.tls_listen!r}: use HOST:PORT")
        return self

    def tls_address(self) -> tuple[str, int]:
        host, _, port = self.tls_listen.rpartition(":")
        return host.strip("[]"), int(port)

    # Enrollment (POST /v1/enroll): off (503) unless the PKI directory (ca.crt, ca.key,
    # ca-chain.crt, root.crt), the tls-crypt-v2 server key and the remotes are all given.
    enroll_pki_dir: Path | None = None
    enroll_ca_passphrase_file: Path | None = None
    enroll_tls_crypt_server_key: Path | None = None
    # The gateways a device is sent to: "host[:port[/udp|tcp]],...".
    enroll_remotes: str = ""
    # Issued certificates' validity, and the window in which an enrollment or a renewal signs
    # a new one (a renewal outside it is answered with the current certificate again).
    enroll_validity_days: float = Field(730, gt=0)
    enroll_renew_within_days: float = Field(30, ge=0)
    # Token buckets, per provisioning token and per source address (this process's own count).
    enroll_rate_per_token: float = Field(5.0, gt=0)
    enroll_burst_per_token: int = Field(50, ge=1)
    enroll_rate_per_source: float = Field(1.0, gt=0)
    enroll_burst_per_source: int = Field(20, ge=1)

    def gateway_host(self, gateway: str) -> str:
        return self.gateway_address.format(gateway=gateway)
