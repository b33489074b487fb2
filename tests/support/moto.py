"""moto's server (moto[server]) as the AWS stand-in: Secrets Manager and S3 over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REGION = "eu-central-1"


@contextmanager
def moto_server(
    host: str, log: Path, timeout: float = 30, server_env: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """Run moto on host (a free port) until the block ends; yield the AWS environment for it.

    The environment is what boto3, amazon.aws and vpn_cloud_put read: AWS_ENDPOINT_URL and
    throwaway credentials. server_env is added to the server's own environment (moto's
    switches, such as MOTO_ECS_SERVICE_RUNNING). The server is stopped whatever happens.
    """
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", host, "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(server_env or {})},
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"moto did not start on {host}:{port}: {log.read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(env: dict[str, str], service: str):
    """A boto3 client for moto_server's environment (its endpoint and credentials)."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
