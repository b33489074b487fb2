"""Provisioning benchmark: 10,000 devices through the batch module path, against raw signing.

One ansible-playbook run does what provision_devices.yml does for a batch (vpn_provision):
register the devices (stable addresses allocated), verify and sign their CSRs, record the
certificates; committed on a durable (fsync on) throwaway PostgreSQL. The anchor is raw
`cryptography` verifying and signing the same kind of CSR in this process. Prints rates and the
ratio (goal: at least 0.2); asserts nothing about time.

  .venv/bin/python bench/bench_provision.py [--devices 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_pki import make_csrs, raw_issue  # noqa: E402
from iotistic_vpn import pki  # noqa: E402
from iotistic_vpn.registry import Registry  # noqa: E402
from tests.support.postgres import throwaway_cluster  # noqa: E402

WORK = REPO / "build" / "bench-provision"
N_ANCHOR = 2000


def anchor_rate(ca: pki.IssuingCA, csrs: list[bytes]) -> float:
    start = time.perf_counter()
    for i, csr in enumerate(csrs):
        raw_issue(ca, csr, "acme", f"anchor-{i}")
    return len(csrs) / (time.perf_counter() - start)


def playbook() -> list[dict]:
    return [{
        "name": "Provision a batch of devices.",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "Apply the registry schema.", "vpn_registry": {
                "dsn": "{{ dsn }}", "customer": "acme", "migrate": True,
                # A /20 holds 4,093 devices: this customer's fleet needs a larger block.
                "block_prefix": 17}},
            {"name": "Provision the devices.", "vpn_provision": {
                "dsn": "{{ dsn }}", "customer": "acme", "ca_path": "{{ ca }}",
                "dest": "{{ dest }}", "devices": "{{ requests }}"}},
        ],
    }]  # fmt: skip


def run(n: int) -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    files = pki.CaFiles.at(WORK / "ca")
    pki.ensure_ca(files)
    ca = pki.load_issuing_ca(WORK / "ca")
    print(f"making {n + N_ANCHOR} device CSRs (the devices' work, not timed) ...", flush=True)
    csrs = make_csrs(n + N_ANCHOR)
    raw = anchor_rate(ca, csrs[n:])

    requests = [{"device": f"dev-{i:05d}", "csr": csr.decode()} for i, csr in enumerate(csrs[:n])]
    (WORK / "playbook.yml").write_text(json.dumps(playbook()))
    with throwaway_cluster(durable=True) as pg:
        with pg.connect() as conn:
            conn.execute("CREATE DATABASE bench")
        extra = {"dsn": pg.dsn_for("bench"), "ca": str(WORK / "ca"),
                 "dest": str(WORK / "devices"), "requests": requests}  # fmt: skip
        (WORK / "vars.json").write_text(json.dumps(extra))
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
               "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"}  # fmt: skip
        cmd = [str(Path(sys.executable).with_name("ansible-playbook")), str(WORK / "playbook.yml"),
               "-i", "localhost,", "-c", "local",
               "-e", f"ansible_python_interpreter={sys.executable}",
               "-e", f"@{WORK / 'vars.json'}"]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=REPO)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"playbook failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout)
        with Registry(pg.dsn_for("bench")) as reg:
            devices = reg.list_devices(customer_id="acme")
            serials = reg.current_serials()
    assert len(devices) == n and len({d.vpn_address for d in devices}) == n
    assert sum(len(s) for s in serials.values()) == n

    print(f"\n{'step':<28}{'seconds':>10}")
    steps = {}
    for task in report["plays"][0]["tasks"]:
        d = task["task"]["duration"]
        steps[task["task"]["name"]] = _seconds(d["end"]) - _seconds(d["start"])
        print(f"{task['task']['name']:<28}{steps[task['task']['name']]:>10.2f}")
    print(f"{'whole playbook run':<28}{elapsed:>10.2f}")
    module_rate = n / steps["Provision the devices."]
    rate = n / elapsed
    print(f"\nraw cryptography verify+sign (anchor): {raw:,.0f} CSR/s")
    print(
        f"vpn_provision task ({n} devices, committed): {module_rate:,.0f} devices/s, "
        f"ratio {module_rate / raw:.2f}"
    )
    print(
        f"whole ansible-playbook run (startup and vars included): {rate:,.0f} devices/s, "
        f"ratio {rate / raw:.2f}  (goal >= 0.2)"
    )


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    run(parser.parse_args().devices)
