"""Kernel mounts for tests: mount with the real `vaultfs mount`, always unmount.

A mount is "up" when /proc/self/mountinfo lists it (`vaultfs mount` returns only
then in its default background mode). Teardown is ``fusermount3 -u``, then
``fusermount3 -u -z`` if the first did not do it, and waits for the mount
process to exit.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.vaultenv import VaultEnv

DEADLINE_S = 20.0


def is_mounted(path: Path) -> bool:
    from vaultfs.mount.mountpoint import mounted_fstype

    return mounted_fstype(path) is not None


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll `condition` (for state another process changes) until true or fail the test."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def mount_pid(mnt: Path) -> int:
    """The mount process's pid, from /.vaultfs/status."""
    for line in (mnt / ".vaultfs" / "status").read_text().splitlines():
        if line.startswith("pid "):
            return int(line.split()[1].rstrip(","))
    raise AssertionError("no pid in .vaultfs/status")


def unmount(mnt: Path) -> None:
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def mounted(env: VaultEnv, mnt: Path, *args: str, **env_vars: str) -> Iterator[Path]:
    """`vaultfs mount MNT` (background) for the duration of the block; log at env.tmp/mount.log."""
    mnt.mkdir(exist_ok=True)
    env.run("mount", str(mnt), "--log", str(mount_log(env)), *args, env=env.env(**env_vars))
    assert is_mounted(mnt)
    pid = mount_pid(mnt)
    try:
        yield mnt
    finally:
        unmount(mnt)
        wait_for(lambda: not alive(pid), f"mount process {pid} to exit after unmount")


def mount_log(env: VaultEnv) -> Path:
    return env.tmp / "mount.log"


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[bytes]:
    """Run a command as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
        capture_output=True,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
