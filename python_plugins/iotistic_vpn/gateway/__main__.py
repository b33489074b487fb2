"""The gateway agent's command line: run it, or drain the gateway's sessions.

python3 -m iotistic_vpn.gateway --config /etc/iotistic-vpn/gateway-agent.toml
python3 -m iotistic_vpn.gateway drain --config /etc/iotistic-vpn/gateway-agent.toml --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .. import conventions
from .agent import GatewayAgent, log
from .config import AgentConfig, ConfigError, load_config
from .control import ask_drain
from .management import ManagementClient, ManagementError, send_elsewhere

__all__ = ["drain_command", "main"]


async def drain_command(config: AgentConfig, rate: float, timeout: float = 3600) -> int:
    """Ask the running agent to drain; without one, kill clients over the sockets directly."""
    try:
        answer = await ask_drain(config.control_socket, rate, timeout)
    except OSError:
        log.warning("no agent on %s: draining the instances directly", config.control_socket)
        return await _drain_direct(config, rate)
    log.warning("agent: %s", answer or "no answer")
    return 0 if answer.startswith("drained") else 1


async def _drain_direct(config: AgentConfig, rate: float) -> int:
    for inst in config.instances:
        client = ManagementClient(str(inst.management))
        try:
            await client.connect()
        except OSError as exc:
            log.warning("instance %s: %s: %s", inst.name, inst.management, exc)
            continue
        try:
            await send_elsewhere(client, rate)
        except ManagementError as exc:
            # A held instance (management-hold, no agent to release it) has no session to end.
            what = "holding, no session to drain" if client.holding else str(exc)
            log.warning("instance %s: %s", inst.name, what)
        finally:
            await client.close()
    return 0


def _setup_logging() -> None:
    # journald stamps every line itself; a terminal or a file needs the time.
    fmt = "%(levelname)s %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stdout, force=True)
    # The agent logs each connect: skip what the format never shows (the logging HOWTO's
    # "Optimization": caller lookup, thread and process names).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m iotistic_vpn.gateway",
                                     description="The Iotistic VPN gateway agent.")  # fmt: skip
    parser.add_argument("command", nargs="?", choices=("run", "drain"), default="run")
    parser.add_argument("--config", default=conventions.AGENT_CONFIG_PATH)
    parser.add_argument("--rate", type=float, help="drain: sessions ended per second")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.command == "drain":
        rate = args.rate if args.rate is not None else config.drain_rate_per_s
        if rate <= 0:
            log.error("--rate %s: must be > 0", rate)
            return 2
        return asyncio.run(drain_command(config, rate))
    asyncio.run(_serve(config))
    return 0


async def _serve(config: AgentConfig) -> None:
    await GatewayAgent(config).run()


if __name__ == "__main__":
    sys.exit(main())
