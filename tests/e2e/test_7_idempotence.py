"""The whole converge again, after everything the other tests did: nothing left to change.

Last on purpose (about 2 minutes). Devices the registry has revoked are left out: the registry
refuses to provision a revoked id again, which is the point of revoking it. In one batch, as the
lab came up (playbooks/vars/new_fleet.yml): the batches change when each host runs, not what
runs on it, and test_11 and test_14 roll out in batches.
"""

from __future__ import annotations

from tests.e2e.lab import ansible_playbook, lab_devices


def test_site_converges_with_no_change_on_any_host(record_property):
    revoked = sorted(d.id for d in lab_devices().values() if d.state == "revoked")
    limit = ":".join(["all", "localhost", *(f"!{d}" for d in revoked)])

    run = ansible_playbook("site.yml", "--limit", limit, "-e", "@playbooks/vars/new_fleet.yml")

    record_property("site_rerun_s", round(run.seconds, 1))
    print(f"\nsite.yml again ({limit}): {run.seconds:.1f} s")
    assert run.returncode == 0, run.messages()
    assert "localhost" in run.stats and "lab-registry" in run.stats, sorted(run.stats)
    assert run.failed_hosts() == []
    assert run.changed_hosts() == {}, "\n".join(run.changed_tasks())
