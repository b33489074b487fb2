"""The gateway agent: one asyncio process per gateway between OpenVPN and the registry.

It holds every instance's management socket and decides each CONNECT/REAUTH from a snapshot
of the registry (`authorize.decide`): an admitted device gets `client-auth` with its stable
address pushed and a /32 host route to its instance's tun; anything else gets `client-deny`
with the reason in this log (the device only learns "not authorised"). ESTABLISHED and
DISCONNECT go to the outbox (gateway.outbox: a durable spool replayed to the registry in
order, with their own times), so a registry outage loses nothing: connects go on being decided
from the last good snapshot, which is kept on disk and survives a restart. The snapshot
follows the registry's change feed (gateway.feed: a notification, then only what changed);
sessions of devices no longer admitted are ended (HALT when revoked) and revocations land in
the crl-verify directories; every reconcile_interval_s the instances' own `status` is
compared with the registry, so a lost event heals. /healthz and /metrics are served on
http_listen; `drain` ends every session at a bounded rate before the instances stop. The
command line is `python3 -m iotistic_vpn.gateway`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..crldir import CrlDir
from ..errors import RegistryUnavailable
from ..registry import Registry
from ..registry.listener import ChangeListener
from . import authorize
from .authorize import Accept, Deny, Snapshot, decide, decision_env, refuse_state
from .config import AgentConfig
from .control import serve_control
from .expiry import ExpiryWatch
from .feed import Full, apply_changes, read_registry, sync_revocations
from .hold import HoldRelease
from .http import Response, serve_http
from .management import (
    ClientEvent,
    Hold,
    ManagementClient,
    ManagementError,
    StatusClient,
    client_auth,
    client_deny,
    client_kill,
    send_elsewhere,
)
from .metrics import CONTENT_TYPE_LATEST, Metrics, health_problems
from .outbox import Outbox, RegistryHealth
from .renewal import RenewalService, SessionFacts
from .routes import RouteError, Routes
from .sessions import Backoff, Instance, Session
from .snapshot_guard import refuse_snapshot
from .store import AgentStore, StoredSession
from .tunnel import TunnelService

__all__ = ["GatewayAgent", "Session"]

log = logging.getLogger("iotistic_vpn.gateway")
T = TypeVar("T")


class GatewayAgent:
    """The agent of one gateway; `run()` serves until `stop()`."""

    def __init__(self, config: AgentConfig, *, routes: Routes | None = None) -> None:
        self.config = config
        self.store = AgentStore(config.state_path)
        self.snapshot: Snapshot = self.store.load_snapshot()
        self.instances = {i.name: Instance(i) for i in config.instances}
        self.metrics = Metrics(list(self.instances))
        self.holds = HoldRelease(self.metrics, lambda: bool(self.snapshot.taken_at))
        self.routes = routes or Routes()
        self.crl = CrlDir(config.crl_dir)
        conninfo = config.registry.conninfo(f"iotistic-gateway-agent {config.gateway}")
        self.registry = Registry(conninfo, connect_timeout=config.registry.connect_timeout_s)
        self.listener = ChangeListener(conninfo, config.registry.connect_timeout_s)
        self._refreshing = asyncio.Lock()
        self.health = RegistryHealth(self.registry, self.metrics)
        self.tunnel = (
            TunnelService(config.tunnel, self._tunnel_address, self.metrics)
            if config.tunnel
            else None
        )
        self.renewal = RenewalService(config.renewal, self._session_at) if config.renewal else None
        self.expiry = ExpiryWatch(config.certificate_file, config.ca_file, config.crl_file)
        self.draining = False
        self.snapshot_refused: str | None = None  # why the registry's last snapshot was not taken
        # The registry (psycopg) and the store (SQLite) each get one thread of their own:
        # a slow database never delays a spool write, and neither blocks a connect decision.
        self._db = ThreadPoolExecutor(1, "registry")
        self._io = ThreadPoolExecutor(1, "store")
        self.outbox = Outbox(self.store, config.state_path, self.health, self.metrics,
                             self._in_store, self._in_db)  # fmt: skip
        self._stored_sessions = self.store.stored_sessions()  # until each instance's first status
        self._stopping = asyncio.Event()
        # Every event about a device bumps a counter; reconciliation compares what it read
        # against it, so a device whose state moved while status was read is left alone.
        self._ticks = 0
        self._touched: dict[str, int] = {}  # device -> tick of its last event
        self._by_device: dict[str, set[tuple[str, int]]] = {}  # device -> (instance, cid)
        self._customers_seen: set[str] = set()

    # -- plumbing ------------------------------------------------------------------------------

    async def _in_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def _in_store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _touch(self, device: str) -> int:
        self._ticks += 1
        self._touched[device] = self._ticks
        return self._ticks

    def _add_session(self, inst: Instance, session: Session) -> Session:
        session.tick = self._touch(session.device)
        inst.sessions[session.cid] = session
        inst.connected += session.established
        self._by_device.setdefault(session.device, set()).add((inst.name, session.cid))
        return session

    def _drop_session(self, inst: Instance, session: Session) -> set[tuple[str, int]]:
        """Forget a session; return the device's other sessions on this gateway."""
        self._touch(session.device)
        if inst.sessions.pop(session.cid, None) is not None:
            inst.connected -= session.established
            self._store_session(inst.name, session.cid, None)
        others = self._by_device.get(session.device, set())
        others.discard((inst.name, session.cid))
        if not others:
            self._by_device.pop(session.device, None)
            if self.tunnel is not None:
                self.tunnel.end_device(session.device)  # its address is gone from this gateway
        return others

    def _store_session(self, instance: str, cid: int, session: Session | None) -> None:
        """Keep an established session's certificate facts (None: forget them) with the next
        spool write; only a session whose serial is known has any worth keeping."""
        if session is None or "tls_serial_0" in session.env:
            self.outbox.keep_session(instance, cid, session and StoredSession(
                session.device, session.remote, session.connected_at, session.env
            ))  # fmt: skip

    def _tunnel_address(self, device: str) -> str | None:
        """The VPN address of a device with an established, still admitted session here."""
        for name, cid in self._by_device.get(device, ()):
            session = self.instances[name].sessions.get(cid)
            if session is not None and session.established and not session.ending:
                return session.address
        return None

    def _session_at(self, address: str) -> SessionFacts | None:
        """The established, still admitted session whose VPN address this is (a renewal's
        caller), or None. A scan: renewals are rare next to connects."""
        for inst in self._all():
            for session in inst.sessions.values():
                if session.address == address and session.established and not session.ending:
                    env = session.env
                    return SessionFacts(session.device, env.get("X509_0_O", ""),
                                        env.get("tls_serial_0"))  # fmt: skip
        return None

    def _spool(
        self, event: str, session: Session, *, source: str = "openvpn", at: float | None = None
    ) -> None:
        """Queue an event for the spool (the writer makes it durable within milliseconds); at:
        when it happened by this clock, if not now."""
        body = {
            "event": event,
            "device": session.device,
            "gateway": self.config.gateway,
            "instance": session.instance,
            "address": session.address,
            "remote": session.remote,
            "at": time.time() if at is None else at,
            "source": source,
        }
        if event == "connect" and "tls_serial_0" in session.env:
            # The registry supersedes the device's older certificates by it (migration 0010).
            body["serial"] = session.env["tls_serial_0"]
        self._touch(session.device)
        self.outbox.add(body)

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Serve until stop(): HTTP, the drain socket, one link per instance and the loops."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Only the main thread may own signal handlers (an embedding caller handles them).
            with contextlib.suppress(RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        host, port = self.config.http_listen
        http = await serve_http(host, port, {"/healthz": self._healthz, "/metrics": self._export})
        control = await serve_control(self.config.control_socket, self.drain)
        if self.tunnel is not None:
            await self.tunnel.start()
        if self.renewal is not None:
            await self.renewal.start()
        log.info(
            "gateway agent for %s: %d instance(s), http on %s:%d, snapshot of %d devices",
            self.config.gateway, len(self.instances), host, port, len(self.snapshot.devices),
        )  # fmt: skip
        # Decide the first connects on the registry's current view, not on a stale file.
        await self.refresh_snapshot()
        tasks = [
            *(asyncio.create_task(self._link(i), name=f"link:{i.name}") for i in self._all()),
            asyncio.create_task(self.listener.run(), name="listen"),
            asyncio.create_task(self._snapshot_loop(), name="snapshot"),
            asyncio.create_task(self.outbox.writer(), name="spool"),
            asyncio.create_task(self.outbox.flusher(), name="flush"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
        ]
        try:
            await self._stopping.wait()
        finally:
            log.info("stopping")
            stop_started = time.monotonic()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            http.close()
            control.close()
            if self.tunnel is not None:
                await self.tunnel.close()
            if self.renewal is not None:
                await self.renewal.close()
            with contextlib.suppress(OSError):
                self.config.control_socket.unlink()
            for inst in self._all():
                if inst.client is not None:
                    await inst.client.close()
            await self.outbox.write()  # what happened last is on disk before we go
            self.routes.close()
            await self._in_db(self.registry.close)
            await self._in_store(self.store.close)
            self._db.shutdown(wait=False, cancel_futures=True)
            self._io.shutdown(wait=True)
            log.info("stopped in %.1f s", time.monotonic() - stop_started)

    def _all(self) -> list[Instance]:
        return list(self.instances.values())

    # -- management links ----------------------------------------------------------------------

    async def _link(self, inst: Instance) -> None:
        """Hold one instance's socket for good: reconnect with backoff when it goes away."""
        backoff = Backoff(0.2, 1.0)  # a held instance waits for this link: look again soon
        warned = False
        while True:
            client = ManagementClient(str(inst.config.management))
            try:
                await client.connect()
            except OSError as exc:
                if not warned:
                    log.warning(
                        "instance %s: management socket %s unavailable (%s); retrying",
                        inst.name, inst.config.management, exc.strerror or exc,
                    )  # fmt: skip
                    warned = True
                await asyncio.sleep(backoff.next())
                continue
            warned = False
            backoff.reset()
            inst.client = client
            self.metrics.management_up.labels(inst.name).set(1)
            log.info("instance %s: holding management socket %s", inst.name, inst.config.management)
            try:
                await client.filter_env()  # its reply comes after the greeting's >HOLD, if any
                await self.holds.release(inst.name, client)
                mark = self._ticks
                await self._adopt(inst, await client.status(), mark)
                await self._sync_routes()
                await self._enforce(inst=inst)  # what a lost link left undone (a kill) is done now
                async for event in client.iter_events():
                    try:
                        await self._on_event(inst, event)
                    except ManagementError as exc:
                        log.warning("instance %s: %s", inst.name, exc)
                    except Exception:
                        log.exception("instance %s: %s of client %d failed", inst.name,
                                      event.kind, event.cid)  # fmt: skip
            except (ManagementError, OSError) as exc:
                log.warning("instance %s: %s", inst.name, exc)
            finally:
                inst.client = None
                self.metrics.management_up.labels(inst.name).set(0)
                await client.close()
            log.warning("instance %s: management socket closed; reconnecting", inst.name)
            await asyncio.sleep(backoff.next())

    async def _adopt(self, inst: Instance, status: list[StatusClient], mark: int) -> None:
        """Line the sessions up with the instance's `status`, read after tick `mark`.

        Sessions made since are newer than that list, and clients whose device had an event
        since may have left already: both are left to their own events.
        """
        live = {c.cid: c.common_name for c in status}
        for cid, session in list(inst.sessions.items()):
            # A client id listed for another device was reused by a restarted instance.
            if live.get(cid) != session.device and session.tick <= mark:
                await self._ended(inst, session)
        adopted = 0
        stored = self._stored_sessions.pop(inst.name, {})  # what this agent knew before it started
        for client in status:
            known = client.cid in inst.sessions
            if (
                known
                or not client.virtual_address
                or self._touched.get(client.common_name, 0) > mark
            ):
                continue
            session = self._add_session(inst, Session(
                inst.name, client.cid, client.common_name, client.virtual_address,
                env={"X509_0_CN": client.common_name},
                remote=client.real_address.rpartition(":")[0] or None, established=True,
                connected_at=float(client.connected_since or time.time()),
            ))  # fmt: skip
            before = stored.pop(client.cid, None)
            if before is not None and before.describes(client):
                # This very session: judged by its certificate's serial like any other.
                session.env, session.connected_at = before.env, before.connected_at
            adopted += 1
        for cid in stored:  # sessions that ended, or whose client id was reused, meanwhile
            self._store_session(inst.name, cid, None)
        if adopted:
            log.info("instance %s: adopted %d connected client(s)", inst.name, adopted)
        self.metrics.connected.labels(inst.name).set(inst.connected)

    async def _on_event(self, inst: Instance, event: ClientEvent | Hold) -> None:
        if isinstance(event, Hold):  # the instance restarts: released as at the link's start
            await self.holds.release(inst.name, inst.client)
        elif event.kind in ("CONNECT", "REAUTH"):
            await self._authorise(inst, event)
        elif event.kind == "ESTABLISHED":
            await self._established(inst, event)
        elif event.kind == "DISCONNECT":
            session = inst.sessions.get(event.cid)
            if session is not None:
                await self._ended(inst, session)
                self.metrics.connected.labels(inst.name).set(inst.connected)

    async def _authorise(self, inst: Instance, event: ClientEvent) -> None:
        assert inst.client is not None
        env = event.env
        stale = inst.sessions.get(event.cid) if event.kind == "CONNECT" else None
        if stale is not None:
            # Only a REAUTH renegotiates: a CONNECT always starts a new client, so a session
            # still held under its id belongs to an instance that restarted (ids from 0 again).
            log.warning("instance %s: client %d connects anew; the session of %s under that "
                        "id is over", inst.name, event.cid, stale.device)  # fmt: skip
            await self._ended(inst, stale)
            self.metrics.connected.labels(inst.name).set(inst.connected)
        if self.draining and event.kind == "CONNECT":
            verdict: Accept | Deny = Deny("draining", "gateway is draining")
        else:
            verdict = decide(env, self.snapshot, event.repeated)
        if isinstance(verdict, Deny):
            await inst.client.command(client_deny(event.cid, event.kid or 0, verdict.reason,
                                                  authorize.client_reason(verdict)))  # fmt: skip
            self.metrics.denied.labels(verdict.code).inc()
            log.warning(
                "instance %s: refused client %d from %s: %s",
                inst.name, event.cid, env.get("untrusted_ip", "?"), verdict.reason,
            )  # fmt: skip
            return
        grant = verdict.device
        address = str(grant.vpn_address)
        session = inst.sessions.get(event.cid)
        new = session is None
        if session is None:
            # Known before the route and the reply, so a concurrent route sync keeps its /32.
            # A REAUTH of a client this agent never saw means it is connected already.
            session = self._add_session(inst, Session(
                inst.name, event.cid, grant.device_id, address, env=decision_env(env),
                remote=env.get("untrusted_ip"), established=event.kind == "REAUTH",
            ))  # fmt: skip
        else:
            renewed = decision_env(env)  # a renegotiation: the certificate may be newer
            if renewed != session.env:
                session.env = renewed
                if session.established:
                    self._store_session(inst.name, session.cid, session)
        try:
            if new:
                # The route first: the device is reachable the moment it has its address.
                try:
                    self.routes.replace(address, inst.config.tun)
                except RouteError as exc:
                    log.error("instance %s: %s (the reconcile retries)", inst.name, exc)
            await inst.client.command(
                client_auth(event.cid, event.kid or 0, address, self.config.netmask)
            )
        except ManagementError:
            if new:
                await self._ended(inst, session)
            raise
        self.metrics.accepted.inc()
        if new:
            log.info(
                "instance %s: accepted %s of %s from %s as %s (client %d)",
                inst.name, grant.device_id, grant.customer_id, session.remote, address, event.cid,
            )  # fmt: skip

    async def _established(self, inst: Instance, event: ClientEvent) -> None:
        env = event.env
        session = inst.sessions.get(event.cid)
        if session is None:
            # Accepted before this agent started: learn it from the event itself.
            name = env.get("X509_0_CN", "")
            session = self._add_session(inst, Session(
                inst.name, event.cid, name, env.get("ifconfig_pool_remote_ip", ""),
                env={"X509_0_CN": name},
            ))  # fmt: skip
        if not session.established:
            session.established = True
            inst.connected += 1
        session.remote = env.get("untrusted_ip") or session.remote  # trusted by now
        self.metrics.connected.labels(inst.name).set(inst.connected)
        self._store_session(inst.name, session.cid, session)
        self._spool("connect", session)

    async def _ended(self, inst: Instance, session: Session) -> None:
        """A session is over: drop its route if it is the last one here, spool the disconnect."""
        others = self._drop_session(inst, session)
        if not any(name == inst.name for name, _ in others):
            # Removes the route only if it still points at this instance's tun.
            self.routes.delete(session.address, inst.config.tun)
        if not session.established:
            return
        elsewhere = sorted(
            name for name, cid in others
            if (s := self.instances[name].sessions.get(cid)) is not None and s.established
        )  # fmt: skip
        if elsewhere:
            # The registry knows gateways, not instances: the device is still connected here.
            log.info("instance %s: session %d of %s ended; it is still connected on %s",
                     inst.name, session.cid, session.device, ", ".join(elsewhere))  # fmt: skip
            return
        log.info("instance %s: %s disconnected (client %d)", inst.name, session.device,
                 session.cid)  # fmt: skip
        self._spool("disconnect", session)

    # -- snapshot, revocations, enforcement ----------------------------------------------------

    async def refresh_snapshot(self, *, full: bool = False) -> bool:
        """Read the registry's changes (everything when full, at start or when behind); on
        success enforce, store and sync the crl-verify directory."""
        async with self._refreshing:  # one read at a time: each builds on the last one's cursor
            cursor = None if full else self.snapshot.cursor
            try:
                read = await self._in_db(read_registry, self.registry, cursor)
            except RegistryUnavailable as exc:
                self.health.down(exc)
                return False
            self.health.ok()
            full = isinstance(read, Full)
            self.metrics.snapshot_reads.labels("full" if full else "changes").inc()
            if isinstance(read, Full):
                self.snapshot_refused = refuse_snapshot(self.snapshot, read.snapshot)
            else:
                self.snapshot_refused = apply_changes(self.snapshot, read)
            if self.snapshot_refused is not None:
                # Loud on every round, and in /healthz: enforcement is on the held snapshot.
                log.error("%s: refused, deciding on the held snapshot", self.snapshot_refused)
            elif isinstance(read, Full):
                await self._take_snapshot(read.snapshot)
            else:
                await self._enforce(read.devices)
                if read.devices:
                    await self._in_store(self.store.save_changes, read.devices, read.taken_at)
                    log.info("snapshot: %d device(s) changed", len(read.devices))
            # Revoked serials and device ids to the directories OpenVPN reads: all, or what changed.
            grants = self.snapshot.devices.values() if full else filter(None, read.devices.values())
            await self._in_store(sync_revocations, self.crl, read.revoked, list(grants))
            self.metrics.revoked_serials.set(len(self.crl))
            self.metrics.snapshot_devices.set(len(self.snapshot.devices))
            return True

    async def _take_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the held snapshot with a whole new read, enforce it and store it."""
        changed = snapshot.devices != self.snapshot.devices
        self.snapshot = snapshot
        await self._enforce()
        if changed:
            await self._in_store(self.store.save_snapshot, snapshot)
            log.info("snapshot: %d devices", len(snapshot.devices))

    async def _snapshot_loop(self) -> None:
        """Read on every change notification, every snapshot_interval_s without one, and
        everything every full_read_interval_s."""
        next_full = time.monotonic() + self.config.full_read_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listener.woken.wait(), self.config.snapshot_interval_s)
            self.listener.woken.clear()
            self.metrics.change_feed_listening.set(self.listener.listening)
            full = time.monotonic() >= next_full
            try:
                if await self.refresh_snapshot(full=full) and full:
                    next_full = time.monotonic() + self.config.full_read_interval_s
            except Exception:
                log.exception("snapshot refresh failed")
            age = self._snapshot_age()
            if age is not None and age > self.config.snapshot_max_age_s:
                # Loud on every round: revocations since then are not enforced here.
                log.error("the registry snapshot is %.0f s old (limit %g s): /healthz says 503",
                          age, self.config.snapshot_max_age_s)  # fmt: skip

    def _refusal(self, session: Session) -> Deny | None:
        """Why a live session's device is no longer admitted, or None."""
        if "tls_serial_0" in session.env:
            verdict = decide(session.env, self.snapshot)
            return verdict if isinstance(verdict, Deny) else None
        # Adopted after a restart: the serial is learnt at the next renegotiation (REAUTH).
        name = session.device
        grant = self.snapshot.devices.get(name)
        if grant is None:
            return Deny("unknown_device", f"device {name!r} is not in the registry")
        if not grant.serials:
            return Deny("no_current_certificate", f"device {name!r} has no current certificate")
        return refuse_state(name, grant.state)

    async def _enforce(
        self, devices: Iterable[str] | None = None, inst: Instance | None = None
    ) -> None:
        """End each session (of these devices, or all) the snapshot no longer admits."""
        if devices is None:
            held = [inst] if inst else self._all()
            sessions = [(i, s) for i in held for s in i.sessions.values()]
        else:
            sessions = [
                (self.instances[name], self.instances[name].sessions[cid])
                for device in devices
                for name, cid in self._by_device.get(device, ())
                if cid in self.instances[name].sessions
            ]
        for inst, session in sessions:
            refusal = self._refusal(session)
            if refusal is None or session.ending or inst.client is None:
                continue
            session.ending = True
            message = authorize.kill_message(refusal)  # HALT only for a revoked device
            try:
                await inst.client.command(client_kill(session.cid, message))
            except ManagementError as exc:
                session.ending = False
                log.warning("instance %s: could not end client %d: %s", inst.name,
                            session.cid, exc)  # fmt: skip
                continue
            self.metrics.killed.labels(refusal.code).inc()
            if self.tunnel is not None:  # the cloud's open tunnels to it end now, not at DISCONNECT
                self.tunnel.end_device(session.device)
            log.warning("instance %s: ended the session of %s (client %d, %s): %s", inst.name,
                        session.device, session.cid, message, refusal.reason)  # fmt: skip

    # -- reconciliation ------------------------------------------------------------------------

    async def _sync_routes(self) -> None:
        """Make the /32 routes on held instances' tuns match their sessions (newest wins)."""
        held = [i for i in self._all() if i.client is not None]
        wanted: dict[str, tuple[float, str]] = {}
        for inst in held:
            for s in inst.sessions.values():
                if s.address and (s.address not in wanted or wanted[s.address][0] < s.since):
                    wanted[s.address] = (s.since, inst.config.tun)
        try:
            added, removed = self.routes.sync(
                {a: tun for a, (_, tun) in wanted.items()}, [i.config.tun for i in held]
            )
        except (RouteError, OSError) as exc:
            log.error("route sync failed: %s", exc)
            return
        if added or removed:
            log.info("routes: %d added or moved, %d stale removed", added, removed)

    async def reconcile(self) -> None:
        """Compare each instance's `status` with sessions, routes and the registry; fix both."""
        mark = self._ticks
        held = [i for i in self._all() if i.client is not None]
        for inst in held:
            assert inst.client is not None
            await self._adopt(inst, await inst.client.status(), mark)
        await self._sync_routes()
        if len(held) != len(self.instances) or self.outbox.lagging:
            return  # an instance is away or the registry lags behind the spool: next round
        connected = await self._in_db(
            lambda: self.registry.list_devices(gateway=self.config.gateway, connected=True)
        )
        self.health.ok()
        in_registry = {d.id: d for d in connected}
        live: dict[str, Session] = {}
        for inst in held:
            for s in inst.sessions.values():
                if s.established:
                    live.setdefault(s.device, s)
        # Devices with an event since the status was read are already being taken care of.
        settled = {d for d, tick in self._touched.items() if tick > mark}
        for device, session in live.items():
            if device not in in_registry and device not in settled:
                log.warning("reconcile: %s is connected on %s but not in the registry as such",
                            device, session.instance)  # fmt: skip
                # Timed at the session's start: the registry keeps it as history if the device
                # has connected through another gateway since (ConnectionEvent.repair).
                self._spool("connect", session, source="reconcile", at=session.connected_at)
        for device, row in in_registry.items():
            if device not in live and device not in settled:
                log.warning("reconcile: the registry has %s connected here, no instance has it",
                            device)  # fmt: skip
                gone = Session("", 0, device, row.vpn_address, established=True)
                self._spool("disconnect", gone, source="reconcile")
        self._touched = {d: t for d, t in self._touched.items() if t > mark}

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            try:
                await self.reconcile()
            except RegistryUnavailable as exc:
                self.health.down(exc)
            except ManagementError as exc:
                log.warning("reconcile: %s", exc)
            except Exception:
                log.exception("reconcile failed")

    # -- drain ---------------------------------------------------------------------------------

    async def drain(self, rate: float) -> int:
        """Refuse new connects; end every session at `rate`/s, each sent to its next gateway."""
        self.draining = True
        killed = 0
        for inst in self._all():
            if inst.client is not None:
                log.warning("draining instance %s at %g client(s)/s", inst.name, rate)
                killed += await send_elsewhere(inst.client, rate)
        log.warning("drained: %d session(s) ended", killed)
        return killed

    # -- HTTP ----------------------------------------------------------------------------------

    def _snapshot_age(self) -> float | None:
        return time.time() - self.snapshot.taken_at if self.snapshot.taken_at else None

    async def _healthz(self) -> Response:
        age = self._snapshot_age()
        held = {i.name: i.held for i in self._all()}
        limit = self.config.snapshot_max_age_s
        problems = health_problems(held, self.outbox.error, self.draining, age, limit,
                                   self.snapshot_refused)  # fmt: skip
        body = {
            "gateway": self.config.gateway,
            "status": "unavailable" if problems else "ok",
            "problems": problems,
            "instances": {
                i.name: {"management": i.held, "clients": i.connected} for i in self._all()
            },
            "registry_reachable": bool(self.health.up),
            "spool_depth": self.outbox.depth,
            "snapshot_age_s": None if age is None else round(age, 1),
            "snapshot_devices": len(self.snapshot.devices),
            "draining": self.draining,
            "tunnels": None if self.tunnel is None else self.tunnel.open_tunnels,
            "spool_error": self.outbox.error,
        }
        return 503 if problems else 200, "application/json", (json.dumps(body) + "\n").encode()

    async def _export(self) -> Response:
        self.metrics.spool_depth.set(self.outbox.depth)
        age = self._snapshot_age()
        self.metrics.snapshot_age.set(age if age is not None else float("nan"))
        self.metrics.snapshot_devices.set(len(self.snapshot.devices))
        by_customer: dict[str, int] = dict.fromkeys(self._customers_seen, 0)
        for inst in self._all():
            for session in inst.sessions.values():
                grant = self.snapshot.devices.get(session.device)
                if session.established and grant is not None:
                    by_customer[grant.customer_id] = by_customer.get(grant.customer_id, 0) + 1
        for customer, count in by_customer.items():
            self.metrics.connected_by_customer.labels(customer).set(count)
        self._customers_seen = set(by_customer)  # a customer gone to 0 still reads 0
        if self.tunnel is not None:
            self.metrics.tunnels_open.set(self.tunnel.open_tunnels)
        for what, ends in (await self._in_store(self.expiry.certificates)).items():
            self.metrics.certificate_not_after.labels(what).set(ends)
        next_update = await self._in_store(self.expiry.crl_next_update)
        if next_update is not None:
            self.metrics.crl_next_update.set(next_update)
        return 200, CONTENT_TYPE_LATEST, self.metrics.render()
