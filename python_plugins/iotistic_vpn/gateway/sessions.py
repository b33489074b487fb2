"""What the gateway agent holds per OpenVPN instance: its link and its sessions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .config import InstanceConfig
from .management import ManagementClient

__all__ = ["Backoff", "Instance", "Session"]


@dataclass
class Session:
    """A client the agent admitted (or found connected), on one instance."""

    instance: str
    cid: int
    device: str
    address: str  # the device's VPN address
    env: dict[str, str] = field(default_factory=dict, repr=False)  # decision_env of the connect
    remote: str | None = None  # where the device connects from
    established: bool = False
    since: float = field(default_factory=time.monotonic)
    connected_at: float = field(default_factory=time.time)  # wall time, to match `status`
    tick: int = 0  # the agent's event count when the session was made
    ending: bool = False  # a kill was sent


class Backoff:
    """Doubling delays between retries, reset after a success."""

    def __init__(self, low: float = 0.2, high: float = 5.0) -> None:
        self.low, self.high, self._next = low, high, low

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.high)
        return delay

    def reset(self) -> None:
        self._next = self.low


class Instance:
    """One OpenVPN instance as the agent sees it: its socket and its sessions by client id."""

    def __init__(self, config: InstanceConfig) -> None:
        self.config = config
        self.name = config.name
        self.client: ManagementClient | None = None
        self.sessions: dict[int, Session] = {}
        self.connected = 0  # established sessions, kept as they change (read per event)

    @property
    def held(self) -> bool:
        return self.client is not None
