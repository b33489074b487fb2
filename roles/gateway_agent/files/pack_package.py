"""Pack a Python package directory into a reproducible tar: same files in, same bytes out.

Usage: pack_package.py PACKAGE_DIR ARCHIVE. Prints `changed` when ARCHIVE was (re)written and
`unchanged` when it already held exactly these files. Byte-code caches are left out; names are
sorted and owners, modes and times fixed, so only a change of content changes the archive (and
makes Ansible copy it to the gateways again).
"""

import io
import os
import sys
import tarfile
import tempfile


def pack(src: str) -> bytes:
    """Return the tar of the package directory `src`, rooted at its own name."""
    root = os.path.basename(os.path.normpath(src))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, "rb") as file:
                    data = file.read()
                info = tarfile.TarInfo(os.path.join(root, os.path.relpath(path, src)))
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def main() -> None:
    src, dest = sys.argv[1], sys.argv[2]
    data = pack(src)
    try:
        with open(dest, "rb") as file:
            if file.read() == data:
                print("unchanged")
                return
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    # Written beside the target and renamed: a concurrent run never reads half an archive.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".pack-")
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    print("changed")


if __name__ == "__main__":
    main()
