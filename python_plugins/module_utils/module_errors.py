"""One way every module fails: a single line naming the bad value or file, nothing changed.

The package raises InvalidValue/IotisticVpnError on purpose and OSError when a file cannot be
read or written; a module wraps its one domain call in `failing_cleanly(module)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ansible.module_utils.iotistic_vpn.errors import InvalidValue, IotisticVpnError

__all__ = ["failing_cleanly"]


@contextmanager
def failing_cleanly(module) -> Iterator[None]:
    """Turn the package's errors and file errors into fail_json."""
    try:
        yield
    except InvalidValue as exc:
        module.fail_json(msg=str(exc), field=exc.field, value=str(exc.value))
    except IotisticVpnError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot read or write {exc.filename}: {exc.strerror}")
