"""Provisioning benchmark: 10,000 devices through the batch module path, against raw signing.

One ansible-playbook run does what provision_devices.yml does for a batch (vpn_provision):
register the devices (stable addresses allocated), verify and sign their CSRs, record the
certificates; committed on a durable (fsync on) throwaway PostgreSQL. The anchor is raw
`cryptography` verifying and signing the same CSRs in this process. Each subject trial is a whole
playbook run into a fresh database (some 10 s at 10,000 devices), so the ratios come from
--pairs interleaved pairs, 5 by default (bench/ratios.py): medians with their min and max.
Prints rates and the ratios (goal for the whole run: at least 0.2); asserts nothing about time.

  .venv/bin/python bench/bench_provision.py [--devices 10000] [--pairs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_pki import make_csrs, raw_issue  # noqa: E402
from bench.ratios import Ratio, alternate  # noqa: E402
from iotistic_vpn import pki  # noqa: E402
from iotistic_vpn.registry import Registry  # noqa: E402
from tests.support.postgres import throwaway_cluster  # noqa: E402

WORK = REPO / "build" / "bench-provision"
PROVISION = "Provision the devices."


def anchor_trial(ca: pki.IssuingCA, csrs: list[bytes]):
    """One trial: raw `cryptography` verifying and signing the CSRs, per second."""

    def trial() -> float:
        start = time.perf_counter()
        for i, csr in enumerate(csrs):
            raw_issue(ca, csr, "acme", f"anchor-{i}")
        return len(csrs) / (time.perf_counter() - start)

    return trial


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


def run(n: int, pairs: int) -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    files = pki.CaFiles.at(WORK / "ca")
    pki.ensure_ca(files)
    ca = pki.load_issuing_ca(WORK / "ca")
    print(f"making {n} device CSRs (the devices' work, not timed) ...", flush=True)
    csrs = make_csrs(n)
    requests = [{"device": f"dev-{i:05d}", "csr": csr.decode()} for i, csr in enumerate(csrs)]
    (WORK / "playbook.yml").write_text(json.dumps(playbook()))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"}  # fmt: skip
    trials = count()

    with throwaway_cluster(durable=True) as pg:

        def provision() -> dict[str, float]:
            """One trial: the playbook provisions all n devices into a fresh database."""
            k = next(trials)
            db, dest = f"bench_{k}", WORK / f"devices-{k}"
            with pg.connect() as conn:
                conn.execute(f'CREATE DATABASE "{db}"')
            extra = {"dsn": pg.dsn_for(db), "ca": str(WORK / "ca"), "dest": str(dest),
                     "requests": requests}  # fmt: skip
            (WORK / "vars.json").write_text(json.dumps(extra))
            cmd = [str(Path(sys.executable).with_name("ansible-playbook")),
                   str(WORK / "playbook.yml"), "-i", "localhost,", "-c", "local",
                   "-e", f"ansible_python_interpreter={sys.executable}",
                   "-e", f"@{WORK / 'vars.json'}"]  # fmt: skip
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                                  cwd=REPO)  # fmt: skip
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"playbook failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            report = json.loads(proc.stdout)
            with Registry(pg.dsn_for(db)) as reg:
                devices = reg.list_devices(customer_id="acme")
                serials = reg.current_serials()
            assert len(devices) == n and len({d.vpn_address for d in devices}) == n
            assert sum(len(s) for s in serials.values()) == n
            with pg.connect() as conn:
                conn.execute(f'DROP DATABASE "{db}"')
            shutil.rmtree(dest)
            steps = {}
            for task in report["plays"][0]["tasks"]:
                d = task["task"]["duration"]
                steps[task["task"]["name"]] = _seconds(d["end"]) - _seconds(d["start"])
            steps["whole playbook run"] = elapsed
            print(f"  trial {k}: {steps[PROVISION]:.2f}s task, {elapsed:.2f}s run", flush=True)
            return steps

        runs = alternate({"subject": provision, "anchor": anchor_trial(ca, csrs)}, pairs)

    steps = runs["subject"]
    print(f"\n{'step (median)':<28}{'seconds':>10}")
    for name in steps[0]:
        print(f"{name:<28}{statistics.median(s[name] for s in steps):>10.2f}")
    task = Ratio.of(f"ratio vpn_provision task / raw ({n} devices, committed)",
                    [n / s[PROVISION] for s in steps], runs["anchor"])  # fmt: skip
    whole = Ratio.of("ratio whole ansible-playbook run / raw",
                     [n / s["whole playbook run"] for s in steps], runs["anchor"],
                     goal=0.2)  # fmt: skip
    print(f"\nraw cryptography verify+sign (anchor): {task.anchor_median:,.0f} CSR/s")
    print(f"vpn_provision task: {task.subject_median:,.0f} devices/s")
    print(f"whole ansible-playbook run (startup and vars included): "
          f"{whole.subject_median:,.0f} devices/s")  # fmt: skip
    width = 58
    task.row(width)
    whole.row(width)


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs (at least 5)")
    args = parser.parse_args()
    run(args.devices, args.pairs)
