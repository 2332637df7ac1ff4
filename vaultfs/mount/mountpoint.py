"""Mount points: what is mounted where, and unmounting (no pyfuse3 here).

``vaultfs umount`` needs only ``fusermount3``, so it works — and clears a crashed
mount — on a machine where the ``[mount]`` extra is not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from vaultfs.errors import VaultError

FS_TYPE = "fuse.vaultfs"


def mounted_fstype(mountpoint: Path) -> str | None:
    """The filesystem type /proc/self/mountinfo lists at `mountpoint`, or None."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == target:
                found = fields[sep + 1]
    return found


def unmount(mountpoint: Path) -> str:
    """``fusermount3 -u``; a clear VaultError when it is not a vaultfs mount or is busy."""
    fstype = mounted_fstype(mountpoint)
    if fstype is None:
        raise VaultError(f"{mountpoint} is not mounted")
    if fstype != FS_TYPE:
        raise VaultError(f"{mountpoint} is a {fstype} mount, not vaultfs: use umount(8)")
    proc = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "busy" in err.lower():
            raise VaultError(
                f"{mountpoint} is busy: close the programs using it (`fuser -vm "
                f"{mountpoint}` lists them) and try again"
            )
        raise VaultError(f"cannot unmount {mountpoint}: {err or 'fusermount3 failed'}")
    return f"unmounted {mountpoint}"
