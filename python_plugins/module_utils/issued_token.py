"""What vpn_token and vpn_provisioning_token answer about one token: one home for the result.

A token's secret exists only in the run that made it: written to `dest` (0600, atomically) or
returned once as `token`, never in a dry run, never in the diff (which says live/revoked/none).
"""

from __future__ import annotations

from collections.abc import Callable

from ansible.module_utils.iotistic_vpn.pki.keys import write_atomic


def write_token(path: str, value: str) -> None:
    write_atomic(path, (value + "\n").encode(), mode=0o600)


def token_result(module, *, result, issued, before, after, scope: Callable) -> dict:
    """The module's answer; `issued` is already written to module.params["dest"] if given."""
    dest, check = module.params["dest"], module.check_mode
    out = {
        "changed": bool(result and result.changed),
        "created": issued is not None and not check,
        "token_id": (after or before).id if (after or before) else None,
        "scope": scope(after or before),
    }
    if issued is not None and not dest and not check:
        out["token"] = issued.value
    if module._diff:
        out["diff"] = {
            "before": {"token": "live" if before else "none", "scope": scope(before)},
            "after": {"token": "live" if after else ("revoked" if before else "none"),
                      "scope": scope(after)},
        }  # fmt: skip
    return out
